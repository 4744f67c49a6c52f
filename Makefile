# The newcomer's path: `make up` runs everything, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Options for every pytest run, passed through (`make test PYTEST_ARGS="-x -n 2"`).
PYTEST_ARGS ?=

.PHONY: compat setup bus-ext up test check lint typecheck unit integration tools bench-tools bench-command bench-command-sizes bench-store compiled test-compiled test-pure clean

# mypyc's part of the compiled build (below) starts once mypy and the runtime dependencies
# are in, and runs beside the development tools' install.
$(STAMP): pyproject.toml hatch_build.py src/postoffice/bus/_atomics.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'mypy>=1.10' 'setuptools>=65' 'hatchling>=1.20'
	POSTOFFICE_COMPILE=0 $(BIN)/pip install --quiet -e .
	@mkdir -p build; if [ "$${POSTOFFICE_COMPILE:-1}" != 0 ]; then \
	  ($(BIN)/python hatch_build.py --compiled > build/compiled.log 2>&1 &) ; fi
	POSTOFFICE_COMPILE=0 $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Two builds of one checkout. .venv holds the development install: editable, pure Python,
# so every edit is live for the tests, mypy and `.venv/bin/postoffice`. The compiled build
# is the same package as a wheel (hot modules compiled by mypyc, hatch_build.py) installed
# into $(SITE) and run with .venv's interpreter and PYTHONPATH=$(SITE): `make up` runs it,
# `make test` tests both. A wheel, not .so files beside the sources, because a stale .so
# would shadow an edited module with no sign of it. mypyc's part is cached under
# build/compiled by a hash of the compiled modules, what they import and the build config
# (about 45 s on two cores when it changes, nothing otherwise); the wheel around it is rebuilt when
# any source changes (seconds). Without a C compiler (or with POSTOFFICE_COMPILE=0) one
# line says so, $(SITE) is not made, and everything runs pure Python.
SITE       := build/site
SITE_STAMP := build/site.installed
SOURCES    := $(shell find src -name '*.py' -o -name '*.c' 2>/dev/null)
COMPILED_PYTHONPATH = $$(test -d $(SITE)/postoffice && echo $(CURDIR)/$(SITE))

$(SITE_STAMP): $(STAMP) $(SOURCES) pyproject.toml hatch_build.py
	@rm -rf $(SITE) build/wheel
	@if [ "$${POSTOFFICE_COMPILE:-1}" = 0 ]; then \
	  echo "postoffice: compiled modules not built (POSTOFFICE_COMPILE=0); running pure Python"; \
	elif $(BIN)/python hatch_build.py --compiled >/dev/null; then \
	  $(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w build/wheel . \
	  && $(BIN)/pip install --quiet --no-deps --target $(SITE) build/wheel/postoffice-*.whl \
	  && $(BIN)/python -c "import sys; sys.path.insert(0, '$(SITE)'); \
	     import postoffice.command.connection as m; assert m.__file__.endswith('.so'), m.__file__" \
	  || { rm -rf $(SITE); echo "postoffice: the compiled wheel did not install; running pure Python"; }; \
	fi
	@mkdir -p build && touch $(SITE_STAMP)

setup: $(STAMP) $(SITE_STAMP)

# The compiled build again, now (make setup builds it when a source changed).
compiled: $(STAMP)
	rm -f $(SITE_STAMP)
	$(MAKE) $(SITE_STAMP)

# Rebuild the bus's C extension in place (make setup does it too, when the .c changes).
bus-ext: setup
	$(BIN)/python hatch_build.py

# The real clients the README's quick start shows and the tests drive, as
# command:Debian-package pairs. When one is missing they come from apt-get if we are
# root; otherwise one line says what to install (the redis-cli tests, the browser test of
# `dashboard --web` without chromium, and the ingest cluster's tests without nats-server
# are then skipped).
CLIENTS := redis-cli:redis-tools nc:netcat-openbsd chromium:chromium chromedriver:chromium-driver \
           nats-server:nats-server

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
	PYTHONPATH=$(COMPILED_PYTHONPATH) $(BIN)/postoffice up

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

# Both run in parallel (pytest-xdist). The integration tests mostly wait on sockets and
# child processes (a whole CI run keeps about 1.2 of 2 cores busy), so they take three
# times as many workers as a 2-core runner has cores; loadgroup keeps each xdist_group
# on one worker. The tests that assert wall-clock
# latency (marked alone) run afterwards, one at a time, with no other test beside them.
UNIT_WORKERS ?= 2
INTEGRATION_WORKERS ?= 6

# SUITE_ENV picks the build under test: empty for pure Python (.venv's editable install),
# PYTHONPATH=build/site for the compiled one (test-compiled sets it).
SUITE_ENV ?=
# Where the integration tests live (tests/test_hygiene.py keeps them there): each worker
# collects only these, and `make unit` leaves them out.
INTEGRATION_DIRS := tests/integration tests/adversarial

# Bytecode is written (into the gitignored __pycache__ folders) whatever the environment
# says: without it every process a test starts, and every pytest worker, compiles the
# sources it imports again, which made a third of the suite's CPU time.
unexport PYTHONDONTWRITEBYTECODE

# What `make unit` collects, and integration modules `make integration` leaves out
# (test-compiled narrows both; see there).
UNIT_PATHS ?= tests $(INTEGRATION_DIRS:%=--ignore=%)
INTEGRATION_SKIP ?=

unit: setup
	$(SUITE_ENV) $(BIN)/pytest $(UNIT_PATHS) -m "not integration" -q -n $(UNIT_WORKERS) $(PYTEST_ARGS)

integration: setup tools
	$(SUITE_ENV) $(BIN)/pytest $(INTEGRATION_DIRS) $(INTEGRATION_SKIP:%='--ignore-glob=tests/integration/%') -m "integration and not alone" -q -n $(INTEGRATION_WORKERS) --dist loadgroup $(PYTEST_ARGS)
	$(SUITE_ENV) $(BIN)/pytest $(INTEGRATION_DIRS) $(INTEGRATION_SKIP:%='--ignore-glob=tests/integration/%') -m "integration and alone" -q $(PYTEST_ARGS)

# The order the style guide fixes: format, lint, types, unit tests, integration tests;
# then the whole suite again on the compiled build (when there is one).
test check: lint typecheck unit integration test-compiled

# The benchmarks' peer, redis-server, and its load generator, redis-benchmark, from Debian.
bench-tools:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null; \
	  else echo "bench-tools: install redis-server and redis-tools (as root: apt-get install redis-server redis-tools)"; exit 2; fi; }

