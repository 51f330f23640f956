# detx: `make demo` and `make test` work on a fresh clone (they install first when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATASET ?= vindr-cxr
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install demo test lint bench docs clean

# The stamp is rewritten by tools/install.sh only after a verified install, so a second
# `make install` is a no-op until setup.py, constraints.txt or the installer change.
install: $(VENV)/.installed
$(VENV)/.installed: setup.py constraints.txt tools/install.sh
	VENV=$(VENV) PYTHON=$(PYTHON) bash tools/install.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m detx.workflows.demo --dataset $(DATASET) --out output/demo$(if $(filter-out vindr-cxr,$(DATASET)),-$(DATASET),)

docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

bench: install
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf output build *.egg-info .pytest_cache
