"""The control socket's server over in-memory transports and a fake clock: each request
drives the handle and reads the view; hostile bytes get an error and the server goes on;
the client, the idle and the request limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from postoffice.core.connections import ConnectionLimits
from postoffice.core.framing import NEED_DATA, encode_parts
from postoffice.office.control import (
    AddUsers,
    ErrorReply,
    Ok,
    Pause,
    Reply,
    Resume,
    SnapshotReply,
    Status,
    encode_request,
    reply_stream,
)
from postoffice.office.controlsocket import ControlConnection, ControlServer
from postoffice.office.engine import Simulation
from postoffice.office.events import Cause, RunEnded
from postoffice.office.live import LiveView
from tests.fakes import FakeClock, FakeTransport
from tests.office.fakes import FakeHandle, roster


@dataclass
class Rig:
    server: ControlServer
    handle: FakeHandle
    view: LiveView
    clock: FakeClock

    def connect(self) -> tuple[ControlConnection, FakeTransport]:
        conn = ControlConnection(self.server)
        transport = FakeTransport(conn, auto_lost=False)
        conn.connection_made(transport)
        return conn, transport


def _rig(*, new_users: int = 5, limits: ConnectionLimits | None = None) -> Rig:
    handle = FakeHandle()
    view = LiveView(run_id="r", seed=3)
    sim = Simulation(roster(users=8, operators=2, counters=2), seed=3)
    view.apply(sim.start_day())
    for minute in range(120):
        found = sim.step(minute)
        if found:
            view.apply(found)
    clock = FakeClock()
    server = ControlServer(
        Path("/nonexistent/office.sock"),
        handle=handle,
        view=view,
        new_users=lambda: new_users,
        limits=limits
        or ConnectionLimits(max_connections=2, idle_timeout_s=60, request_timeout_s=10),
        clock=clock,
    )
    return Rig(server=server, handle=handle, view=view, clock=clock)


def _replies(transport: FakeTransport) -> list[tuple[int, Reply]]:
    stream = reply_stream()
    stream.feed(transport.take())
    out = []
    while (event := stream.next_event()) is not NEED_DATA:
        out.append(event)
    return out


async def test_status_answers_the_views_snapshot_at_the_handles_minute() -> None:
    rig = _rig()
    rig.handle.minute = 150
    conn, transport = rig.connect()
    conn.data_received(encode_request(1, Status()))
    ((request_id, reply),) = _replies(transport)
    assert request_id == 1
    assert isinstance(reply, SnapshotReply)
    assert reply.snapshot["run"] == "r"
    assert (reply.snapshot["day"], reply.snapshot["minute"], reply.snapshot["clock"]) == (
        1,
        150,
        "10:30",
    )
    assert not transport.closed


async def test_add_users_with_a_count_and_with_n_new_users() -> None:
    rig = _rig(new_users=4)
    conn, transport = rig.connect()
    conn.data_received(encode_request(1, AddUsers(count=12)) + encode_request(2, AddUsers()))
    assert rig.handle.added == [12, 4]
    assert _replies(transport) == [
        (1, Ok(message="12 users more from day 2", fields={"added": 12, "from_day": 2})),
        (2, Ok(message="4 users more from day 2", fields={"added": 4, "from_day": 2})),
    ]


async def test_add_users_is_refused_after_the_end_and_without_n_new_users() -> None:
    rig = _rig(new_users=0)
    conn, transport = rig.connect()
    conn.data_received(encode_request(1, AddUsers()))
    rig.view.apply([RunEnded(days=1, cause=Cause.TIMEOUT, detail="done")])
    conn.data_received(encode_request(2, AddUsers(count=3)))
    assert _replies(transport) == [
        (1, ErrorReply(code="REFUSED", message="N_NEW_USERS is 0: give a count of users to add")),
        (2, ErrorReply(code="REFUSED", message="the run has ended: no users can be added")),
    ]
    assert rig.handle.added == []
    assert not transport.closed


async def test_pause_and_resume_drive_the_handle_and_show_in_the_snapshot() -> None:
    rig = _rig()
    rig.handle.minute = 61
    conn, transport = rig.connect()
    conn.data_received(encode_request(1, Pause()) + encode_request(2, Status()))
    (_, paused), (_, snap) = _replies(transport)
    assert paused == Ok(
        message="clock paused at day 1 09:01",
        fields={"paused": True, "day": 1, "minute": 61, "clock": "09:01"},
    )
    assert isinstance(snap, SnapshotReply)
    assert snap.snapshot["paused"] is True
    conn.data_received(encode_request(3, Resume()))
    ((_, resumed),) = _replies(transport)
    assert isinstance(resumed, Ok)
    assert resumed.fields["paused"] is False
    assert rig.handle.calls == ["pause", "resume"]


async def test_a_bad_request_in_a_good_frame_is_answered_and_the_connection_goes_on() -> None:
    rig = _rig()
    conn, transport = rig.connect()
    conn.data_received(encode_parts(2, 0, 7, b'{"count":"lots"}') + encode_request(8, Pause()))
    (bad_id, bad), (ok_id, ok) = _replies(transport)
    assert (bad_id, ok_id) == (7, 8)
    assert bad == ErrorReply(
        code="PROTO",
        message="add_users count must be an integer from 1 to 1000000, got 'lots'",
    )
    assert isinstance(ok, Ok)
    assert not transport.closed


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "PROTO", "bad frame magic b'GE', expected b'PO'"),
        (
            encode_parts(1, 0, 1, b"{}")[:20] + b"\0\0\0\0{}",
            "PROTO",
            "payload checksum 0xa3a6bf43 does not match header 0x00000000",
        ),
        (
            encode_parts(1, 0, 1, b"x" * 5000)[:24],
            "LIMIT",
            "frame payload length 5000 exceeds limit 4096",
        ),
    ],
)
async def test_broken_framing_gets_an_error_then_a_close_and_others_are_served(
    data: bytes, code: str, message: str
) -> None:
    rig = _rig()
    conn, transport = rig.connect()
    conn.data_received(data)
    assert _replies(transport) == [(0, ErrorReply(code=code, message=message))]
    assert transport.closed
    conn.data_received(encode_request(1, Status()))  # ignored: the connection is closing
    assert transport.take() == b""
    conn.connection_lost(None)
    other, other_transport = rig.connect()
    other.data_received(encode_request(1, Status()))
    ((_, reply),) = _replies(other_transport)
    assert isinstance(reply, SnapshotReply)


async def test_a_frame_cut_by_the_end_of_the_stream_is_answered() -> None:
    rig = _rig()
    conn, transport = rig.connect()
    conn.data_received(encode_request(1, AddUsers(count=3))[:30])
    assert transport.take() == b""
    assert conn.eof_received() is False
    assert _replies(transport) == [
        (
            0,
            ErrorReply(code="PROTO", message="truncated frame: the stream ended 30 bytes into it"),
        )
    ]
    assert transport.closed


async def test_a_client_past_the_limit_is_told_and_closed() -> None:
    rig = _rig()
    rig.connect()
    rig.connect()
    _, third = rig.connect()
    assert _replies(third) == [
        (
            0,
            ErrorReply(
                code="LIMIT",
                message="too many control clients: max number of clients reached (2)",
            ),
        )
    ]
    assert third.closed
    assert rig.server.manager.active == 2


async def test_an_idle_client_is_told_and_closed() -> None:
    rig = _rig()
    conn, transport = rig.connect()
    rig.clock.advance(59)
    assert rig.server.manager.sweep() == 0
    conn.data_received(encode_request(1, Pause()))
    transport.take()
    rig.clock.advance(61)
    assert rig.server.manager.sweep() == 1
    assert _replies(transport) == [(0, ErrorReply(code="LIMIT", message="idle for more than 60 s"))]
    assert transport.closed


async def test_a_request_that_never_arrives_whole_is_closed() -> None:
    rig = _rig(limits=ConnectionLimits(max_connections=2, idle_timeout_s=0, request_timeout_s=10))
    conn, transport = rig.connect()
    conn.data_received(encode_request(1, Status())[:10])
    rig.clock.advance(11)
    rig.server.manager.sweep()
    assert _replies(transport) == [
        (
            0,
            ErrorReply(code="LIMIT", message="a request took more than 10 s to arrive whole"),
        )
    ]
    assert transport.closed


async def test_a_stopping_server_tells_its_clients() -> None:
    rig = _rig()
    conn, transport = rig.connect()
    conn.shutdown_requested()
    assert _replies(transport) == [
        (0, ErrorReply(code="CLOSED", message="the simulation is stopping"))
    ]
    assert transport.closed


async def test_a_client_that_does_not_read_its_replies_is_not_read_either() -> None:
    rig = _rig()
    conn, transport = rig.connect()
    conn.pause_writing()  # the transport's buffer passed its high-water mark
    assert transport.reading is False
    conn.resume_writing()
    assert transport.reading is True


async def test_a_request_with_id_0_is_a_connection_error() -> None:
    rig = _rig()
    conn, transport = rig.connect()
    conn.data_received(encode_parts(1, 0, 0, b"{}") + encode_request(1, Status()))
    assert _replies(transport) == [
        (0, ErrorReply(code="PROTO", message="control request id 0 is reserved"))
    ]
    assert transport.closed


def test_status_prints_the_snapshot_for_people() -> None:
    from rich.console import Console

    from postoffice.office.control_cli import print_status

    rig = _rig()
    rig.view.apply([RunEnded(days=1, cause=Cause.SIGNAL, detail="stopped by a signal")])
    console = Console(width=120, record=True, highlight=False)
    print_status(console, rig.view.snapshot().to_json())
    text = console.export_text()
    snap = rig.view.snapshot()
    assert text.startswith(f"run r (seed 3): day 1, {snap.clock}, closed\n")
    assert (
        f"users: 8 in all, {snap.present} in the office, {snap.waiting} waiting,"
        f" {snap.being_served} being served, {snap.served_today} served today"
    ) in text
    for service in ("parcels", "letters", "bank", "bills", "finance", "watches"):
        assert service in text
    assert "ended: signal after 1 days (stopped by a signal)" in text
