"""Fixtures that run real server processes on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
import redis

from postoffice.command.config import CommandConfig
from postoffice.core.runtime import raise_fd_limit
from postoffice.ingest.config import IngestConfig
from postoffice.store.config import StoreConfig

POSTOFFICE = [sys.executable, "-c", "from postoffice.cli import main; main()"]
READY_TIMEOUT_S = 20.0

#: The tests that start an office run as processes: each run makes a `po-office-*`
#: directory in /dev/shm, and tests/integration/test_office_processes.py checks that no
#: run leaves one behind by comparing the whole of /dev/shm before and after. Under
#: pytest-xdist (`--dist loadgroup`) this group runs on one worker, one test at a time.
OFFICE_SHM = pytest.mark.xdist_group("office-shm")


def _default_ports() -> frozenset[int]:
    """The ports a server binds when no flag, file or variable names one (a port base
    with the ports above it)."""
    found: set[int] = set()
    for config in (CommandConfig, StoreConfig, IngestConfig):
        for each in dataclasses.fields(config):
            default = each.default
            if type(default) is not int or default <= 0:
                continue
            if each.name.endswith("port"):
                found.add(default)
            elif each.name.endswith("_base"):
                found.update(range(default, default + 16))
    return frozenset(found)


#: A test server on one of these would collide with a parallel test's, or with a server a
#: developer runs: start_server refuses it, naming the listener to give port 0.
DEFAULT_PORTS: Final = _default_ports()


@dataclass
class ServerProcess:
    """A running `postoffice ... serve` child and where it listens."""

    proc: subprocess.Popen[bytes]
    listeners: dict[str, tuple[str, int]]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return next(iter(self.listeners.values()))[1]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait, and return the exit code (SIGKILL if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(tmp_path: Path, service: str, *args: str) -> ServerProcess:
    """Start `postoffice <service> serve ARGS` and wait until its ready file appears."""
    ready = tmp_path / f"{service}-{time.monotonic_ns()}.ready.json"
    log_path = ready.with_suffix(".log")
    argv = [*POSTOFFICE, service, "serve", "--ready-file", str(ready), *args]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env_without_postoffice(),
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None:  # the ready file, if any, was written before the exit
            if ready.exists():
                break
            raise AssertionError(f"server exited {proc.returncode}: {log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"server not ready in time: {log_path.read_text()}")
        time.sleep(0.02)
    info = json.loads(ready.read_text())
    if "error" in info:  # the server wrote why it could not start, and exits
        try:
            proc.wait(READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise AssertionError(f"server failed to start: {info['error']}: {log_path.read_text()}")
    listeners = {k: (v[0], int(v[1])) for k, v in info["listeners"].items()}
    server = ServerProcess(proc=proc, listeners=listeners, log_path=log_path, args=list(args))
    fixed = {name: port for name, (_, port) in listeners.items() if port in DEFAULT_PORTS}
    if fixed:
        server.stop()
        raise AssertionError(
            f"{service} listens on its default ports {fixed}: tests run in parallel, so give "
            "each listener port 0 (--port 0, --metrics-port 0) or turn it off (--no-metrics)"
        )
    return server


@pytest.fixture(scope="session", autouse=True)
def _enough_descriptors() -> None:
    raise_fd_limit()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers on demand; every one is stopped when the test ends."""
    started: list[ServerProcess] = []

    def _serve(service: str, *args: str) -> ServerProcess:
        server = start_server(tmp_path, service, *args)
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()


def env_without_postoffice() -> dict[str, str]:
    """The environment minus POSTOFFICE_* settings, so a developer's shell cannot leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("POSTOFFICE_")}


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free right now.

    The block lies below the kernel's ephemeral range, so the clients' own outgoing
    connections can never take a port a server binds later (a growing data-port range).
    """
    import random
    import socket

    rng = random.Random()
    high = max(_ephemeral_low(), 12000)
    for _ in range(200):
        base = rng.randrange(10000, high - count)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError(f"no block of {count} free ports found")


def run_redis_benchmark_set_get(port: int, r: redis.Redis) -> None:
    """Drive a keyspace-backed command server with redis-benchmark SET/GET (20 clients,
    pipelined by 4, 500 keys of 100 bytes) and check it answered without errors and kept
    the values; `r` is a redis-py client of the same server."""
    done = subprocess.run(
        [
            "redis-benchmark",
            *("-p", str(port), "-t", "set,get", "-n", "4000", "-c", "20", "-r", "500"),
            *("-d", "100", "-q", "-P", "4"),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    out = done.stdout.decode()
    assert "SET:" in out, out
    assert "GET:" in out, out
    assert "ERR" not in out
    assert "error" not in done.stderr.decode().lower()
    assert 0 < r.dbsize() <= 500
    key = next(iter(r.scan_iter(match="key:*")))
    assert len(r.get(key) or b"") == 100
