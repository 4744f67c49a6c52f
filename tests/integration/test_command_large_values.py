"""Values of 64 KiB to 1 MiB through real command servers (embedded and remote, with
several store connections), redis-py as the client: the large-bulk parser path and
the writes of values from where they lie (segment maps, store responses)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Serve = Callable[..., ServerProcess]
SIZES = (64 * 1024, 200_000, 1 << 20)


def _client(server: ServerProcess) -> redis.Redis:
    host, port = server.listeners["command"]
    return redis.Redis(host=host, port=port, socket_timeout=20)


def _value(n: int, size: int) -> bytes:
    return (b"%08d" % n) * (size // 8) + b"x" * (size % 8)


def _round_trip(r: redis.Redis, count: int) -> None:
    """Many large values, pipelined, enough to fill more than one log segment: each read
    back (pipelined too) whole and in order."""
    written: dict[bytes, bytes] = {}
    pipe = r.pipeline(transaction=False)
    for n in range(count):
        key = b"k%d" % n
        written[key] = _value(n, SIZES[n % len(SIZES)])
        pipe.set(key, written[key])
    assert pipe.execute() == [True] * count
    pipe = r.pipeline(transaction=False)
    for key in written:
        pipe.get(key)
    assert pipe.execute() == list(written.values())
    for key in list(written)[:5]:  # unpipelined: the connection's shorter way
        assert r.get(key) == written[key]


def test_large_values_round_trip_embedded(serve: Serve, tmp_path: Path) -> None:
    server = serve(
        "command", "--port", "0", "--metrics-port", "0", "--store-dir", str(tmp_path / "s")
    )
    _round_trip(_client(server), 150)  # about 64 MiB: a log segment full
    _round_trip(_client(server), 150)  # the first segment now sealed: GETs from its map


def test_large_values_round_trip_remote_with_two_store_connections(
    serve: Serve, tmp_path: Path
) -> None:
    store = serve("store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path))
    server = serve(
        "command",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--store",
        f"127.0.0.1:{store.port}",
        "--store-connections",
        "2",
    )
    r = _client(server)
    deadline = time.monotonic() + 15
    while r.info("keyspace")["store_connected"] != 1:
        assert time.monotonic() < deadline, "the command server never reached the store"
        time.sleep(0.02)
    _round_trip(r, 60)


def test_announced_large_bulks_count_against_the_partial_budget(
    serve: Serve, tmp_path: Path
) -> None:
    """A bulk's buffer is allocated at its header: clients that announce 4 MiB and send a
    few bytes are charged 4 MiB each, so a 10 MiB budget takes two and refuses the rest."""
    mib = 1 << 20
    server = serve(
        "command",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--store-dir",
        str(tmp_path / "s"),
        "--max-partial-size",
        str(10 * mib),
    )
    host, port = server.listeners["command"]
    head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (4 * mib) + b"v" * 100
    answers: list[bytes] = []
    socks: list[socket.socket] = []
    try:
        for _ in range(4):
            sock = socket.create_connection((host, port), timeout=5)
            socks.append(sock)
            sock.sendall(head)
            sock.settimeout(1.0)
            try:
                answers.append(sock.recv(4096))
            except TimeoutError:
                answers.append(b"")  # held, waiting for the rest
        assert answers[:2] == [b"", b""]
        assert (
            answers[2:]
            == [b"-ERR server busy: partial requests would hold more than 10485760 bytes\r\n"] * 2
        )
        assert _client(server).ping() is True  # the server serves others meanwhile
    finally:
        for sock in socks:
            sock.close()