bench-command: setup bench-tools
	PYTHONPATH=$(COMPILED_PYTHONPATH) $(BIN)/python bench/command/run.py

bench-command-sizes: setup bench-tools
	PYTHONPATH=$(COMPILED_PYTHONPATH) $(BIN)/python bench/command/sizes.py

bench-store: setup bench-tools
	PYTHONPATH=$(COMPILED_PYTHONPATH) $(BIN)/python bench/store/run.py

# The suite again on the compiled build ($(SITE), PYTHONPATH), the servers the
# integration tests start included; says so and passes when there is none (no compiler).
# It runs the tests of what mypyc compiles: core, command, store and ingest, their unit
# tests and every integration test that starts or embeds one of them (`up` included).
# The bus, whose hot path is a C extension built alike in both builds, the office and the
# cluster library, which have no compiled module of their own, and the checks of the tree
# (architecture, hygiene, README) run once, in the pure pass: on the compiled build they
# would run the same code again and push CI past ten minutes on two cores.
COMPILED_UNIT_PATHS := tests/core tests/command tests/store tests/ingest tests/fuzz
COMPILED_INTEGRATION_SKIP := test_bus_* test_office_* test_dashboard* test_cluster_claims.py \
                             test_cluster_events.py test_cluster_objects.py test_cluster_routes.py

test-compiled: setup tools
	@if [ -d $(SITE)/postoffice ]; then \
	  PYTHONPATH=$(CURDIR)/$(SITE) $(BIN)/python -c "import postoffice.command.connection as m; \
	    assert m.__file__.endswith('.so'), m.__file__; print('compiled build:', m.__file__)" \
	  && $(MAKE) --no-print-directory unit integration SUITE_ENV=PYTHONPATH=$(CURDIR)/$(SITE) \
	       UNIT_PATHS="$(COMPILED_UNIT_PATHS)" INTEGRATION_SKIP="$(COMPILED_INTEGRATION_SKIP)"; \
	else echo "test-compiled: no compiled build (see make setup's line); the pure suite ran"; fi

# The whole suite on the pure Python development install (unit, then integration).
test-pure: unit integration

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache

# Redis's own Tcl tests (7.0.15) against the command server: the measure in
# docs/compatibility.md. Not part of `make test`: it clones Redis into a cache dir.
compat: setup
	PYTHON=$(BIN)/python bench/compat/run.sh
