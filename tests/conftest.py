"""The map of the test helpers, and the home of fixtures more than one test package uses.

- tests/fakes.py: `FakeTransport`, the one in-memory transport (for servers' connections
  and for clients: records writes and calls, delivers connection_lost, can hand writes to
  a fake peer); `FakeClock`, the core's clock that moves only when told to; `SyncGate`,
  which holds a store engine's fsyncs until a test lets them through.
- tests/strategies.py: the Hypothesis strategies and cut points shared by the codec tests.
- tests/integration/conftest.py: real server processes on 127.0.0.1 port 0 (`serve`,
  `start_server`, `ServerProcess`), free port blocks, and the redis-benchmark driver.
- tests/integration/rawclient.py: `RawClient`, the one raw socket client (connect, send,
  read exactly n bytes, up to a delimiter, until a parser is done, or until EOF, each
  bounded by a timeout), and `exchange` for a one-shot request.
- tests/test_hygiene.py keeps unit tests free of sleeps, sockets and processes; those
  belong in tests/integration/, marked `integration`.

Fixtures more than one package uses are registered here (`pytest_plugins`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Hypothesis's per-example deadline measures the machine, not the code: on a loaded
# two-core runner a slow example fails a property that holds. Examples stay bounded by
# max_examples; the suite's own timeouts bound the time.
settings.register_profile("postoffice", deadline=None)
settings.load_profile("postoffice")

#: The bus's channel fixtures (tests/bus/fixtures.py), used by its unit tests and by its
#: real-process tests under tests/integration/.
pytest_plugins = ("tests.bus.fixtures",)


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """The root logger as it was before the test: a CLI command run in-process installs
    the servers' stderr handler (`postoffice.core.logs.setup`), and a later test, in
    whatever order a worker gets it, would read that handler's lines in its output."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        # pytest's own capture handlers come and go with each phase: leave them to it.
        if handler not in before and type(handler).__module__.startswith("postoffice."):
            root.removeHandler(handler)
    root.setLevel(level)
