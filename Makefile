# forgehub — the two commands: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: install install-run run test lint typecheck pytest services bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[demo]"
	$(BIN)/python -m compileall -q src/forgehub >/dev/null  # bytecode, as an installed package has
	touch $(RUN_STAMP)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -m compileall -q src/forgehub >/dev/null
	touch $(STAMP) $(RUN_STAMP)

install-run: $(RUN_STAMP)  ## create .venv with what running the platform needs (and the demo)

install: $(STAMP)  ## create .venv and install forgehub with everything to run and test

run: install-run  ## start the platform on 127.0.0.1:8000 with embedded defaults and demo modules
	$(BIN)/forgehub serve --host $(HOST) --port $(PORT)

services:  ## install the real servers the tests need (PostgreSQL, ...)
	scripts/install-services.sh

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install
	$(BIN)/mypy

# Test files run on TEST_PROCS processes at once (most of a test's time is waiting for a server, a
# cluster or a browser); tests marked `serial` (timing-sensitive: load, autoscaling, restarts)
# run afterwards, alone. A part in which PYTEST_ARGS selects no test (exit 5) is not a failure.
TEST_PROCS ?= 3
PYTEST_PART = $(BIN)/pytest $(1) $(PYTEST_ARGS) || { s=$$?; [ $$s -eq 5 ] || rc=$$s; };
pytest: install
	@rc=0; \
	$(call PYTEST_PART,-n $(TEST_PROCS) --dist loadfile --durations=15 -m "not serial") \
	$(call PYTEST_PART,-p no:xdist -m serial) \
	exit $$rc

test: install services lint typecheck pytest  ## install, start services, lint, type-check, run every test

bench: install  ## run the benchmarks (prints tables)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
