# Developer entry points for the Workflow reconciler.
#
#   make test   - install into $(VENV) if needed, then lint, type-check and run the tests
#   make demo   - run the reconciler against examples-repo/
#   make bench  - run the benchmark suite (bench/run.py; several minutes; not part of CI)
#   make soak   - the reliability tests at scale (crashes, restarts, replicas; long; not CI)
#   make lint   - ruff + mypy + import-linter only
#   make fmt    - format and auto-fix
#   make clean  - remove the venv and caches

PYTHON ?= python3
VENV ?= .venv

STAMP := $(VENV)/.installed

.DEFAULT_GOAL := test

.PHONY: demo test bench soak lint fmt clean

# (Re)install whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

# Validate the examples, then run the daemon on them with the local backend;
# edit a file under examples-repo/ and watch it reconcile. Ctrl-C stops it.
demo: $(STAMP)
	$(VENV)/bin/reconciler validate examples-repo/
	$(VENV)/bin/reconciler daemon --repo examples-repo --watch --state-dir .demo-state

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict reconciler
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q

# Every measure of issue 8 with its baseline; the table is printed and the raw
# figures go to bench/out/results.json. `python -m bench.run --quick` is a smoke run.
bench: $(STAMP)
	$(VENV)/bin/python -m bench.run

# The reliability tests (tests/reliability/) at soak scale, e.g. about 1,000 cron slots per
# backend, the daemon SIGKILLed and restarted ~100 times; the figures are printed and written to
# bench/out/reliability-*.json. RELIABILITY_SEED=N moves the kills elsewhere.
soak: $(STAMP)
	mkdir -p bench/out
	RECONCILER_SOAK=1 $(VENV)/bin/pytest -q -s tests/reliability/

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict reconciler
	$(VENV)/bin/lint-imports

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache \
		build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
