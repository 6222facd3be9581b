"""Build ``sample_data/pneumoniamnist/``: a small, deterministic PneumoniaMNIST subset that ships with cds.

Run from the repository root (needs the team's ``../shared/data/medmnist``, or any folder laid out like it)::

    .venv/bin/python tools/make_sample_data.py [--medmnist DIR] [--out sample_data/pneumoniamnist]

The subset lets the model-lab and reader-study notebooks run with their default parameters on a
machine without ``../shared``. It only demonstrates the workflow: the shipped model cards' numbers
come from the full set. Selection: ``N_TRAIN`` images of the source's ``train_`` arrays and ``N_VAL``
of its ``val_`` arrays, half of each class, drawn with ``numpy.random.default_rng(SEED)``; arrays are
unchanged (uint8, 28x28, labels 0 = normal, 1 = pneumonia). The same inputs give a byte-identical file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

SOURCE_FILE = "pneumoniamnist_balanced_subset_trainval.npz"
OUT_FILE = "pneumoniamnist_sample.npz"
N_TRAIN = 300
N_VAL = 200
SEED = 20260101

SOURCE_MD = """# sample_data/pneumoniamnist: a small PneumoniaMNIST subset shipped with cds

`{out}` holds {n_train} training images (`train_images`, `train_labels`) and {n_val} validation images
(`val_images`, `val_labels`) of 28x28 pixels, uint8, labels 0 = normal, 1 = pneumonia, half of each
class in each part. It exists so that `notebooks/model_lab.ipynb` and `notebooks/reader_study.ipynb`
run with their default parameters on a machine without the team's data (`../shared/data`).
**It only demonstrates the workflow**: numbers computed on it are not the model cards' numbers, which
come from the full set (`cds evaluate pneumonia --data ../shared/data/medmnist`).

## Licence and attribution

- **MedMNIST v2**: Yang J., Shi R., Wei D., Liu Z., Zhao L., Ke B., Pfister H., Ni B. *MedMNIST v2 -
  A large-scale lightweight benchmark for 2D and 3D biomedical image classification.* Scientific
  Data 10:41 (2023). MedMNIST data are licensed **CC BY 4.0**
  (https://creativecommons.org/licenses/by/4.0/).
- **Source images**: Kermany D. S. et al. *Identifying medical diagnoses and treatable diseases by
  image-based deep learning.* Cell 172(5):1122-1131 (2018): paediatric chest X-rays (Guangzhou),
  CC BY 4.0.
- Taken from the team's copy `shared/data/medmnist/{source}` (PneumoniaMNIST undersampled to
  balanced classes; see that folder's SOURCE.md for its origin).
- Changes: a subset of images was selected (below); pixel values and labels are unchanged.

## How it was built (deterministic)

```
.venv/bin/python tools/make_sample_data.py --medmnist ../shared/data/medmnist --out sample_data/pneumoniamnist
```

{n_train} of the source's `train_` images and {n_val} of its `val_` images, {half_t} / {half_v} per class,
drawn with `numpy.random.default_rng({seed})` in sorted index order. The validation images are not
images the shipped `pneumonia` model was trained on (it was trained on `train_`).

- source sha256: `{src_sha}`
- `{out}` sha256: `{out_sha}` ({size} bytes)
"""


def _pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n // 2`` images of each class, sorted (deterministic for a given ``rng``)."""
    idx = [rng.choice(np.flatnonzero(labels == c), n // 2, replace=False) for c in (0, 1)]
    return np.sort(np.concatenate(idx))


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed .npz whose bytes depend only on the arrays (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def build(medmnist: Path, out: Path) -> Path:
    """Write ``out/<OUT_FILE>`` and ``out/SOURCE.md`` from ``medmnist/<SOURCE_FILE>``; return the .npz path."""
    src = medmnist / SOURCE_FILE
    if not src.is_file():
        raise SystemExit(f"make_sample_data: {src} not found (--medmnist must be a folder like shared/data/medmnist)")
    z = np.load(src)
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        labels = np.asarray(z[f"{split}_labels"]).reshape(-1)
        keep = _pick(labels, n, rng)
        arrays[f"{split}_images"] = z[f"{split}_images"][keep]
        arrays[f"{split}_labels"] = z[f"{split}_labels"][keep]
    out.mkdir(parents=True, exist_ok=True)
    npz = out / OUT_FILE
    _write_npz(npz, arrays)
    data = npz.read_bytes()
    (out / "SOURCE.md").write_text(SOURCE_MD.format(
        out=OUT_FILE, source=SOURCE_FILE, n_train=N_TRAIN, n_val=N_VAL, half_t=N_TRAIN // 2, half_v=N_VAL // 2,
        seed=SEED, src_sha=hashlib.sha256(src.read_bytes()).hexdigest(),
        out_sha=hashlib.sha256(data).hexdigest(), size=len(data)))
    return npz


def main() -> None:
    """Command line: ``--medmnist DIR --out DIR``."""
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medmnist", type=Path, default=repo.parent / "shared" / "data" / "medmnist")
    ap.add_argument("--out", type=Path, default=repo / "sample_data" / "pneumoniamnist")
    args = ap.parse_args()
    path = build(args.medmnist, args.out)
    print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
