# FlowMaestro: `make demo` runs a bundled workflow end to end; `make test` runs the tests;
# `make lint` checks the code.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint serve bench fuzz server-stop clean

# The tests and the hundreds of processes they start (Prefect servers, workers, the API) reuse
# compiled modules: an environment that turns bytecode off would have each of them compile
# every module of ours, and pytest rewrite every test module's asserts, again.
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Save -> execute -> a worker runs it -> result, with the Prefect UI link (server and worker reused).
demo: $(STAMP)
	$(BIN)/flowmaestro demo examples/hello.json --input name=Ada

# The tests run on TEST_PROCESSES processes (pytest-xdist: each has its own session directory,
# Prefect servers, ports and databases, see tests/conftest.py). The tests with services run on
# SERVICE_TEST_PROCESSES, handed out a file at a time (--dist loadfile), so a module's stack
# and the tests that share it stay in one process, longest files first (tests/conftest.py,
# LONGEST_FILES_FIRST). Two: three overloaded a two-core machine in a clean run (39 min, four
# failures, docs/testing.md). Three for the others: they mostly wait, and three took test-fast
# from 61-75 s to 53-65 s on two cores. 0 runs everything in this process.
TEST_PROCESSES ?= 3
SERVICE_TEST_PROCESSES ?= 2

test: $(STAMP)
	@status=0; \
	$(BIN)/python -m pytest -q -ra -n $(TEST_PROCESSES) -m "not services" || status=1; \
	$(BIN)/python -m pytest -q -ra --durations=25 -n $(SERVICE_TEST_PROCESSES) --dist loadfile --no-loadscope-reorder \
		-m services || status=1; \
	exit $$status

# Only the tests that need no service: no Prefect server, PostgreSQL, Redis or process of
# their own (the "services" marker, tests/conftest.py); under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) -m "not services"

# ruff (lint, then the format check: `ruff format --diff <file>` shows what it would change)
# and mypy; every check runs, and any that fails fails the target. The packages, tests,
# benchmarks and scripts for ruff; mypy's files are in pyproject.toml.
LINT_PATHS := api builder cli deployments flows node_handlers store tests benchmarks scripts examples
lint: $(STAMP)
	@status=0; \
	echo "ruff check"; $(BIN)/ruff check $(LINT_PATHS) || status=1; \
	echo "ruff format --check"; $(BIN)/ruff format --check --output-format concise $(LINT_PATHS) || status=1; \
	echo "mypy"; $(BIN)/mypy || status=1; \
	exit $$status

serve: $(STAMP)
	$(BIN)/flowmaestro serve

# Each benchmark is a module of the benchmarks package, run from the repository root.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.compile
	$(BIN)/python -m benchmarks.engine

# The long fuzz run (make test runs a short one): every API route, thousands of canvases.
fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz.py

server-stop: $(STAMP)
	$(BIN)/flowmaestro server stop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
