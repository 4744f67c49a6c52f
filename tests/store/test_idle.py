"""What idle means to the store server: no whole request and no reply for the timeout."""

from __future__ import annotations

from pathlib import Path

from postoffice.core.clock import FakeClock
from postoffice.store.config import StoreConfig
from postoffice.store.server import StoreConnection, StoreServer
from postoffice.store.wire import PingRequest, PutRequest, encode_request
from tests.fakes import FakeTransport

TIMEOUT_S = 5.0


def _connect(tmp_path: Path) -> tuple[StoreServer, StoreConnection, FakeTransport, FakeClock]:
    clock = FakeClock()
    config = StoreConfig(port=0, metrics_port=None, data_dir=tmp_path, idle_timeout_s=TIMEOUT_S)
    server = StoreServer(config, clock=clock)
    conn = StoreConnection(server)
    transport = FakeTransport(conn)
    conn.connection_made(transport)
    return server, conn, transport, clock


async def test_a_request_dripped_a_byte_at_a_time_counts_as_idle(tmp_path: Path) -> None:
    server, conn, transport, clock = _connect(tmp_path)
    wire = encode_request(PutRequest(key=b"slow", value=b"v" * 100), 1)
    sent = 0
    while sent < len(wire) and not transport.closed:
        conn.data_received(wire[sent : sent + 1])
        sent += 1
        clock.advance(0.5)
        server.manager.sweep()
    assert transport.closed
    assert sent == 11  # closed once TIMEOUT_S passed with no whole request
    assert server.manager.timed_out == 1
    assert transport.take() == b""  # nothing was answered: the PUT never arrived whole


async def test_whole_requests_keep_a_connection_busy(tmp_path: Path) -> None:
    server, conn, transport, clock = _connect(tmp_path)
    for request_id in range(1, 41):
        conn.data_received(encode_request(PingRequest(), request_id))
        clock.advance(0.5)
        server.manager.sweep()
    assert not transport.closed
    clock.advance(TIMEOUT_S + 0.1)
    server.manager.sweep()
    assert transport.closed


async def test_a_partial_request_after_a_whole_one_times_out_from_the_whole_one(
    tmp_path: Path,
) -> None:
    server, conn, transport, clock = _connect(tmp_path)
    conn.data_received(encode_request(PingRequest(), 1))
    clock.advance(TIMEOUT_S - 1)
    conn.data_received(encode_request(PingRequest(), 2)[:10])
    clock.advance(1.1)
    server.manager.sweep()
    assert transport.closed
