"""Attacks on what a client may cost the connection layer and the store: replies never
read, requests trickled or left half-sent, and a flood of idle HTTP connections.

Each runs a real `postoffice store serve` and checks the attacker gets the refusal
docs/security.md states while another client goes on being served.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postoffice.core.framing import FrameDecoder
from postoffice.core.runtime import raise_fd_limit
from postoffice.store import Client
from postoffice.store.wire import (
    CONNECTION_REPLY_ID,
    NEED_DATA,
    GetRequest,
    PutRequest,
    Response,
    Status,
    decode_response,
    encode_request,
)
from tests.integration.conftest import ServerProcess, start_server

Serve = Callable[..., ServerProcess]
MIB = 1024 * 1024


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start servers on demand (tests/integration/conftest.py's start_server); every one
    is stopped when the test ends."""
    raise_fd_limit()
    started: list[ServerProcess] = []

    def _serve(service: str, *args: str) -> ServerProcess:
        server = start_server(tmp_path, service, *args)
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()


def store(serve: Serve, tmp_path: Path, *extra: str) -> ServerProcess:
    return serve(
        "store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "var"), *extra
    )


def rss_mib(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def raw(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # a small window: the server's replies back up at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def last_reply(sock: socket.socket, timeout_s: float) -> tuple[list[Response], bool]:
    """Every reply until the server closes (True) or `timeout_s` passes (False)."""
    frames = FrameDecoder()
    out: list[Response] = []
    deadline = time.monotonic() + timeout_s
    closed = False
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            block = sock.recv(1 << 16)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not block:
            closed = True
            break
        frames.feed(block)
        while (event := frames.next_event()) is not NEED_DATA:
            assert not isinstance(event, type(NEED_DATA))
            out.append(decode_response(event))
    return out, closed


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def served(port: int) -> None:
    """Another client is served: a PUT and its GET."""
    with Client("127.0.0.1", port, timeout_s=10) as other:
        other.put(b"other", b"fine")
        assert other.get(b"other") == b"fine"


def wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.timeout(60)
def test_unread_gets_hold_bounded_memory_that_comes_back(serve: Serve, tmp_path: Path) -> None:
    """Before: 1,000 unread GETs of a 1 MiB value took the store from 45 MB to 2 GB."""
    server = store(serve, tmp_path)
    with Client("127.0.0.1", server.port) as setup:
        setup.put(b"big", b"v" * MIB)
    base = rss_mib(server)
    gets = b"".join(encode_request(GetRequest(key=b"big"), i) for i in range(1, 1001))
    peak = base
    with sockets() as attackers:
        for _ in range(8):
            sock = raw(server.port, rcvbuf=4096)
            sock.sendall(gets)
            attackers.append(sock)
        for _ in range(10):  # a second and a half of attack, sampled
            time.sleep(0.15)
            peak = max(peak, rss_mib(server))
        served(server.port)
    assert peak - base < 80, f"rss went from {base:.0f} to {peak:.0f} MiB"
    assert wait_for(lambda: rss_mib(server) - base < 24, 10), (
        f"rss {rss_mib(server):.0f} MiB after the attackers left, {base:.0f} before"
    )


@pytest.mark.timeout(60)
def test_a_client_that_never_reads_is_closed_by_the_output_limit(
    serve: Serve, tmp_path: Path
) -> None:
    server = store(serve, tmp_path, "--output-soft-limit", str(MIB), "--output-soft-seconds", "1")
    with Client("127.0.0.1", server.port) as setup:
        setup.put(b"big", b"v" * (2 * MIB))
    gets = b"".join(encode_request(GetRequest(key=b"big"), i) for i in range(1, 201))
    with sockets() as attackers:
        for _ in range(4):
            sock = raw(server.port, rcvbuf=4096)
            sock.sendall(gets)
            attackers.append(sock)
        served(server.port)
        time.sleep(2.5)  # past the soft limit's second, and a sweep
        for sock in attackers:
            _, closed = last_reply(sock, 10)
            assert closed  # dropped: whatever it reads, the stream ends
    with Client("127.0.0.1", server.port) as other:
        stats = other.stats()
    assert stats["connections_output_limited"] == 4
    served(server.port)


@pytest.mark.timeout(60)
def test_trickled_requests_time_out_and_free_their_slots(serve: Serve, tmp_path: Path) -> None:
    """Before: 50 connections trickling a frame at a byte a second held every slot."""
    server = store(serve, tmp_path, "--request-timeout", "2", "--max-connections", "51")
    wire = encode_request(PutRequest(key=b"slow", value=b"v" * 100), 1)
    with sockets() as attackers:
        for _ in range(50):
            attackers.append(raw(server.port))
        for byte in range(4):  # a byte a second from each, for up to 4 s
            for sock in attackers:
                with contextlib.suppress(OSError):
                    sock.send(wire[byte : byte + 1])
            if byte == 1:
                served(server.port)  # the 51st slot serves during the attack
            time.sleep(1)
        for sock in attackers:
            replies, closed = last_reply(sock, 5)
            assert closed
            assert [(r.request_id, r.status, r.body) for r in replies] == [
                (CONNECTION_REPLY_ID, Status.BUSY, b"request not received whole within 2 s")
            ]
    served(server.port)  # the slots are free again
    with Client("127.0.0.1", server.port) as other:
        assert other.stats()["connections_request_timeout"] == 50


@pytest.mark.timeout(60)
def test_half_sent_frames_past_the_budget_are_refused(serve: Serve, tmp_path: Path) -> None:
    """Before: 40 connections each holding 15 MiB of a 16 MiB frame cost 600 MB."""
    server = store(serve, tmp_path, "--max-partial-size", str(8 * MIB))
    frame = encode_request(PutRequest(key=b"k", value=b"v" * (4 * MIB)), 1)
    with sockets() as attackers:
        refused = 0
        for _ in range(6):
            sock = raw(server.port)
            attackers.append(sock)
            with contextlib.suppress(OSError):
                sock.sendall(frame[: 3 * MIB])
            replies, closed = last_reply(sock, 1.0)
            if closed:
                refused += 1
                assert [(r.request_id, r.status) for r in replies] == [
                    (CONNECTION_REPLY_ID, Status.BUSY)
                ]
                assert replies[0].body == (
                    b"server busy: partial requests would hold more than 8388608 bytes"
                )
        assert refused == 4  # two 3 MiB halves fit 8 MiB, a third does not
        served(server.port)
        with Client("127.0.0.1", server.port) as other:
            stats = other.stats()
        held = stats["partial_request_bytes"]
        assert isinstance(held, int)
        assert 6 * MIB <= held <= 8 * MIB  # the two halves, and never past the budget
        assert stats["connections_partial_refused"] == 4


@pytest.mark.timeout(60)
def test_a_flood_of_idle_http_connections_leaves_the_store_serving(
    serve: Serve, tmp_path: Path
) -> None:
    """Before: 20,000 idle connections to the metrics port took the store's port down."""
    server = store(serve, tmp_path)
    host, metrics_port = server.listeners["metrics"]
    with sockets() as flood:
        for _ in range(700):
            flood.append(raw(metrics_port))
        served(server.port)
        refused = 0
        for sock in flood[512:]:  # the ones past the limit were answered and closed
            sock.settimeout(5)
            head = sock.recv(64)
            if head.startswith(b"HTTP/1.1 503 Service Unavailable"):
                refused += 1
        assert refused == 700 - 512

    def healthy() -> bool:
        probe = http.client.HTTPConnection(host, metrics_port, timeout=5)
        try:
            probe.request("GET", "/healthz")
            return probe.getresponse().status == 200
        except OSError:
            return False
        finally:
            probe.close()

    assert wait_for(healthy, 10)  # the flood's slots are free once it goes
    served(server.port)
