"""The store benchmark's processes (redis-server, the store server, the command server),
their CPU time, and the prefill and warm-up of their data."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import final

import benchkit
import redis
from benchkit import (
    LOOPBACK,
    BenchError,
    Server,
    answers_ping,
    free_port,
    machine_busy_seconds,
    process_cpu_seconds,
    tail,
)
from common import (
    MAX_CONNECTIONS,
    PREFILL_BATCH,
    STARTUP_TIMEOUT_S,
    STOP_TIMEOUT_S,
    VALUE,
    VALUE_BYTES,
)

from postoffice.store import Put, Store


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
        f"log tail:\n{tail(server.log_path)}"
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
    """SIGTERM the server by pid, then SIGKILL it after STOP_TIMEOUT_S."""
    benchkit.stop(server, STOP_TIMEOUT_S)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a whole process (all its threads), in seconds.

    Raises BenchError when the process is gone.
    """
    user, system = process_cpu_seconds(pid)
    return user + system


def own_cpu_seconds() -> float:
    """CPU time of this process (the client, or the engine part), all threads."""
    return time.process_time()


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
