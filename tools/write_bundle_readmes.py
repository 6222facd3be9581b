"""Rewrite every shipped bundle's ``docs/README.md`` from its ``configs/metadata.json``.

Run from the repository root (deterministic, no retraining)::

    .venv/bin/python tools/write_bundle_readmes.py [--check]

The text comes from the one model-card renderer (:func:`cds.models.card_markdown.readme_for`), the
same text the FHIR model-card DocumentReference carries; ``tests/test_model_cards.py`` fails when a
shipped README differs from it. ``--check`` only reports the READMEs that would change (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys

from cds.locations import BUNDLES_DIR
from cds.models.card_markdown import readme_for, write_readme


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report stale READMEs, write nothing")
    args = ap.parse_args(argv)
    stale = []
    for meta in sorted(BUNDLES_DIR.glob("*/configs/metadata.json")):
        bundle = meta.parent.parent
        readme = bundle / "docs" / "README.md"
        text = readme_for(json.loads(meta.read_text(encoding="utf-8")))
        if not readme.is_file() or readme.read_text(encoding="utf-8") != text:
            stale.append(bundle.name)
            if not args.check:
                write_readme(bundle)
    print(("stale: " if args.check else "rewritten: ") + (", ".join(stale) or "none"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
