"""Benchmark: the store server against a real redis-server with AOF on, and the engine
against raw LMDB, in the same run, with 100-byte values.

A standalone script (never imported by pytest). Progress and a table go to stderr, one
JSON object (parameters, machine, results, goals) to stdout. See bench/store/README.md.
"""

# Design
# ------
# Three parts, all with the same keys (`key:%012d`, redis-benchmark's `-r` names) and the
# same 100-byte value:
#   client:  our AsyncClient against `postoffice store serve`, and redis-py's asyncio
#            client against `redis-server --appendonly yes`, each with C connections and
#            P requests in flight per connection, for a fixed time per run;
#   rb:      redis-benchmark -t set,get against the command server backed by the store
#            server (`postoffice command serve --store HOST:PORT`) and against redis-server;
#            skipped when the command server has no --store flag;
#   rb-embedded: the same against the command server with the store engine in its own
#            process (`postoffice command serve --store-dir DIR`), on the same data dir
#            once the store server is stopped; skipped without --store-dir;
#   engine:  postoffice.store.Store in this process against the `lmdb` package alone.
# The servers run in two phases: durable (our `always`, redis `appendfsync always`) and
# interval (our `interval`, redis `appendfsync everysec`). In each phase both stores are
# prefilled with the same keys, so every GET hits. Every run against redis is paired with
# the run against ours in the same round, and ratios are taken within a pair.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import datetime
import functools
import hashlib
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Final, Protocol, final

import lmdb
import redis
import redis.asyncio as aioredis
import uvloop

from postoffice.core import sysinfo
from postoffice.core.errors import PostOfficeError
from postoffice.core.storewire import Status
from postoffice.store import AsyncClient, Client, Put, Store

#: Exit status when a needed program is missing (the usage-error convention).
EXIT_MISSING_TOOL: Final = 2
#: Exit status when a server or a client misbehaves during the run.
EXIT_RUN_FAILED: Final = 1

LOOPBACK: Final = "127.0.0.1"
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


class BenchError(Exception):
    """A server or a client did not behave; the message says how."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


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


# --- processes ----------------------------------------------------------------------------


@final
@dataclasses.dataclass(slots=True, kw_only=True)
class Server:
    """A server subprocess this script started, with the pid whose CPU time is measured."""

    name: str
    proc: subprocess.Popen[bytes]
    pid: int
    port: int
    log_path: Path

    def __repr__(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited({self.proc.returncode})"
        return f"<Server {self.name} pid={self.pid} {LOOPBACK}:{self.port} {state}>"

    def check_alive(self) -> None:
        """Raise BenchError, with the tail of its log, if the server has exited."""
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.proc.returncode}; "
                f"log tail:\n{_tail(self.log_path)}"
            )


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def answers_ping(port: int) -> bool:
    """True when a RESP server on the port answers an inline PING with +PONG."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply == b"+PONG\r\n"
    except OSError:
        return False


def _spawn(name: str, argv: Sequence[str], port: int, log_path: Path, cwd: Path) -> Server:
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd)
    return Server(name=name, proc=proc, pid=proc.pid, port=port, log_path=log_path)


def wait_ready(server: Server, ready_file: Path | None) -> None:
    """Wait for the ready file (ours) or a PONG (redis); raises BenchError on exit or timeout.

    A ready file's pid replaces the Popen pid, in case the console script ever becomes a
    wrapper process.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        server.check_alive()
        if ready_file is not None:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                server.pid = int(json.loads(ready_file.read_text())["pid"])
                return
        elif answers_ping(server.port):
            return
        time.sleep(0.05)
    raise BenchError(
        f"{server.name} was not ready on port {server.port} within {STARTUP_TIMEOUT_S} s; "
        f"log tail:\n{_tail(server.log_path)}"
    )


def redis_argv(redis_server: str, port: int, data: Path, appendfsync: str) -> list[str]:
    """redis-server with AOF on; no RDB snapshots, no AOF rewrite (ours never compacts by
    itself either), so neither side forks or rewrites during a run."""
    return [
        redis_server,
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--auto-aof-rewrite-percentage",
        "0",
        "--save",
        "",
        "--daemonize",
        "no",
        "--maxclients",
        str(MAX_CONNECTIONS),
    ]


def start_redis(work: Path, redis_server: str, appendfsync: str) -> Server:
    """Start redis-server with AOF (`appendfsync`) on a free loopback port."""
    port = free_port()
    data = work / f"redis-{appendfsync}"
    data.mkdir()
    argv = redis_argv(redis_server, port, data, appendfsync)
    server = _spawn("redis", argv, port, work / f"redis-{appendfsync}.log", data)
    wait_ready(server, None)
    return server


def store_argv(postoffice: str, port: int, data: Path, durability: str, ready: Path) -> list[str]:
    """`postoffice store serve`; the metrics port is a free one (it cannot be turned off)."""
    return [
        postoffice,
        "store",
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--metrics-port",
        str(free_port()),
        "--data-dir",
        str(data),
        "--durability",
        durability,
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--ready-file",
        str(ready),
        "--log-level",
        "WARNING",
    ]


def start_store(work: Path, postoffice: str, durability: str) -> Server:
    """Start `postoffice store serve` on the data dir `prefill_store` filled."""
    port = free_port()
    data = work / f"store-{durability}"
    ready = work / f"store-{durability}.ready.json"
    argv = store_argv(postoffice, port, data, durability, ready)
    server = _spawn("store", argv, port, work / f"store-{durability}.log", work)
    wait_ready(server, ready)
    return server


def start_command(
    work: Path,
    postoffice: str,
    durability: str,
    *,
    store: Server | None = None,
    store_dir: Path | None = None,
) -> Server:
    """Start `postoffice command serve`, with `--store` in front of the store server, or
    with `--store-dir` (and our `--durability`) on the store server's data dir."""
    port = free_port()
    mode = "remote" if store is not None else "embedded"
    ready = work / f"command-{mode}-{durability}.ready.json"
    if store is not None:
        backend = ["--store", f"{LOOPBACK}:{store.port}"]
    else:
        assert store_dir is not None
        backend = ["--store-dir", str(store_dir), "--durability", durability]
    argv = [
        postoffice,
        "command",
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--no-metrics",
        "--max-connections",
        str(MAX_CONNECTIONS),
        *backend,
        "--ready-file",
        str(ready),
        "--log-level",
        "WARNING",
    ]
    server = _spawn("command", argv, port, work / f"command-{mode}-{durability}.log", work)
    wait_ready(server, ready)
    return server


