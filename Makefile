# Two commands on a fresh machine:  make demo   and   make test
# Each creates .venv when missing, installs torch first only when the environment has
# none (TORCH_SPEC; the default is a CPU build), then snap3d with the extras it needs.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,viewer,mobile
PY := $(VENV)/bin/python
STAMP := $(VENV)/.snap3d-installed

.PHONY: setup demo test test-nerfstudio test-slow bench lint assets clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snap3d demo

test: $(STAMP)
	$(PY) -m pytest -q

# the ns-train plugin tests, in .venv-ns (nerfstudio 1.1.5's pins), made when missing;
# skipped with the reason printed when it cannot be made here (NS_REQUIRED=1: fail)
test-nerfstudio:
	scripts/test_nerfstudio.sh

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

assets: $(STAMP)
	$(PY) scripts/make_assets.py

clean:
	rm -rf runs .pytest_cache
