"""Rapid connect and disconnect, and sustained load, against the real servers: every
connection's descriptor is given back, and memory stops growing once warm.

Each churn round opens many short connections that end every way a client ends: closed
at once, closed mid-request, closed without reading the answer, and reset (RST). Memory
is read from /proc (VmRSS) between rounds of the same work; a leak of even a few hundred
bytes per connection or per request would add megabytes over the measured rounds.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from postoffice.core.framing import FrameDecoder
from postoffice.ingest.messages import Ack
from postoffice.ingest.protocol import NEED_DATA as INGEST_NEED_DATA
from postoffice.ingest.protocol import MessageDecoder
from postoffice.store.wire import (
    NEED_DATA,
    GetRequest,
    PutRequest,
    Status,
    decode_response,
    encode_request,
)
from tests.integration.conftest import ServerProcess
from tests.integration.rawclient import RawClient
from tests.integration.test_ingest import Ingest, exchange, raw_chunk, zstd_pieces

# 5,600 connections a test, CPU-bound: on a 2-core runner shared with parallel tests a
# round takes several times as long as alone, so the bound is wider than the default.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Serve = Callable[..., ServerProcess]
BASE = ("--port", "0", "--metrics-port", "0")
#: Connections per round, and rounds: a warm-up, then the measured ones.
PER_ROUND = 800
WARM_ROUNDS = 3
MEASURED_ROUNDS = 4
#: Growth allowed over the measured rounds (3,200 connections and about 30,000 requests):
#: a leak of 700 bytes a connection, or 75 a request, would pass it.
MAX_GROWTH_BYTES = 2 << 20


def open_sockets(pid: int) -> int:
    """Sockets the process holds: connections and listeners, not the files a store maps
    as it goes (a segment's map holds a descriptor of its own once reads reach it)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:  # closed while listed
            pass
    return count


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def settle(what: str, check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


#: Whether the bytes read so far hold the whole answer to one client's request.
Answered = Callable[[bytes], bool]


def one_client(port: int, n: int, request: bytes, answered: Answered) -> None:
    """One short connection; how it ends depends on `n`."""
    with RawClient.connect(port) as client:
        match n % 4:
            case 0:  # a whole exchange, then a polite close
                client.send(request)
                client.read_until_done(answered)
            case 1:  # gone mid-request
                client.send(request[: len(request) // 2])
            case 2:  # sends, never reads the answer
                client.send(request)
            case _:  # reset: SO_LINGER 0 makes close() send RST
                client.send(request)
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def churn(port: int, request: bytes, answered: Answered, count: int) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in pool.map(lambda n: one_client(port, n, request, answered), range(count)):
            pass


def rounds_of_churn(server: ServerProcess, request: bytes, answered: Answered) -> None:
    """Warm up, then check that descriptors come back and memory levels off."""
    pid = server.proc.pid
    one_client(server.port, 0, request, answered)  # opens what the work itself needs
    baseline_sockets = open_sockets(pid)
    sizes: list[int] = []
    for _ in range(WARM_ROUNDS + MEASURED_ROUNDS):
        churn(server.port, request, answered, PER_ROUND)
        settle("every connection to be closed", lambda: open_sockets(pid) <= baseline_sockets)
        sizes.append(rss_bytes(pid))
    warm = sizes[WARM_ROUNDS - 1]
    growth = max(sizes[WARM_ROUNDS:]) - warm
    assert growth < MAX_GROWTH_BYTES, f"RSS per round (KiB): {[s >> 10 for s in sizes]}"


#: Ten commands, one of every kind of answer; the last one's reply ends the answer.
COMMANDS = (
    b"PING\r\n"
    b"*2\r\n$4\r\nECHO\r\n$1000\r\n" + b"e" * 1000 + b"\r\n"
    b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$5\r\nchurn\r\n"
    b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n"
    b"*1\r\n$4\r\nNOPE\r\n"
    b"*1\r\n$4\r\nECHO\r\n"
    b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n"
    b"*1\r\n$4\r\nTIME\r\n"
    b"*2\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$7\r\ntimeout\r\n"
    b"*2\r\n$4\r\nPING\r\n$3\r\nend\r\n"
)


def test_command_server_churn_and_load_leak_nothing(serve: Serve) -> None:
    server = serve("command", *BASE, "--max-connections", "5000")
    rounds_of_churn(server, COMMANDS, lambda got: got.endswith(b"$3\r\nend\r\n"))
    with RawClient.connect(server.port) as after:
        after.send(b"PING\r\n")
        assert after.read_exactly(7) == b"+PONG\r\n"  # and it goes on serving


def store_answered(count: int) -> Answered:
    def answered(got: bytes) -> bool:
        frames = FrameDecoder()
        frames.feed(got)
        seen = 0
        while frames.next_event() is not NEED_DATA:
            seen += 1
        return seen >= count

    return answered


def test_store_server_churn_and_load_leak_nothing(serve: Serve, tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "var"), "--durability", "never"]
    server = serve("store", *BASE, *data, "--max-connections", "5000")
    value = b"v" * 100
    request = b"".join(
        encode_request(PutRequest(key=b"churn:%d" % i, value=value), 2 * i + 1)
        + encode_request(GetRequest(key=b"churn:%d" % i), 2 * i + 2)
        for i in range(5)
    )
    rounds_of_churn(server, request, store_answered(10))
    with RawClient.connect(server.port) as after:
        after.send(encode_request(GetRequest(key=b"churn:4"), 1))
        got = after.read_until_done(store_answered(1))
        frames = FrameDecoder()
        frames.feed(got)
        frame = frames.next_event()
        assert frame is not NEED_DATA
        response = decode_response(frame)
        assert (response.status, response.body) == (Status.OK, value)


def ingest_answered(got: bytes) -> bool:
    decoder = MessageDecoder()
    decoder.feed(got)
    return decoder.next_event() is not INGEST_NEED_DATA


def test_ingest_data_port_churn_and_load_leak_nothing(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path, x=1)
    server = serve("ingest", *ingest.args())
    pieces, size = zstd_pieces(2)
    # The first chunk of an upload that never completes: stored once, then every resend
    # is the idempotent ACK, so the work repeats without adding state.
    chunk = raw_chunk(b"churn-upload-id1", 0, 2, pieces[0], size=size)
    data_port = ServerProcess(
        proc=server.proc,
        listeners={"data": ("127.0.0.1", ingest.data_base)},
        log_path=server.log_path,
    )
    rounds_of_churn(data_port, chunk, ingest_answered)
    reply = exchange(ingest.data_base, chunk, 1)
    assert len(reply) == 1
    assert isinstance(reply[0][1], Ack)