def stop(server: Server) -> None:
    """SIGTERM the server by pid, then SIGKILL it if it lingers."""
    if server.proc.poll() is not None:
        return
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _say(f"{server.name} ignored SIGTERM for {STOP_TIMEOUT_S} s; sending SIGKILL")
        server.proc.kill()
        server.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a whole process (all its threads), in seconds.

    Raises BenchError when the process is gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/stat: {exc}") from exc
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5) are utime and stime; field 3 is fields[0] here.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy since boot (from /proc/stat), in seconds.

    Raises BenchError when /proc/stat cannot be read.
    """
    try:
        with open("/proc/stat") as stat:
            first = stat.readline().split()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/stat: {exc}") from exc
    # cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    ticks = [int(field) for field in first[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process (the client, or the engine part), all threads."""
    return time.process_time()


def children_cpu_seconds() -> float:
    """CPU time of this script's reaped children (redis-benchmark, after it exits)."""
    usage = os.times()
    return usage.children_user + usage.children_system


# --- prefill -----------------------------------------------------------------------------


def prefill_store(data_dir: Path, keys: Sequence[bytes]) -> None:
    """Write every key into `<data_dir>/store` through the engine, before the server opens it.

    Raises the engine's errors (StoreStorageError and its kin).
    """
    with Store.open(data_dir / "store", durability="never") as store:
        for start in range(0, len(keys), PREFILL_BATCH):
            store.batch([Put(key=key, value=VALUE) for key in keys[start : start + PREFILL_BATCH]])


def prefill_redis(port: int, keys: Sequence[bytes]) -> None:
    """MSET every key into redis-server, a batch per command. Raises redis errors."""
    client = redis.Redis(host=LOOPBACK, port=port)
    try:
        for start in range(0, len(keys), PREFILL_BATCH):
            client.mset(dict.fromkeys(keys[start : start + PREFILL_BATCH], VALUE))
        if client.dbsize() != len(keys):
            raise BenchError(f"redis holds {client.dbsize()} keys after prefill, not {len(keys)}")
    finally:
        client.close()


def warm_up(server: Server, keys: Sequence[bytes]) -> None:
    """Read every key once through `server` (MGET, a batch per command), untimed.

    A server that has just started pays its first touch of every page of its data (page
    faults, on a VM not cheap) and fills its caches during the first timed run; the store
    server met the keys already in the client part, redis holds them in memory from the
    prefill. So before its first redis-benchmark run, each server of the rb parts reads
    the whole keyspace once. Raises BenchError when a value is missing or wrong-sized.
    """
    client = redis.Redis(host=LOOPBACK, port=server.port, socket_timeout=60)
    try:
        for start in range(0, len(keys), PREFILL_BATCH):
            values = client.mget(keys[start : start + PREFILL_BATCH])
            if any(not isinstance(v, bytes) or len(v) != VALUE_BYTES for v in values):
                raise BenchError(f"{server.name} lacks prefilled keys from {keys[start]!r}")
    finally:
        client.close()


# --- part "client": AsyncClient against redis.asyncio -------------------------------------


class Conn(Protocol):
    """One client connection, as the load loop sees it."""

    async def get(self, keys: Sequence[bytes]) -> int:
        """GET every key (pipelined when several); return how many were missing."""
        ...

    async def put(self, keys: Sequence[bytes]) -> None:
        """Set every key to VALUE (pipelined when several)."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...


@final
class OursConn:
    """Our AsyncClient. Several requests in flight are a pipeline: submitted together
    (`submit_get` / `submit_put`, which return futures), then awaited together, as
    redis-py's pipeline collects its commands and reads all the replies."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @classmethod
    async def open(cls, port: int) -> OursConn:
        """Connect and check the server answers."""
        client = await AsyncClient.connect(LOOPBACK, port)
        await client.stats()
        return cls(client)

    async def get(self, keys: Sequence[bytes]) -> int:
        client = self._client
        if len(keys) == 1:
            return int(await client.get(keys[0]) is None)
        replies = await asyncio.gather(*[client.submit_get(key) for key in keys])
        for reply in replies:
            if reply.status is not Status.OK and reply.status is not Status.NOT_FOUND:
                raise BenchError(f"our GET failed: {reply.status.name} {reply.body[:200]!r}")
        return sum(reply.status is Status.NOT_FOUND for reply in replies)

    async def put(self, keys: Sequence[bytes]) -> None:
        client = self._client
        if len(keys) == 1:
            await client.put(keys[0], VALUE)
            return
        replies = await asyncio.gather(*[client.submit_put(key, VALUE) for key in keys])
        for reply in replies:
            if reply.status is not Status.OK:
                raise BenchError(f"our PUT failed: {reply.status.name} {reply.body[:200]!r}")

    async def close(self) -> None:
        await self._client.close()


@final
class RedisConn:
    """redis-py's asyncio client on one connection; several requests are a pipeline.

    A pipeline takes its connection from the client's own pool, so each RedisConn uses one
    connection in a scenario either way.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    @classmethod
    async def open(cls, port: int, pipeline: int) -> RedisConn:
        """Connect (the connection the scenario will use) and check the server answers."""
        client = aioredis.Redis(host=LOOPBACK, port=port, single_connection_client=True)
        if pipeline == 1:
            await client.ping()
        else:
            pipe = client.pipeline(transaction=False)
            pipe.ping()
            await pipe.execute()
        return cls(client)

    async def get(self, keys: Sequence[bytes]) -> int:
        if len(keys) == 1:
            return int(await self._client.get(keys[0]) is None)
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values = await pipe.execute()
        return sum(value is None for value in values)

    async def put(self, keys: Sequence[bytes]) -> None:
        if len(keys) == 1:
            await self._client.set(keys[0], VALUE)
            return
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, VALUE)
        await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """What one timed client run produced, before any CPU bookkeeping."""

    ops: int
    misses: int
    seconds: float
    latencies_s: list[float]


async def _worker(
    conn: Conn,
    op: str,
    keys: Sequence[bytes],
    rng: random.Random,
    pipeline: int,
    deadline: float,
    latencies: list[float],
) -> tuple[int, int]:
    """Requests back to back (P at a time) until the deadline; returns (ops, misses)."""
    perf = time.perf_counter
    count = len(keys)
    done = misses = 0
    while perf() < deadline:
        batch = [keys[rng.randrange(count)] for _ in range(pipeline)]
        began = perf()
        if op == "get":
            misses += await conn.get(batch)
        else:
            await conn.put(batch)
        latencies.append(perf() - began)
        done += pipeline
    return done, misses


async def drive(
    opener: Callable[[], Awaitable[Conn]],
    op: str,
    scenario: Scenario,
    keys: Sequence[bytes],
    seconds: float,
    seed: int,
    measure: Callable[[], None],
) -> Load:
    """Open the scenario's connections, then run the load for `seconds`.

    `measure` is called right before and right after the timed window (CPU readings).
    """
    conns = [await opener() for _ in range(scenario.clients)]
    try:
        latencies: list[float] = []
        measure()
        began = time.perf_counter()
        deadline = began + seconds
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *[
                    _worker(conn, op, keys, random.Random(seed * 1000 + i), scenario.pipeline,
                            deadline, latencies)
                    for i, conn in enumerate(conns)
                ]
            ),
            timeout=seconds + RUN_GRACE_S,
        )  # fmt: skip
        elapsed = time.perf_counter() - began
        measure()
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()
    return Load(
        ops=sum(ops for ops, _ in outcomes),
        misses=sum(misses for _, misses in outcomes),
        seconds=elapsed,
        latencies_s=latencies,
    )


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        raise BenchError("a client run finished no request")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


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


@final
@dataclasses.dataclass(slots=True)
class CpuWindow:
    """CPU readings of the servers, this process and the machine, around a timed window."""

    server_pids: Sequence[int]
    readings: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)
    per_server: list[list[float]] = dataclasses.field(default_factory=list)

    def __call__(self) -> None:
        servers = [cpu_seconds(pid) for pid in self.server_pids]
        self.per_server.append(servers)
        self.readings.append((sum(servers), own_cpu_seconds(), machine_busy_seconds()))

    def server_deltas(self) -> list[float]:
        """Each server's CPU seconds between the first and last reading, in pid order."""
        first, last = self.per_server[0], self.per_server[-1]
        return [b - a for a, b in zip(first, last, strict=True)]

    def deltas(self) -> tuple[float, float, float]:
        """(server, client, machine) CPU seconds between the first and last reading."""
        if len(self.readings) < 2:
            raise BenchError("a run ended before its CPU was read twice")
        first, last = self.readings[0], self.readings[-1]
        server, client, busy = (b - a for a, b in zip(first, last, strict=True))
        return server, client, busy


