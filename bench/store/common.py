"""Settings of the store benchmark shared by its parts: keys, value, limits, scenarios."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from typing import Final, final

import uvloop

#: redis-benchmark's `-r` replaces __rand_int__ in `key:__rand_int__` with 12 digits.
KEY_FORMAT: Final = b"key:%012d"
VALUE_BYTES: Final = 100
#: One value for every write, so both sides store the same bytes.
VALUE: Final = bytes(random.Random(100).randrange(256) for _ in range(VALUE_BYTES))

DEFAULT_KEYS: Final = 100_000
DEFAULT_CLIENTS: Final = 50
DEFAULT_PIPELINE: Final = 16
#: Seconds of load per client run: with the defaults the whole benchmark takes ~3 min.
DEFAULT_SECONDS: Final = 2.5
DEFAULT_ROUNDS: Final = 2
#: redis-benchmark -n per test (SET and GET each) without pipelining.
DEFAULT_RB_REQUESTS: Final = 20_000
#: With -P, -n is this many times --rb-requests: redis answers a pipelined -n 20000 in a
#: few tens of ms, too short to measure.
RB_PIPELINED_FACTOR: Final = 5
#: Keys the engine part writes and reads without fsync; the durable puts get fewer,
#: since each raw LMDB commit is an fsync.
DEFAULT_ENGINE_KEYS: Final = 50_000
DEFAULT_ENGINE_DURABLE_KEYS: Final = 4_000
#: Writer threads for the durable engine puts (they share fsyncs: group commit).
DEFAULT_ENGINE_THREADS: Final = 8
#: Keys per prefill batch: one log append and one LMDB flush at most per batch.
PREFILL_BATCH: Final = 1_000

#: How long a freshly started server may take to be ready.
STARTUP_TIMEOUT_S: Final = 20.0
#: How long one redis-benchmark run may take before the benchmark gives up.
RB_TIMEOUT_S: Final = 600.0
#: How long a server may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT_S: Final = 10.0
#: A client run that passes its time by this much is stuck.
RUN_GRACE_S: Final = 60.0
#: Raw LMDB map size: sparse, address space only.
LMDB_MAP_BYTES: Final = 1 << 32
MAX_CONNECTIONS: Final = 10_000

INSTALL_HINT: Final = (
    "install them with: apt-get install redis-server redis-tools "
    "(as root, or with sudo, on Debian/Ubuntu)"
)

PARTS: Final = ("client", "rb", "rb-embedded", "engine")
#: Event loops the client part can run on; both clients always get the same one.
LOOPS: Final[dict[str, Callable[[], asyncio.AbstractEventLoop]]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
#: (phase, our --durability, redis --appendfsync).
PHASES: Final = (("durable", "always", "always"), ("interval", "interval", "everysec"))


def make_keys(count: int) -> list[bytes]:
    """The benchmark's keys, in redis-benchmark's `-r` spelling."""
    return [KEY_FORMAT % i for i in range(count)]


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A load shape: connections, and requests in flight on each."""

    name: str
    clients: int
    pipeline: int


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One timed run against one contender (a row of the JSON's `runs`)."""

    part: str
    phase: str
    test: str
    scenario: str
    round: int
    contender: str
    ops: int
    seconds: float
    ops_s: float
    p50_ms: float | None
    p99_ms: float | None
    server_cpu_us_per_op: float | None
    client_cpu_us_per_op: float | None
    other_cpu_s: float
    misses: int = 0
    #: Our store server's fsyncs during the run (from STATS), so ops / fsyncs is the
    #: group-commit size; None for the others.
    fsyncs: int | None = None
    #: rb part, ours: the server CPU split between the command and the store server.
    server_cpu_us_per_op_by_process: dict[str, float] | None = None
