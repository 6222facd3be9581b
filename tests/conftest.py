"""Shared fixtures: paths to the repo, the sample cohort and ../shared/data.

Tests marked ``shared`` are skipped, with the reason, when ../shared/data (``$CDS_SHARED_DATA``) is
absent, as on a fresh clone; ``CDS_SHARED_DATA=/nonexistent`` simulates that.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "fhir_samples"
SHARED = Path(os.path.abspath(os.environ.get("CDS_SHARED_DATA", REPO.parent / "shared" / "data")))  # no resolve(): keep ../shared short


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip with the reason when it is absent (e.g. on a user's machine)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent (set CDS_SHARED_DATA to point at it)")
    return SHARED


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium (tests.test_browser.CHROMIUM); skipped when absent, a failure in CI."""
    from tests.test_browser import CHROMIUM

    if not CHROMIUM.exists():
        msg = f"{CHROMIUM} is missing: install Debian's chromium (make apt) to run the browser tests"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Any]:
    """One headless chromium (Playwright) for a test module, with the project's launch flags."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import ARGS

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=ARGS)
        yield b
        b.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every ``@pytest.mark.shared`` test, naming the missing folder, when ../shared/data is absent."""
    if SHARED.is_dir():
        return
    skip = pytest.mark.skip(reason=f"shared data folder {SHARED} is absent (set CDS_SHARED_DATA to point at it)")
    for item in items:
        if "shared" in item.keywords:
            item.add_marker(skip)
