"""Shared fixtures: paths to the repo, the sample cohort and ../shared/data.

Tests marked ``shared`` are skipped, with the reason, when ../shared/data (``$CDS_SHARED_DATA``) is
absent, as on a fresh clone; ``CDS_SHARED_DATA=/nonexistent`` simulates that.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every ``@pytest.mark.shared`` test, naming the missing folder, when ../shared/data is absent."""
    if SHARED.is_dir():
        return
    skip = pytest.mark.skip(reason=f"shared data folder {SHARED} is absent (set CDS_SHARED_DATA to point at it)")
    for item in items:
        if "shared" in item.keywords:
            item.add_marker(skip)