def store_fsyncs(port: int) -> int:
    """The fsyncs our store server's engine has made so far (STATS `engine_fsyncs`).

    Raises BenchError when the server does not say.
    """
    try:
        with Client(LOOPBACK, port) as client:
            value = client.stats().get("engine_fsyncs")
    except PostOfficeError as exc:
        raise BenchError(f"cannot read STATS from the store: {exc}") from exc
    if not isinstance(value, int):
        raise BenchError(f"the store's STATS has engine_fsyncs={value!r}, not a count")
    return value


def client_run(
    *,
    contender: str,
    server: Server,
    phase: str,
    op: str,
    scenario: Scenario,
    keys: Sequence[bytes],
    seconds: float,
    round_no: int,
    loop: str,
) -> Run:
    """One timed run of `op` against one server, on a fresh event loop of kind `loop`."""
    server.check_alive()
    window = CpuWindow([server.pid])
    port, pipeline = server.port, scenario.pipeline

    async def open_ours() -> Conn:
        return await OursConn.open(port)

    async def open_redis() -> Conn:
        return await RedisConn.open(port, pipeline)

    opener = open_ours if contender == "ours" else open_redis
    fsyncs_before = store_fsyncs(port) if contender == "ours" else None
    try:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            load = runner.run(drive(opener, op, scenario, keys, seconds, round_no, window))
    except TimeoutError as exc:
        raise BenchError(f"{contender} {op} {scenario.name} ran past {RUN_GRACE_S} s") from exc
    except (OSError, redis.RedisError, PostOfficeError) as exc:
        raise BenchError(f"{contender} {op} {scenario.name}: {exc!r}") from exc
    server.check_alive()
    fsyncs = None if fsyncs_before is None else store_fsyncs(port) - fsyncs_before
    server_cpu, client_cpu, busy = window.deltas()
    if op == "get" and load.misses:
        raise BenchError(f"{contender}: {load.misses} of {load.ops} GETs missed a prefilled key")
    latencies = sorted(load.latencies_s)
    return Run(
        part="client",
        phase=phase,
        test=op.upper(),
        scenario=scenario.name,
        round=round_no,
        contender=contender,
        ops=load.ops,
        seconds=round(load.seconds, 3),
        ops_s=round(load.ops / load.seconds, 1),
        p50_ms=round(_quantile(latencies, 0.50) * 1e3, 3),
        p99_ms=round(_quantile(latencies, 0.99) * 1e3, 3),
        server_cpu_us_per_op=round(server_cpu * 1e6 / load.ops, 2),
        client_cpu_us_per_op=round(client_cpu * 1e6 / load.ops, 2),
        other_cpu_s=round(max(0.0, busy - server_cpu - client_cpu), 2),
        misses=load.misses,
        fsyncs=fsyncs,
    )


# --- part "rb": redis-benchmark against the store-backed command server -------------------


