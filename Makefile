# detx: `make demo` and `make test` work on a fresh clone (they install first when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATASET ?= vindr-cxr
# make demo LUNG_CROPS=1: the chest demo also trains its CNN on lung-field crops (docs/lung-fields.md)
LUNG_CROPS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

LOCK := requirements-lock.txt
LOCK_PYTHON ?= 3.11

.PHONY: install lock demo test lint bench docs clean

# The stamp is rewritten by tools/install.sh only after a verified install, so a second
# `make install` is a no-op until the lock, setup.py or the installer change.
install: $(VENV)/.installed
$(VENV)/.installed: $(LOCK) setup.py tools/install.sh tools/check_lock.py
	VENV=$(VENV) PYTHON=$(PYTHON) LOCK=$(LOCK) bash tools/install.sh

# Re-resolve the lock (exact versions + hashes) from setup.py and constraints.txt with uv; run it after changing
# a dependency in setup.py or constraints.txt (UPGRADE=1: newest versions instead of keeping the current pins).
lock:
	PYTHON=$(PYTHON) LOCK=$(LOCK) LOCK_PYTHON=$(LOCK_PYTHON) bash tools/lock.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m detx.workflows.demo --dataset $(DATASET) --out output/demo$(if $(filter-out vindr-cxr,$(DATASET)),-$(DATASET),)$(if $(LUNG_CROPS), --lung-crops,)

docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

bench: install
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf output build *.egg-info .pytest_cache
