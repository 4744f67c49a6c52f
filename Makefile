# The newcomer's path: `make up` runs everything, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup up test check lint typecheck unit integration tools bench-tools bench-command bench-store compiled test-compiled clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Real clients the tests drive (redis-cli) come from Debian when the machine lacks them.
tools:
	@command -v redis-cli >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq redis-tools >/dev/null) \
	      || echo "warning: could not install redis-tools; redis-cli tests will be skipped"; \
	  else echo "warning: redis-cli missing; redis-cli tests will be skipped"; fi; }

up: setup
	$(BIN)/postoffice up

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -m "not integration" -q

integration: setup tools
	$(BIN)/pytest -m integration -q

# The order the style guide fixes: format, lint, types, unit tests, integration tests.
test check: lint typecheck unit integration

# The benchmarks' peer, redis-server, and its load generator, redis-benchmark, from Debian.
bench-tools:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null; \
	  else echo "bench-tools: install redis-server and redis-tools (as root: apt-get install redis-server redis-tools)"; exit 2; fi; }

bench-command: setup bench-tools
	$(BIN)/python bench/command/run.py

bench-store: setup bench-tools
	$(BIN)/python bench/store/run.py

# Opt-in: the command server's per-command path compiled with mypyc, in a virtualenv of
# its own (.venv-compiled), installed from an sdist so no .so lands beside the sources.
# Rebuild after editing a compiled module (the list is in pyproject.toml); `make setup`
# and `make test` never use it. Needs a C compiler and the Python headers.
COMPILED := .venv-compiled
compiled:
	rm -rf $(COMPILED)
	$(PYTHON) -m venv $(COMPILED)
	$(COMPILED)/bin/pip install --quiet --upgrade pip hatchling
	$(COMPILED)/bin/hatchling build -t sdist -d $(COMPILED)/sdist
	HATCH_BUILD_HOOK_ENABLE_MYPYC=true $(COMPILED)/bin/pip install --quiet \
	  "$$(ls $(COMPILED)/sdist/postoffice-*.tar.gz)[dev]"
	$(COMPILED)/bin/python -c "import postoffice.command.connection as m; \
	  assert m.__file__.endswith('.so'), m.__file__; print('compiled:', m.__file__)"

# The whole suite against the compiled build (run `make compiled` first).
test-compiled: tools
	$(COMPILED)/bin/python -c "import postoffice.command.connection as m; \
	  assert m.__file__.endswith('.so'), 'run make compiled first'"
	$(COMPILED)/bin/pytest -q

clean:
	rm -rf $(VENV) $(COMPILED) .mypy_cache .pytest_cache .ruff_cache