def command_has_store_flag(postoffice: str, flag: str = "--store") -> bool:
    """Whether `postoffice command serve` accepts `flag` (--store: GET/SET on a store
    server; --store-dir: on a store engine in its own process)."""
    try:
        done = subprocess.run(
            [postoffice, "command", "serve", "--help"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(rb"(^|\s)" + re.escape(flag.encode()) + rb"(\s|$)", done.stdout) is not None


def check_command_store(command: Server, key: bytes, deadline_s: float = 10.0) -> None:
    """Check, through the command server, that `key` reads back as a 100-byte value: the
    store behind it is connected and serves the prefilled keys (which redis-benchmark's
    SET overwrites with values of its own). redis-benchmark counts error replies
    (TRYAGAIN) as answers, so without this check a broken backend would look fast.

    Raises BenchError.
    """
    client = redis.Redis(host=LOOPBACK, port=command.port, socket_timeout=5)
    last: object = None
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            command.check_alive()
            try:
                last = client.get(key)
            except redis.RedisError as exc:
                last = exc
            if isinstance(last, bytes) and len(last) == VALUE_BYTES:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    finally:
        client.close()
    raise BenchError(
        f"the store-backed command server answered GET {key!r} with {last!r}, not a "
        f"{VALUE_BYTES}-byte value; log tail:\n{_tail(command.log_path)}"
    )


def rb_argv(
    redis_benchmark: str,
    port: int,
    scenario: Scenario,
    requests: int,
    keyspace: int,
    tests: str = "set,get",
) -> list[str]:
    """The redis-benchmark command line for one run."""
    argv = [redis_benchmark, "-h", LOOPBACK, "-p", str(port), "-c", str(scenario.clients)]
    if scenario.pipeline > 1:
        argv += ["-P", str(scenario.pipeline)]
    argv += ["-n", str(requests), "-r", str(keyspace), "-d", str(VALUE_BYTES)]
    return [*argv, "-t", tests, "--csv"]


def parse_rb_csv(text: str) -> dict[str, tuple[float, float, float]]:
    """redis-benchmark 7's --csv output: test -> (rps, p50 ms, p99 ms).

    Raises BenchError on anything else, or when SET or GET is missing.
    """
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    header_at = next((i for i, row in enumerate(rows) if row[0] == "test"), None)
    if header_at is None:
        raise BenchError(f"no CSV header in redis-benchmark output: {text[:300]!r}")
    header = rows[header_at]
    try:
        cols = [header.index(name) for name in ("rps", "p50_latency_ms", "p99_latency_ms")]
    except ValueError as exc:
        raise BenchError(f"redis-benchmark CSV header lacks a column: {header}") from exc
    found: dict[str, tuple[float, float, float]] = {}
    for row in rows[header_at + 1 :]:
        try:
            rps, p50, p99 = (float(row[col]) for col in cols)
        except (IndexError, ValueError) as exc:
            raise BenchError(f"bad redis-benchmark CSV row {row}") from exc
        found[row[0]] = (rps, p50, p99)
    if "SET" not in found or "GET" not in found:
        raise BenchError(f"redis-benchmark reported {sorted(found)}, not SET and GET")
    return found


def rb_run(
    *,
    part: str = "rb",
    contender: str,
    servers: Sequence[Server],
    phase: str,
    argv: Sequence[str],
    scenario: Scenario,
    requests: int,
    round_no: int,
) -> list[Run]:
    """One redis-benchmark run (SET then GET); server CPU is the sum over `servers`."""
    for server in servers:
        server.check_alive()
    if contender == "ours":
        check_command_store(servers[0], KEY_FORMAT % 0)
    window = CpuWindow([server.pid for server in servers])
    bench_before = children_cpu_seconds()
    window()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=RB_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv)} ran past {RB_TIMEOUT_S} s") from exc
    window()
    bench_cpu = children_cpu_seconds() - bench_before
    for server in servers:
        server.check_alive()
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")[-500:]
        raise BenchError(f"{' '.join(argv)} exited with status {done.returncode}: {stderr}")
    tests = parse_rb_csv(done.stdout.decode(errors="replace"))
    if contender == "ours":
        check_command_store(servers[0], KEY_FORMAT % 1, deadline_s=0.0)
    server_cpu, _, busy = window.deltas()
    total = requests * len(tests)
    split = {
        server.name: round(cpu * 1e6 / total, 2)
        for server, cpu in zip(servers, window.server_deltas(), strict=True)
    }
    return [
        Run(
            part=part,
            phase=phase,
            test=test,
            scenario=scenario.name,
            round=round_no,
            contender=contender,
            ops=requests,
            seconds=round(requests / rps, 3),
            ops_s=rps,
            p50_ms=p50,
            p99_ms=p99,
            # One CPU reading covers both tests: the same figure under each.
            server_cpu_us_per_op=round(server_cpu * 1e6 / total, 2),
            client_cpu_us_per_op=round(bench_cpu * 1e6 / total, 2),
            other_cpu_s=round(max(0.0, busy - server_cpu - bench_cpu), 2),
            server_cpu_us_per_op_by_process=split if len(servers) > 1 else None,
        )
        for test, (rps, p50, p99) in sorted(tests.items())
    ]


# --- part "engine": Store in-process against raw LMDB -------------------------------------


@final
class RawLmdb:
    """The `lmdb` package alone: one key per transaction, like one Store call per key."""

    def __init__(self, path: Path, *, durable: bool) -> None:
        self._path = path
        # sync=False is LMDB's "the OS decides", as durability=never is ours.
        self._env = lmdb.open(str(path), map_size=LMDB_MAP_BYTES, sync=durable, metasync=durable)

    def __repr__(self) -> str:
        return f"<RawLmdb {self._path}>"

    def put(self, key: bytes, value: bytes) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin() as txn:
            value: bytes | None = txn.get(key)
            return value

    def close(self) -> None:
        self._env.close()


class Engine(Protocol):
    """What the engine part calls on Store and on RawLmdb."""

    def put(self, key: bytes, value: bytes) -> None:
        """Set `key`."""
        ...

    def get(self, key: bytes) -> bytes | None:
        """Read `key`."""
        ...

    def close(self) -> None:
        """Flush and close."""
        ...


def _open_engine(contender: str, path: Path, *, durable: bool) -> Engine:
    if contender == "lmdb":
        path.mkdir(parents=True)
        return RawLmdb(path, durable=durable)
    return Store.open(path, durability="always" if durable else "never")


def _threaded(engine: Engine, keys: Sequence[bytes], threads: int) -> None:
    """Put `keys` from `threads` threads, each its own slice; re-raise the first error."""
    errors: list[BaseException] = []

    def body(part: Sequence[bytes]) -> None:
        try:
            for key in part:
                engine.put(key, VALUE)
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=body, args=(keys[i::threads],), name=f"bench-put-{i}")
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def _engine_measure(
    test: str, contender: str, round_no: int, count: int, body: Callable[[], None]
) -> Run:
    busy_before, cpu_before = machine_busy_seconds(), own_cpu_seconds()
    began = time.perf_counter()
    body()
    elapsed = time.perf_counter() - began
    cpu = own_cpu_seconds() - cpu_before
    busy = machine_busy_seconds() - busy_before
    return Run(
        part="engine",
        phase="-",
        test=test,
        scenario="in-process",
        round=round_no,
        contender=contender,
        ops=count,
        seconds=round(elapsed, 3),
        ops_s=round(count / elapsed, 1),
        p50_ms=None,
        p99_ms=None,
        server_cpu_us_per_op=None,
        client_cpu_us_per_op=round(cpu * 1e6 / count, 2),
        other_cpu_s=round(max(0.0, busy - cpu), 2),
    )


def _put_all(engine: Engine, keys: Sequence[bytes]) -> None:
    for key in keys:
        engine.put(key, VALUE)


def _get_all(engine: Engine, keys: Sequence[bytes]) -> None:
    for key in keys:
        if engine.get(key) is None:
            raise BenchError(f"{engine!r} lost {key!r}")


#: Keys of the untimed engine round before the timed ones: the first round of a process
#: otherwise ran LMDB at about half its later speed (first use of its code and maps).
ENGINE_WARMUP_KEYS: Final = 5_000


def engine_round(
    work: Path,
    keys: Sequence[bytes],
    durable_keys: Sequence[bytes],
    threads: int,
    round_no: int,
    *,
    quiet: bool = False,
) -> list[Run]:
    """Put and get `keys` (no fsync, one thread), then put `durable_keys` durably from
    `threads` threads, into a fresh raw LMDB and then a fresh Store."""
    runs: list[Run] = []
    for contender in ("lmdb", "ours"):
        base = work / f"engine-{round_no}-{contender}"
        fast = _open_engine(contender, base / "fast", durable=False)
        try:
            put_all = functools.partial(_put_all, fast, keys)
            get_all = functools.partial(_get_all, fast, keys)
            runs.append(_engine_measure("PUT", contender, round_no, len(keys), put_all))
            runs.append(_engine_measure("GET", contender, round_no, len(keys), get_all))
        finally:
            fast.close()
        durable = _open_engine(contender, base / "durable", durable=True)
        try:
            put_durable = functools.partial(_threaded, durable, durable_keys, threads)
            test = f"PUT durable x{threads}"
            runs.append(_engine_measure(test, contender, round_no, len(durable_keys), put_durable))
        finally:
            durable.close()
        shutil.rmtree(base)
        for run in runs[-3:] if not quiet else ():
            _say(human_line(run))
    return runs


