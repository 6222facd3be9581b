# Two set-up commands (see README): `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
REFERENCE_DATE ?= 2026-01-01
APT_PACKAGES = orthanc orthanc-dicomweb chromium chromium-driver
LINT_PATHS = cds tests bench tools notebooks

.PHONY: demo test test-fast env apt lint bench sync-notebooks wheel

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# one resolver run for every pin (STACK.md: never install packages one by one)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

demo: env
	$(VENV)/bin/cds overview --cohort fhir_samples --out out/overview --reference-date $(REFERENCE_DATE)
	@echo
	@echo "Open the notebooks in JupyterLab:"
	@echo "  $(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 notebooks/"
	@echo "and open the report above in a browser."

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# the whole suite: doctests, every test (browser, Orthanc, slow training), nbval on the committed notebooks
test: env apt
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/pytest -q --timeout=900 --doctest-modules cds tests \
	  --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks

# a quick check while editing (under 3 minutes on 2 cores): no browser, no Orthanc, nothing marked slow, no nbval
test-fast: env
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/pytest -q --timeout=600 --doctest-modules cds tests -m "not slow and not browser and not orthanc"

lint: env
	$(VENV)/bin/ruff check $(LINT_PATHS)

# notebooks/<name>.py (jupytext percent script) is the source: write the paired .ipynb, re-running the
# notebooks to refresh their nbval check outputs
sync-notebooks: env
	$(PY) tools/sync_notebooks.py --execute

wheel: env
	$(PY) -m pip wheel --quiet --no-deps -w dist .

bench: env
	$(PY) bench/bench_fhir_tables.py
