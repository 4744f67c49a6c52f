# The newcomer's path: `make up` runs everything, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup bus-ext up test check lint typecheck unit integration tools bench-tools bench-command bench-store compiled test-compiled clean

$(STAMP): pyproject.toml hatch_build.py src/postoffice/bus/_atomics.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Rebuild the bus's C extension in place (make setup does it too, when the .c changes).
bus-ext: setup
	$(BIN)/python hatch_build.py

# The real clients the README's quick start shows and the tests drive, as
# command:Debian-package pairs. When one is missing they come from apt-get if we are
# root; otherwise one line says what to install (the redis-cli tests, and the browser
# test of `dashboard --web` without chromium, are then skipped).
CLIENTS := redis-cli:redis-tools nc:netcat-openbsd chromium:chromium chromedriver:chromium-driver

tools:
	@missing=""; for pair in $(CLIENTS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing the clients:$$missing"; \
	    (apt-get update -qq && apt-get install -y -qq$$missing >/dev/null) \
	      || echo "warning: could not install$$missing (apt-get failed); install them yourself"; \
	  else \
	    echo "note: the quick start's clients are missing; install$$missing (Debian, Ubuntu: sudo apt-get install$$missing)"; \
	  fi; \
	fi

up: setup tools
	@echo "starting every service; in another terminal, in $(CURDIR): . $(VENV)/bin/activate, then redis-cli -p 6380 ping (README: Quick start)"
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