# --- profiling (optional, untimed) --------------------------------------------------------


#: py-spy samples per second: ~5 ms apart, enough for a few thousand samples per run.
PROFILE_RATE: Final = 200


def _py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy on `pid`, sampling only threads that hold the GIL: where Python time goes
    (threads waiting on a lock, a queue or fsync release the GIL and are not sampled)."""
    beside = Path(sys.executable).parent / "py-spy"
    program = str(beside) if beside.exists() else shutil.which("py-spy")
    if program is None:
        raise BenchError("--profile-dir needs py-spy (.venv/bin/pip install py-spy)")
    argv = [program, "record", "--format", "raw", "--gil", "--rate", str(PROFILE_RATE)]
    # One second more than the run: the run starts after the second py-spy takes to attach.
    argv += ["-d", str(max(1, round(seconds)) + 1), "-p", str(pid), "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


#: Frames every stack shares (thread and event-loop plumbing, the CLI): left out of the
#: inclusive ranking, where they would only say "100 %".
_PLUMBING: Final = frozenset(
    {"threading.py", "runners.py", "__init__.py", "core.py", "cli.py", "launch.py"}
    | {"runtime.py", "postoffice", "workers.py"}
)


def summarise_profile(path: Path, top: int = 15) -> dict[str, object]:
    """Top frames of a py-spy raw (collapsed) profile, as shares of all samples.

    `top_own_pct`: the innermost frame (function, file:line; a C call counts for the line
    that makes it; `Runner.run` is the event loop's own C code, uvloop included).
    `top_inclusive_pct`: functions anywhere on the stack, without the plumbing.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return {"error": str(exc)}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        name, _, where = frames[-1].partition(" (")
        file_name, _, line_no = where.rstrip(")").rpartition(":")
        leaf = f"{name} ({Path(file_name).name}:{line_no})"
        own[leaf] = own.get(leaf, 0) + count
        seen: set[str] = set()
        for frame in frames:
            function, _, place = frame.partition(" (")
            frame_file = Path(place.rsplit(":", 1)[0]).name
            if frame_file not in _PLUMBING and function != "<module>":
                seen.add(f"{function} ({frame_file})")
        for function in seen:
            inclusive[function] = inclusive.get(function, 0) + count

    def ranked(table: dict[str, int]) -> list[list[object]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * n / total, 1)] for name, n in best] if total else []

    return {
        "samples": total,
        "top_own_pct": ranked(own),
        "top_inclusive_pct": ranked(inclusive),
    }


def profile_store(
    store: Server,
    keys: Sequence[bytes],
    scenario: Scenario,
    seconds: float,
    out_dir: Path,
    loop: str,
    phase: str,
    ops: Sequence[str],
) -> dict[str, object]:
    """One extra, untimed run of each op against our store server with py-spy attached."""
    out_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, object] = {}
    for op in ops:
        out = out_dir / f"store-{phase}-{op}-{scenario.name}.txt"
        spy = _py_spy(store.pid, out, seconds)
        time.sleep(1.0)  # py-spy attaches
        client_run(
            contender="ours",
            server=store,
            phase="profile",
            op=op,
            scenario=scenario,
            keys=keys,
            seconds=seconds,
            round_no=0,
            loop=loop,
        )
        try:
            _, err = spy.communicate(timeout=seconds + 31)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        summary = summarise_profile(out)
        if spy.returncode != 0:
            summary["py_spy_error"] = err.decode(errors="replace")[-300:]
        found[f"{phase}/{op}/{scenario.name}"] = summary
        _say(f"profiled store {phase} {op} {scenario.name}: {out}")
    return found


# --- summary ------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 4)


def summarise(runs: Sequence[Run]) -> list[dict[str, object]]:
    """Medians per (part, phase, test, scenario) and the medians of the paired ratios."""
    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.part, run.phase, run.test, run.scenario), []).append(run)
    rows: list[dict[str, object]] = []
    for (part, phase, test, scenario), mine in groups.items():
        peer = "lmdb" if part == "engine" else "redis"
        row: dict[str, object] = {"part": part, "phase": phase, "test": test, "scenario": scenario}
        for contender in (peer, "ours"):
            picked = [run for run in mine if run.contender == contender]
            if not picked:
                continue
            entry: dict[str, object] = {"ops_s": _median([run.ops_s for run in picked])}
            for name in ("p50_ms", "p99_ms", "server_cpu_us_per_op", "client_cpu_us_per_op"):
                values = [getattr(run, name) for run in picked if getattr(run, name) is not None]
                entry[name] = _median(values) if values else None
            group = [run.ops / run.fsyncs for run in picked if run.fsyncs]
            if group:
                entry["ops_per_fsync"] = _median(group)
            splits = [run.server_cpu_us_per_op_by_process for run in picked]
            if all(splits) and splits:
                entry["server_cpu_us_per_op_by_process"] = {
                    name: _median([split[name] for split in splits if split])
                    for name in splits[0] or {}
                }
            row[contender] = entry
        by_round: dict[int, dict[str, Run]] = {}
        for run in mine:
            by_round.setdefault(run.round, {})[run.contender] = run
        ratios = [
            pair["ours"].ops_s / pair[peer].ops_s
            for pair in by_round.values()
            if "ours" in pair and peer in pair and pair[peer].ops_s > 0
        ]
        row["peer"] = peer
        row["rounds"] = len(ratios)
        row["ratio_ops_ours_over_peer"] = _median(ratios) if ratios else None
        row["max_other_cpu_s"] = max(run.other_cpu_s for run in mine)
        rows.append(row)
    return rows


