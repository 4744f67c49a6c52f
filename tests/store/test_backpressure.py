"""The store server against a client that does not read its replies, trickles its
requests or asks for huge SCAN pages: what it executes, what it answers, what it holds.

In-process over a fake transport and a fake clock, on a real engine in a temporary
directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postoffice.core.clock import FakeClock
from postoffice.core.framing import FrameDecoder
from postoffice.store.config import StoreConfig
from postoffice.store.engine import Store
from postoffice.store.server import StoreConnection, StoreServer
from postoffice.store.wire import (
    CONNECTION_REPLY_ID,
    NEED_DATA,
    GetRequest,
    PutRequest,
    Response,
    ScanRequest,
    Status,
    decode_response,
    decode_scan_body,
    encode_request,
)
from tests.core.test_client_limits import UnreadTransport

MIB = 1024 * 1024
VALUE = b"v" * MIB


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "store", durability="never")
    try:
        yield store
    finally:
        store.close()


def serve(tmp_path: Path, engine: Store, **settings: Any) -> tuple[StoreServer, FakeClock]:
    """A server on `engine` (opened by the test) with `settings` over the defaults."""
    clock = FakeClock()
    config = StoreConfig(
        port=0, metrics_port=None, data_dir=tmp_path, durability="never", **settings
    )
    server = StoreServer(config, clock=clock)
    server.store = engine
    return server, clock


def connect(server: StoreServer) -> tuple[StoreConnection, UnreadTransport]:
    conn = StoreConnection(server)
    transport = UnreadTransport(conn)
    conn.connection_made(transport)
    return conn, transport


def replies(data: bytes | bytearray) -> list[Response]:
    frames = FrameDecoder()
    frames.feed(data)
    out: list[Response] = []
    while (event := frames.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        out.append(decode_response(event))
    return out


def gets(count: int) -> bytes:
    return b"".join(encode_request(GetRequest(key=b"big"), i) for i in range(1, count + 1))


async def test_gets_whose_replies_cannot_be_written_are_not_executed(
    tmp_path: Path, engine: Store
) -> None:
    engine.put(b"big", VALUE)
    server, _ = serve(tmp_path, engine)
    conn, transport = connect(server)
    before = engine.stats().gets
    conn.data_received(gets(1000))  # one read; the peer reads nothing
    executed = engine.stats().gets - before
    assert transport.paused
    assert executed == 1  # the first reply passed the high-water mark: nothing more ran
    assert transport.unsent < 2 * MIB
    assert conn.requests == 1000  # all were read, and wait unexecuted


async def test_held_back_requests_run_as_the_peer_reads_and_keep_their_order(
    tmp_path: Path, engine: Store
) -> None:
    engine.put(b"big", VALUE)
    server, _ = serve(tmp_path, engine)
    conn, transport = connect(server)
    conn.data_received(gets(20))
    got: list[Response] = []
    for _ in range(100):
        if len(got) == 20:
            break
        data = bytes(transport.written)
        transport.drain()
        got += replies(data)
    assert [(r.request_id, r.status, len(r.body)) for r in got] == [
        (i, Status.OK, MIB) for i in range(1, 21)
    ]
    assert conn.cycle.name == "READING_HEADER"


async def test_a_peer_that_never_reads_is_closed_by_the_soft_limit(
    tmp_path: Path, engine: Store
) -> None:
    engine.put(b"big", b"v" * (3 * MIB))
    server, clock = serve(
        tmp_path, engine, output_soft_limit_bytes=2 * MIB, output_soft_limit_s=5.0
    )
    conn, transport = connect(server)
    conn.data_received(gets(1000))
    clock.advance(6)
    server.manager.sweep()
    assert transport.aborted
    assert server.snapshot()["connections_output_limited"] == 1


async def test_a_scan_page_stops_before_its_byte_budget(tmp_path: Path, engine: Store) -> None:
    for i in range(10):
        engine.put(b"k%d" % i, b"x" * 100_000)
    server, _ = serve(tmp_path, engine, max_scan_page_bytes=250_000)
    conn, transport = connect(server)
    conn.data_received(encode_request(ScanRequest(limit=10), 1))
    (reply,) = replies(transport.written)
    page = decode_scan_body(reply.body)
    assert [key for key, _ in page.items] == [b"k0", b"k1"]  # a third would pass 250,000
    assert page.more


async def test_a_scan_page_holds_its_first_item_whatever_the_budget(
    tmp_path: Path, engine: Store
) -> None:
    engine.put(b"a", b"x" * 100_000)
    server, _ = serve(tmp_path, engine, max_scan_page_bytes=1024)
    conn, transport = connect(server)
    conn.data_received(encode_request(ScanRequest(limit=10), 1))
    (reply,) = replies(transport.written)
    page = decode_scan_body(reply.body)
    assert [key for key, _ in page.items] == [b"a"]
    assert not page.more


async def test_a_request_trickled_past_the_deadline_is_refused_busy(
    tmp_path: Path, engine: Store
) -> None:
    server, clock = serve(tmp_path, engine, request_timeout_s=10.0, idle_timeout_s=0)
    conn, transport = connect(server)
    wire = encode_request(PutRequest(key=b"k", value=b"v" * 100), 1)
    for byte in range(12):  # a byte a second
        conn.data_received(wire[byte : byte + 1])
        clock.advance(1)
        server.manager.sweep()
    (reply,) = replies(transport.written)
    assert (reply.request_id, reply.status) == (CONNECTION_REPLY_ID, Status.BUSY)
    assert reply.body == b"request not received whole within 10 s"
    assert transport.closed
    assert server.snapshot()["connections_request_timeout"] == 1


async def test_partial_requests_over_the_budget_are_refused_busy(
    tmp_path: Path, engine: Store
) -> None:
    server, _ = serve(tmp_path, engine, max_partial_bytes=3 * MIB)
    first, _ = connect(server)
    second, transport = connect(server)
    big = encode_request(PutRequest(key=b"k", value=b"v" * (4 * MIB)), 1)
    first.data_received(big[: 2 * MIB])
    second.data_received(big[: 2 * MIB])
    (reply,) = replies(transport.written)
    assert (reply.request_id, reply.status) == (CONNECTION_REPLY_ID, Status.BUSY)
    assert reply.body == b"server busy: partial requests would hold more than 3145728 bytes"
    assert not first.closing
    assert server.snapshot()["partial_request_bytes"] == 2 * MIB
