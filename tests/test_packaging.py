"""The package is self-contained: one version, a licence, the package list, and a wheel that works
outside the checkout (notebooks, bundles, sample cohort and sample data inside; CLI from an empty folder).

The wheel tests (``slow``) build it with ``pip wheel --no-deps`` and install it with
``pip install --no-deps --target DIR``; the commands then run with this interpreter and
``PYTHONPATH=DIR`` from an empty folder, so the checkout is not on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import cds

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DATA_PACKAGES = {"cds.notebooks": "notebooks", "cds.fhir_samples": "fhir_samples", "cds.sample_data": "sample_data"}


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cds.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


# ----------------------------------------------------------------------------- metadata (fast)
def test_packages_list_is_every_package_folder_plus_the_data_packages() -> None:
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "cds").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted(folders | set(DATA_PACKAGES))
    assert setuptools["package-dir"] == DATA_PACKAGES
    for folder in DATA_PACKAGES.values():
        assert (REPO / folder).is_dir(), folder


def test_one_version_string() -> None:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cds.__version__"}
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cds {cds.__version__}"
    assert f"## [{cds.__version__}]" in (REPO / "CHANGELOG.md").read_text()


def test_licence_and_extras() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "plotly" not in extras["notebooks"] and "papermill" in extras["notebooks"]
    assert "torch" in extras["imaging"]


def test_sample_data_is_small_and_says_its_licence() -> None:
    from cds.locations import sample_data_file

    f = sample_data_file("pneumoniamnist")
    assert f.stat().st_size < 1_000_000
    source = (f.parent / "SOURCE.md").read_text()
    assert "CC BY 4.0" in source and "Yang" in source and "Kermany" in source
    assert "demonstrates the workflow" in source


# -------------------------------------------------------------------------- CLI user errors (fast)
def test_explorer_checks_its_notebook_before_any_model_runs(tmp_path: Path) -> None:
    r = _cli("explorer", env={"CDS_NOTEBOOKS": str(tmp_path / "empty")}, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "case_explorer.ipynb" in r.stderr and "CDS_NOTEBOOKS" in r.stderr
    assert "running" not in r.stdout and "Traceback" not in r.stderr


def test_no_sample_cohort_stops_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from cds import cli, locations

    monkeypatch.setattr(locations, "sample_cohort_dir", lambda: None)
    for argv in (["overview", "--out", str(tmp_path / "o")], ["report", "--out", str(tmp_path / "r")],
                 ["explorer"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "cohort: no cohort given" in err and "sample cohort" in err, (argv, err)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("argv", "blocked", "extra"), [
    (["overview", "--out", "o"], "papermill", "notebooks"),
    (["evaluate", "pneumonia", "--data", str(REPO / "sample_data" / "pneumoniamnist" / "pneumoniamnist_sample.npz")], "torch", "imaging"),
])
def test_missing_optional_dependency_is_one_line_with_the_extra(tmp_path: Path, argv: list[str], blocked: str,
                                                                 extra: str) -> None:
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"  # import now raises ModuleNotFoundError
            f"from cds.cli import main\nsys.exit(main({argv!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert blocked in r.stderr and f'pip install "cds[{extra}]"' in r.stderr


# ----------------------------------------------------------------------------------- the wheel
@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("cds-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return target


@pytest.mark.slow
def test_wheel_holds_notebooks_bundles_samples_and_licence(wheel: Path) -> None:
    assert wheel.name == f"cds-{cds.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        assert f"cds/notebooks/{nb.name}" in names and f"cds/notebooks/{nb.stem}.py" in names
    bundles = [d for d in (REPO / "cds" / "models" / "bundles").iterdir() if (d / "configs").is_dir()]
    assert bundles
    for d in bundles:
        for f in d.rglob("*"):
            if f.is_file() and f.suffix in (".pt", ".json", ".md"):
                assert f"cds/{f.relative_to(REPO / 'cds').as_posix()}" in names, f
        assert f"cds/models/bundles/{d.name}/configs/metadata.json" in names
    assert any(n.endswith(".pt") for n in names)
    samples = [f for f in (REPO / "fhir_samples").rglob("*") if f.is_file()]
    for f in samples:
        assert f"cds/fhir_samples/{f.relative_to(REPO / 'fhir_samples').as_posix()}" in names, f
    assert "cds/sample_data/pneumoniamnist/pneumoniamnist_sample.npz" in names
    assert "cds/sample_data/pneumoniamnist/SOURCE.md" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "tools/", "bench/")) for n in names)


@pytest.mark.slow
def test_installed_wheel_runs_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(installed), "CDS_SHARED_DATA": str(tmp_path / "nonexistent")}
    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run([sys.executable, "-c", "import cds, cds.locations as l; print(cds.__file__); "
                            "print(l.sample_cohort_dir()); print(l.sample_data_file('pneumoniamnist')); "
                            "print(l.notebook_file('cohort_overview.ipynb'))"],
                           capture_output=True, text=True, cwd=work, env={**os.environ, **env}, timeout=120)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(installed.resolve()), line
        assert Path(line).exists(), line
    r = _cli("--version", env=env, cwd=work)
    assert r.returncode == 0 and r.stdout.strip() == f"cds {cds.__version__}"
    r = _cli("overview", "--out", "o", env=env, cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    html = (work / "o" / "report.html").read_text()
    assert "Cohort overview" in html and "patients: 55" in html