def goals(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The spec's goals: >= 1.0 x redis on GET and on durable PUT, per driver and scenario."""
    found: list[dict[str, object]] = []
    for row in rows:
        if row["part"] == "engine" or row["phase"] != "durable":
            continue
        ratio = row["ratio_ops_ours_over_peer"]
        what = "GET" if row["test"] == "GET" else "durable PUT"
        found.append(
            {
                "goal": f"{what} >= 1.0 x redis ({row['part']}, {row['scenario']})",
                "ratio": ratio,
                "met": isinstance(ratio, float) and ratio >= 1.0,
            }
        )
    return found


def _fmt_ops(value: object) -> str:
    return f"{value:,.0f}" if isinstance(value, float | int) else "-"


def _fmt_ms(entry: object) -> str:
    if not isinstance(entry, dict):
        return "-"
    p50, p99 = entry.get("p50_ms"), entry.get("p99_ms")
    if not isinstance(p50, float) or not isinstance(p99, float):  # the engine part: none
        return "-"
    return f"{p50:.3f} / {p99:.3f}"


def table(rows: Sequence[dict[str, object]]) -> str:
    """The results as a Markdown table (progress output; the JSON holds the same)."""
    labels = {
        ("client", "durable", "GET"): "GET",
        ("client", "durable", "PUT"): "PUT durable (always vs appendfsync always)",
        ("client", "interval", "GET"): "GET (interval servers)",
        ("client", "interval", "PUT"): "PUT interval (interval vs appendfsync everysec)",
        ("rb", "durable", "GET"): "GET",
        ("rb", "durable", "SET"): "SET durable (always vs appendfsync always)",
        ("rb", "interval", "GET"): "GET (interval servers)",
        ("rb", "interval", "SET"): "SET interval (interval vs appendfsync everysec)",
        ("rb-embedded", "durable", "GET"): "GET",
        ("rb-embedded", "durable", "SET"): "SET durable (always vs appendfsync always)",
        ("rb-embedded", "interval", "GET"): "GET (interval servers)",
        ("rb-embedded", "interval", "SET"): "SET interval (interval vs appendfsync everysec)",
    }
    head = (
        "| part | test | load | peer ops/s | ours ops/s | ours/peer | peer p50 / p99 ms "
        "| ours p50 / p99 ms | peer CPU µs/op | ours CPU µs/op |"
    )
    lines = [head, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        part, phase, test = str(row["part"]), str(row["phase"]), str(row["test"])
        peer_name = str(row["peer"])
        peer, ours = row.get(peer_name, {}), row.get("ours", {})
        ratio = row["ratio_ops_ours_over_peer"]
        cpu_key = "client_cpu_us_per_op" if part == "engine" else "server_cpu_us_per_op"

        def cpu(entry: object, key: str = cpu_key) -> str:
            value = entry.get(key) if isinstance(entry, dict) else None
            return f"{value:.1f}" if isinstance(value, float) else "-"

        label = labels.get((part, phase, test), test)
        driver = {
            "client": "AsyncClient vs redis-py",
            "rb": "redis-benchmark, --store",
            "rb-embedded": "redis-benchmark, --store-dir",
            "engine": "Store vs raw LMDB",
        }[part]
        peer_ops = peer.get("ops_s") if isinstance(peer, dict) else None
        ours_ops = ours.get("ops_s") if isinstance(ours, dict) else None
        shown = f"**{ratio:.2f}**" if isinstance(ratio, float) else "-"
        lines.append(
            f"| {driver} | {label} | {row['scenario']} | {_fmt_ops(peer_ops)} "
            f"| {_fmt_ops(ours_ops)} | {shown} | {_fmt_ms(peer)} | {_fmt_ms(ours)} "
            f"| {cpu(peer)} | {cpu(ours)} |"
        )
    return "\n".join(lines)


def human_line(run: Run) -> str:
    """One progress line per run, for the operator watching stderr."""
    latency = ""
    if run.p50_ms is not None and run.p99_ms is not None:
        latency = f" p50 {run.p50_ms:.3f} p99 {run.p99_ms:.3f} ms"
    server = "" if run.server_cpu_us_per_op is None else f" server {run.server_cpu_us_per_op:.1f}"
    client = "" if run.client_cpu_us_per_op is None else f" client {run.client_cpu_us_per_op:.1f}"
    if run.fsyncs:
        client += f" | {run.ops / run.fsyncs:.1f} ops/fsync"
    return (
        f"[{run.part} {run.phase} {run.test} {run.scenario} round {run.round}] "
        f"{run.contender:<5} {run.ops_s:>10,.0f} ops/s{latency} |"
        f" cpu us/op{server}{client} | {run.seconds:.2f} s, other {run.other_cpu_s:.1f} cpu-s"
    )


# --- machine ------------------------------------------------------------------------------


def _command_output(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode(errors="replace").strip()


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def fdatasync_ms(work: Path, count: int = 200) -> float:
    """Median time of a 128-byte append plus fdatasync in the work dir, in ms: the cost
    under every durable write on this disk."""
    path = work / "fsync-probe"
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(count):
            began = time.perf_counter()
            os.write(fd, b"x" * 128)
            os.fdatasync(fd)
            times.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    return round(statistics.median(times) * 1e3, 4)


def python_loop_ms() -> float:
    """Milliseconds this machine takes for a fixed pure-Python loop (best of 3): a speed
    probe, taken at the start and the end, that shows a host slowing its VM mid-run."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - began)
    return round(best * 1e3, 1)


def _src_fingerprint(repo: Path) -> str:
    """A short hash of the uncommitted changes under src/ (diff and new files), so a run
    on a dirty tree can be tied to the exact code it measured."""
    digest = hashlib.sha256()
    diff = subprocess.run(
        ["git", "-C", str(repo), "diff", "HEAD", "--", "src"], capture_output=True, check=False
    )
    digest.update(diff.stdout)
    listed = _command_output(
        ["git", "-C", str(repo), "ls-files", "--others", "--exclude-standard", "src"]
    )
    for name in sorted((listed or "").splitlines()):
        with contextlib.suppress(OSError):
            digest.update(name.encode() + b"\0" + (repo / name).read_bytes())
    return digest.hexdigest()[:12]


def machine_facts(redis_server: str, work: Path) -> dict[str, object]:
    """What the figures depend on: cores, CPU, kernel, disk, versions, our commit."""
    repo = Path(__file__).resolve().parents[2]
    commit = _command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    changes = _command_output(["git", "-C", str(repo), "status", "--porcelain", "src"])
    if commit and changes:
        commit += "+dirty"
    return {
        "src_changes_sha256": _src_fingerprint(repo) if changes else None,
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": sysinfo.snapshot(root="/").cpu.model or platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": _command_output([redis_server, "--version"]) or "unknown",
        "versions": {
            name: _version(name) for name in ("postoffice", "redis", "hiredis", "lmdb", "uvloop")
        },
        "git_commit": commit or "unknown",
        "work_dir_filesystem": (
            _command_output(["df", "--output=source,fstype", str(work)]) or "unknown"
        ).splitlines()[-1],
        "fdatasync_ms_median": fdatasync_ms(work),
        "python_loop_ms_at_start": python_loop_ms(),
        "loadavg_at_start": os.getloadavg(),
    }


# --- main ---------------------------------------------------------------------------------


def build_scenarios(clients: int, pipeline: int) -> list[Scenario]:
    """One request in flight per connection, then `pipeline` in flight per connection."""
    found = [Scenario(name=f"c{clients}", clients=clients, pipeline=1)]
    if pipeline > 1:
        found.append(Scenario(name=f"c{clients}-P{pipeline}", clients=clients, pipeline=pipeline))
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; see bench/store/README.md."""
    parser = argparse.ArgumentParser(
        description="Compare the store server with redis-server (AOF on) and the store "
        "engine with raw LMDB. Progress and a table go to stderr, one JSON object to stdout.",
    )
    add = parser.add_argument
    add("--part", action="append", choices=PARTS, help="run only this part (repeatable)")
    add("--rounds", type=int, default=DEFAULT_ROUNDS, help="paired rounds (default %(default)s)")
    add("--keys", type=int, default=DEFAULT_KEYS, help="keyspace, prefilled (default %(default)s)")
    add("--clients", type=int, default=DEFAULT_CLIENTS, help="connections (default %(default)s)")
    add(
        "--pipeline",
        type=int,
        default=DEFAULT_PIPELINE,
        help="requests in flight per connection in the second scenario; 1 skips it "
        "(default %(default)s)",
    )
    add(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help="seconds per client run (default %(default)s)",
    )
    add(
        "--rb-requests",
        type=int,
        default=DEFAULT_RB_REQUESTS,
        help="redis-benchmark -n per test without pipelining; with -P it is "
        f"{RB_PIPELINED_FACTOR} x this (default %(default)s)",
    )
    add(
        "--engine-keys",
        type=int,
        default=DEFAULT_ENGINE_KEYS,
        help="keys the engine part puts and gets (default %(default)s)",
    )
    add(
        "--engine-durable-keys",
        type=int,
        default=DEFAULT_ENGINE_DURABLE_KEYS,
        help="keys the engine part puts durably (default %(default)s)",
    )
    add(
        "--engine-threads",
        type=int,
        default=DEFAULT_ENGINE_THREADS,
        help="threads for the durable engine puts (default %(default)s)",
    )
    add(
        "--loop",
        choices=sorted(LOOPS),
        default="uvloop",
        help="event loop of both clients in the client part (default %(default)s)",
    )
    add("--work-dir", type=Path, default=None, help="parent of the temporary work dir")
    add(
        "--profile-dir",
        type=Path,
        default=None,
        help="after each phase's client rounds, profile our store server with py-spy "
        "during one extra run of each test and scenario; raw profiles go here",
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "keys", "clients", "pipeline", "rb_requests", "engine_keys"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.engine_durable_keys < 1 or args.engine_threads < 1 or args.seconds <= 0:
        parser.error("--engine-durable-keys, --engine-threads and --seconds must be positive")
    args.engine_durable_keys = min(args.engine_durable_keys, args.engine_keys)
    return args


def find_tools() -> tuple[str, str, str]:
    """Paths of redis-server, redis-benchmark and postoffice; exits 2 if one is missing."""
    redis_server = shutil.which("redis-server")
    redis_benchmark = shutil.which("redis-benchmark")
    if redis_server is None or redis_benchmark is None:
        missing = [
            name
            for name, path in (("redis-server", redis_server), ("redis-benchmark", redis_benchmark))
            if path is None
        ]
        _say(f"error: {' and '.join(missing)} not found on PATH; {INSTALL_HINT}")
        sys.exit(EXIT_MISSING_TOOL)
    beside = Path(sys.executable).parent / "postoffice"
    postoffice = str(beside) if beside.exists() else shutil.which("postoffice")
    if postoffice is None:
        _say("error: the postoffice command was not found; run `make setup` first")
        sys.exit(EXIT_MISSING_TOOL)
    return redis_server, redis_benchmark, postoffice


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into SystemExit so the finally blocks stop the servers.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def started(servers: list[Server]) -> Iterator[list[Server]]:
    """Stop (SIGTERM by pid) every server appended to `servers`, in reverse, on the way out."""
    try:
        yield servers
    finally:
        for server in reversed(servers):
            stop(server)


def run_phase(
    args: argparse.Namespace,
    tools: tuple[str, str, str],
    work: Path,
    phase: str,
    durability: str,
    appendfsync: str,
    keys: Sequence[bytes],
    with_rb: bool,
    with_rbe: bool,
) -> tuple[list[Run], dict[str, object]]:
    """Start one phase's servers, prefill them, run the client and redis-benchmark parts."""
    redis_server, redis_benchmark, postoffice = tools
    scenarios = build_scenarios(args.clients, args.pipeline)
    parts = args.part or PARTS
    runs: list[Run] = []
    profiles: dict[str, object] = {}
    began = time.monotonic()
    prefill_store(work / f"store-{durability}", keys)
    with started([]) as servers:
        servers.append(start_redis(work, redis_server, appendfsync))
        servers.append(start_store(work, postoffice, durability))
        redis_srv, store = servers
        prefill_redis(redis_srv.port, keys)
        took = time.monotonic() - began
        _say(f"{phase}: {redis_srv!r} and {store!r} hold {len(keys)} keys ({took:.1f} s)")
        if "client" in parts:
            ops = ("get", "put") if phase == "durable" else ("put",)
            for op in ops:
                for scenario in scenarios:
                    for round_no in range(1, args.rounds + 1):
                        for contender, server in (("redis", redis_srv), ("ours", store)):
                            run = client_run(
                                contender=contender,
                                server=server,
                                phase=phase,
                                op=op,
                                scenario=scenario,
                                keys=keys,
                                seconds=args.seconds,
                                round_no=round_no,
                                loop=args.loop,
                            )
                            runs.append(run)
                            _say(human_line(run))
            if args.profile_dir is not None:
                for scenario in scenarios:
                    profiles.update(
                        profile_store(
                            store,
                            keys,
                            scenario,
                            args.seconds,
                            args.profile_dir,
                            args.loop,
                            phase,
                            ops,
                        )
                    )
        if with_rb:
            command = start_command(work, postoffice, durability, store=store)
            servers.append(command)
            runs += rb_rounds(args, "rb", phase, redis_benchmark, redis_srv, [command, store], keys)
        if with_rbe:
            # The store directory is open in one process at a time: the store server and
            # the command server in front of it go first.
            for server in servers[1:]:
                stop(server)
            del servers[1:]
            store_dir = work / f"store-{durability}" / "store"
            command = start_command(work, postoffice, durability, store_dir=store_dir)
            servers.append(command)
            runs += rb_rounds(
                args, "rb-embedded", phase, redis_benchmark, redis_srv, [command], keys
            )
            if args.profile_dir is not None:
                profiles.update(
                    profile_rb(command, redis_benchmark, scenarios, args, phase, len(keys))
                )
    return runs, profiles


def rb_rounds(
    args: argparse.Namespace,
    part: str,
    phase: str,
    redis_benchmark: str,
    redis_srv: Server,
    ours: Sequence[Server],
    keys: Sequence[bytes],
) -> list[Run]:
    """redis-benchmark against redis, then against `ours[0]` (CPU summed over `ours`), for
    each scenario and round, after an untimed read of every key through each."""
    for server in (redis_srv, ours[0]):
        began = time.monotonic()
        warm_up(server, keys)
        _say(f"{part}: {server!r} read every key once ({time.monotonic() - began:.1f} s)")
    runs: list[Run] = []
    for scenario in build_scenarios(args.clients, args.pipeline):
        requests = args.rb_requests * (RB_PIPELINED_FACTOR if scenario.pipeline > 1 else 1)
        for round_no in range(1, args.rounds + 1):
            for contender, measured in (("redis", [redis_srv]), ("ours", list(ours))):
                argv = rb_argv(redis_benchmark, measured[0].port, scenario, requests, len(keys))
                for run in rb_run(
                    part=part,
                    contender=contender,
                    servers=measured,
                    phase=phase,
                    argv=argv,
                    scenario=scenario,
                    requests=requests,
                    round_no=round_no,
                ):
                    runs.append(run)
                    _say(human_line(run))
    return runs


def profile_rb(
    command: Server,
    redis_benchmark: str,
    scenarios: Sequence[Scenario],
    args: argparse.Namespace,
    phase: str,
    keyspace: int,
) -> dict[str, object]:
    """One extra, untimed redis-benchmark run per test (-t get, -t set) and scenario
    against the embedded command server, with py-spy attached to it."""
    out_dir: Path = args.profile_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, object] = {}
    for scenario in scenarios:
        requests = args.rb_requests * (RB_PIPELINED_FACTOR if scenario.pipeline > 1 else 1)
        for test in ("get", "set"):
            out = out_dir / f"command-embedded-{phase}-{test}-{scenario.name}.txt"
            argv = rb_argv(redis_benchmark, command.port, scenario, requests, keyspace, test)
            spy = _py_spy(command.pid, out, args.seconds)
            time.sleep(1.0)  # py-spy attaches
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:  # keep the load on for py-spy's whole window
                subprocess.run(argv, capture_output=True, timeout=RB_TIMEOUT_S, check=True)
            try:
                _, err = spy.communicate(timeout=args.seconds + 31)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            summary = summarise_profile(out)
            if spy.returncode != 0:
                summary["py_spy_error"] = err.decode(errors="replace")[-300:]
            found[f"command-embedded/{phase}/{test}/{scenario.name}"] = summary
            _say(f"profiled embedded command server {phase} {test} {scenario.name}: {out}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; progress and the table to stderr, one JSON object to stdout."""
    args = parse_args(argv)
    tools = find_tools()
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    parts = args.part or PARTS
    started_at = datetime.datetime.now(datetime.UTC)
    runs: list[Run] = []
    profiles: dict[str, object] = {}
    rb_status = "not asked for"
    if "rb" in parts:
        rb_status = "ran" if command_has_store_flag(tools[2]) else "skipped"
        if rb_status == "skipped":
            _say(
                "part rb skipped: `postoffice command serve --help` has no --store flag "
                "(the store-backed command server is not there yet)"
            )
    with_rb = rb_status == "ran"
    rbe_status = "not asked for"
    if "rb-embedded" in parts:
        rbe_status = "ran" if command_has_store_flag(tools[2], "--store-dir") else "skipped"
        if rbe_status == "skipped":
            _say("part rb-embedded skipped: `postoffice command serve --help` has no --store-dir")
    with_rbe = rbe_status == "ran"
    keys = make_keys(args.keys)
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.work_dir) as tmp_name:
        work = Path(tmp_name)
        machine = machine_facts(tools[0], work)
        try:
            if "client" in parts or with_rb or with_rbe:
                for phase, durability, appendfsync in PHASES:
                    found, profiled = run_phase(
                        args, tools, work, phase, durability, appendfsync, keys, with_rb, with_rbe
                    )
                    runs += found
                    profiles.update(profiled)
            if "engine" in parts:
                # The same keys for both, in one shuffled order: LMDB's B-tree and our
                # index see random inserts, as a server would.
                order = make_keys(args.engine_keys)
                random.Random(7).shuffle(order)
                durable = order[: args.engine_durable_keys]
                warmup = order[:ENGINE_WARMUP_KEYS]
                engine_round(work, warmup, warmup[:500], args.engine_threads, 0, quiet=True)
                for round_no in range(1, args.rounds + 1):
                    runs += engine_round(work, order, durable, args.engine_threads, round_no)
        except (BenchError, redis.RedisError, OSError) as exc:
            _say(f"error: {exc}")
            return EXIT_RUN_FAILED
    machine["python_loop_ms_at_end"] = python_loop_ms()
    rows = summarise(runs)
    _say("\n" + table(rows))
    result = {
        "benchmark": "store",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.datetime.now(datetime.UTC) - started_at).total_seconds(), 1),
        "parameters": {
            "argv": sys.argv[1:] if argv is None else list(argv),
            "parts": list(parts),
            "rb": rb_status,
            "rb_embedded": rbe_status,
            "rounds": args.rounds,
            "keys": args.keys,
            "value_bytes": VALUE_BYTES,
            "scenarios": [
                dataclasses.asdict(s) for s in build_scenarios(args.clients, args.pipeline)
            ],
            "seconds_per_client_run": args.seconds,
            "client_loop": args.loop,
            "rb_requests": args.rb_requests,
            "rb_pipelined_requests": args.rb_requests * RB_PIPELINED_FACTOR,
            "rb_command": "redis-benchmark -h 127.0.0.1 -p PORT -c C [-P P] -n N -r KEYS "
            "-d 100 -t set,get --csv",
            "engine_keys": args.engine_keys,
            "engine_durable_keys": args.engine_durable_keys,
            "engine_threads": args.engine_threads,
            "redis_server_flags": "--appendonly yes --appendfsync always|everysec "
            f"--auto-aof-rewrite-percentage 0 --save '' --maxclients {MAX_CONNECTIONS}",
            "store_server_flags": "--durability always|interval "
            f"--max-connections {MAX_CONNECTIONS} --log-level WARNING",
            "command_server_flags": "--no-metrics "
            f"--max-connections {MAX_CONNECTIONS} --log-level WARNING, then --store "
            "127.0.0.1:P (rb) or --store-dir D/store --durability always|interval "
            "(rb-embedded, on the store server's data dir once it is stopped)",
            "order": "per test, scenario and round: redis (or lmdb) then ours",
            "cpu_us_per_op": "server: utime+stime of the server process(es) over the timed "
            "window / ops; client: this process (client parts) or redis-benchmark; "
            "engine: this process",
            "latency": "client part: time of one request, or of one pipeline of P; "
            "rb part: redis-benchmark's p50/p99",
        },
        "machine": machine,
        "results": rows,
        "goals": goals(rows),
        "profiles": profiles,
        "runs": [dataclasses.asdict(run) for run in runs],
    }
    print(json.dumps(result, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
