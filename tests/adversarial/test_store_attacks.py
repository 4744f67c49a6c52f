"""Attacks on the store's own work: SCANs over large values, keys made to share one index
bucket, BATCHes of 10,000 ops, STATS in a tight loop, and floods of the metrics port
under its own flags.

Each runs a real `postoffice store serve` and checks the attacker gets what
docs/security.md states while another client goes on being served.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postoffice.core.framing import FrameDecoder
from postoffice.core.runtime import raise_fd_limit
from postoffice.store import Client
from postoffice.store.wire import (
    NEED_DATA,
    BatchRequest,
    PutRequest,
    ScanRequest,
    StatsRequest,
    Status,
    decode_response,
    encode_request,
)
from tests.integration.conftest import ServerProcess, start_server

# Each attack is checked against another client's latency (served_within): alone, so no
# parallel test's load counts against the server.
pytestmark = pytest.mark.alone


MIB = 1024 * 1024
#: Keys this long that start alike share one LMDB bucket (the index keeps the first 448
#: bytes as the bucket's key).
SHARED = b"s" * 448


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    raise_fd_limit()
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.stop()


def store(started: list[ServerProcess], tmp_path: Path, *extra: str) -> ServerProcess:
    server = start_server(
        tmp_path,
        "store",
        *("--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "var")),
        *extra,
    )
    started.append(server)
    return server


def status_kib(server: ServerProcess, field: str) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def served_within(port: int, seconds: float) -> float:
    """Another client's PUT and GET round trip; returns how long it took."""
    began = time.monotonic()
    with Client("127.0.0.1", port, timeout_s=10) as other:
        other.put(b"other", b"fine")
        assert other.get(b"other") == b"fine"
    took = time.monotonic() - began
    assert took < seconds, f"another client waited {took:.2f} s"
    return took


def raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


@pytest.mark.timeout(60)
def test_scans_over_large_values_read_one_page_each(
    started: list[ServerProcess], tmp_path: Path
) -> None:
    """Before: each SCAN read `limit` + 1 values before cutting the page by bytes: 24 MiB a
    call here, whatever the page sent."""
    server = store(started, tmp_path, "--durability", "never")
    with Client("127.0.0.1", server.port) as loader:
        for i in range(24):
            loader.put(b"big%02d" % i, bytes([65 + i]) * MIB)
    time.sleep(0.5)  # let the loads' buffers go before the high-water mark is taken
    before = status_kib(server, "VmHWM")
    scan = encode_request(ScanRequest(prefix=b"big", limit=10_000), 1)
    with contextlib.closing(raw(server.port)) as attacker:
        for _ in range(30):
            attacker.sendall(scan)
            assert last_reply_count(attacker, 1) == (1, False)
        served_within(server.port, 2.0)
    grown_mib = (status_kib(server, "VmHWM") - before) / 1024
    assert grown_mib < 12, f"peak memory grew {grown_mib:.0f} MiB"  # a page is 1 MiB


def last_reply_count(sock: socket.socket, count: int) -> tuple[int, bool]:
    """Read until `count` replies came, all OK, or the server closed (10 s at most);
    return how many came, and whether it closed."""
    frames = FrameDecoder()
    got = 0
    deadline = time.monotonic() + 10
    while got < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            block = sock.recv(1 << 20)
        except (ConnectionResetError, TimeoutError):
            return got, True
        if not block:
            return got, True
        frames.feed(block)
        while (event := frames.next_event()) is not NEED_DATA:
            assert not isinstance(event, type(NEED_DATA))
            reply = decode_response(event)
            assert reply.status is Status.OK, reply
            got += 1
    return got, False


@pytest.mark.timeout(90)
def test_keys_made_to_share_one_index_bucket_leave_the_store_serving_and_stopping(
    started: list[ServerProcess], tmp_path: Path
) -> None:
    """Before: a flush wrote such keys one by one, decoding and re-encoding the whole bucket
    each time; 16,400 of them kept the index flushing for many minutes, and the store
    could not stop (its close waits for the flush)."""
    server = store(started, tmp_path, "--durability", "never")
    with Client("127.0.0.1", server.port, timeout_s=30) as attacker:
        for n in range(0, 16_400, 1000):
            ops = [
                PutRequest(key=SHARED + b"%08d" % i + b"k" * 500, value=b"v")
                for i in range(n, min(n + 1000, 16_400))
            ]
            attacker.batch(ops)
        served_within(server.port, 2.0)
        stats = attacker.stats()
        assert stats["engine_keys"] == 16_401  # and the other client's key
    began = time.monotonic()
    assert server.stop(timeout_s=20) == 0, server.log()
    assert time.monotonic() - began < 15
    again = store(started, tmp_path, "--durability", "never")
    with Client("127.0.0.1", again.port) as reader:
        assert reader.get(SHARED + b"%08d" % 16_399 + b"k" * 500) == b"v"
        page = reader.scan(prefix=SHARED, limit=3)
        assert len(page.items) == 3


@pytest.mark.timeout(60)
def test_batches_of_ten_thousand_ops_and_a_stats_loop_leave_others_served(
    started: list[ServerProcess], tmp_path: Path
) -> None:
    server = store(started, tmp_path)
    value = b"x" * 1500  # 10,000 ops of 1.5 KiB: a frame of about 15.6 MiB
    batch = BatchRequest(
        ops=tuple(PutRequest(key=b"b%05d" % i, value=value) for i in range(10_000))
    )
    wire = encode_request(batch, 1)
    stats_loop = b"".join(encode_request(StatsRequest(), i) for i in range(1, 2001))
    with contextlib.ExitStack() as stack:
        batcher = stack.enter_context(contextlib.closing(raw(server.port)))
        stater = stack.enter_context(contextlib.closing(raw(server.port)))
        worst = 0.0
        for _ in range(4):
            batcher.sendall(wire)
            stater.sendall(stats_loop)
            worst = max(worst, served_within(server.port, 2.0))
            assert last_reply_count(batcher, 1) == (1, False)
            assert last_reply_count(stater, 2000) == (2000, False)
    with Client("127.0.0.1", server.port) as other:
        assert other.get(b"b09999") == value
        assert other.stats()["requests_batch"] == 4


@pytest.mark.timeout(60)
def test_the_metrics_port_keeps_the_limits_of_its_flags(
    started: list[ServerProcess], tmp_path: Path
) -> None:
    server = store(started, tmp_path, "--http-max-connections", "8", "--http-request-timeout", "1")
    _, metrics_port = server.listeners["metrics"]
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(contextlib.closing(raw(metrics_port))) for _ in range(8)]
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")  # a head never finished
        extra = stack.enter_context(contextlib.closing(raw(metrics_port)))
        assert extra.recv(64).startswith(b"HTTP/1.1 503 Service Unavailable")
        served_within(server.port, 2.0)
        held[0].settimeout(5)
        began = time.monotonic()
        assert held[0].recv(64).startswith(b"HTTP/1.1 408 Request Timeout")
        assert time.monotonic() - began < 4
