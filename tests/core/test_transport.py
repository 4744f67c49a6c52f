"""Tests for core.transport: the connection state table and BaseProtocol over a fake transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from postoffice.core.clock import FakeClock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import PostOfficeError, StateMachineError
from postoffice.core.transport import (
    WRITE_HIGH_WATER_BYTES,
    WRITE_LOW_WATER_BYTES,
    BaseProtocol,
    ConnInput,
    ConnState,
    next_state,
)
from tests.fakes import FakeTransport

S, I = ConnState, ConnInput  # noqa: E741  (short names keep the tables readable)
#: The request cycle's live states (WRITING_RESPONSE is the write side's, never the cycle's).
LIVE = (S.READING_HEADER, S.READING_PAYLOAD, S.PROCESSING)


class EchoLines(BaseProtocol):
    """Echoes every complete line. With `defer`, a batch waits for `finish()`, as a
    request handed to the worker pool waits for its result."""

    def __init__(self, manager: ConnectionManager, *, defer: bool = False) -> None:
        super().__init__(manager)
        self.buffer = bytearray()
        self.defer = defer
        self.pending = False
        self.connects = 0
        self.closes = 0

    def on_connect(self) -> None:
        self.connects += 1

    def on_data(self, data: bytes) -> ConnInput | None:
        self.buffer += data
        if self.pending:
            return None
        if self.defer:
            self.pending = True
            return None
        return self._run()

    def finish(self) -> None:
        """The deferred batch is done: answer it and say what is left."""
        assert self.pending
        self.pending = False
        self.batch_done(self._run())

    def _run(self) -> ConnInput:
        while (end := self.buffer.find(b"\n")) >= 0:
            self.requests += 1
            self.write(bytes(self.buffer[: end + 1]))
            del self.buffer[: end + 1]
        return ConnInput.PARTIAL if self.buffer else ConnInput.IDLE

    def on_close(self) -> None:
        self.closes += 1


def state(conn: BaseProtocol) -> ConnState:
    """The connection's state, read afresh (mypy would otherwise keep an old narrowing)."""
    return conn.state


def new_manager(
    *, max_connections: int = 100, idle_timeout_s: float = 10.0, clock: FakeClock | None = None
) -> ConnectionManager:
    limits = ConnectionLimits(max_connections=max_connections, idle_timeout_s=idle_timeout_s)
    return ConnectionManager(limits, clock=clock or FakeClock())


def connect(
    manager: ConnectionManager, *, defer: bool = False, **transport_options: Any
) -> tuple[EchoLines, FakeTransport]:
    conn = EchoLines(manager, defer=defer)
    options: dict[str, Any] = {"sockname": ("127.0.0.1", 7000), "auto_lost": False}
    transport = FakeTransport(conn, **(options | transport_options))
    conn.connection_made(transport)
    return conn, transport


# -- the table ---------------------------------------------------------------------------


class TestNextState:
    @pytest.mark.parametrize(
        ("before", "event", "after"),
        [
            (S.READING_HEADER, I.BYTES, S.PROCESSING),
            (S.READING_PAYLOAD, I.BYTES, S.PROCESSING),
            (S.PROCESSING, I.BYTES, S.PROCESSING),
            (S.PROCESSING, I.IDLE, S.READING_HEADER),
            (S.PROCESSING, I.PARTIAL, S.READING_PAYLOAD),
            (S.CLOSING, I.BYTES, S.CLOSING),
            (S.CLOSING, I.LOST, S.CLOSED),
            (S.CLOSED, I.CLOSE, S.CLOSED),
            (S.CLOSED, I.LOST, S.CLOSED),
        ],
    )
    def test_legal_move(self, before: ConnState, event: ConnInput, after: ConnState) -> None:
        assert next_state(before, event) is after

    @pytest.mark.parametrize("before", LIVE)
    def test_every_live_state_can_close_and_be_lost(self, before: ConnState) -> None:
        assert next_state(before, I.CLOSE) is S.CLOSING
        assert next_state(before, I.LOST) is S.CLOSED

    @pytest.mark.parametrize(
        ("before", "event"),
        [
            (S.READING_HEADER, I.IDLE),
            (S.READING_HEADER, I.PARTIAL),
            (S.READING_PAYLOAD, I.IDLE),
            (S.CLOSED, I.BYTES),
            (S.CLOSED, I.IDLE),
            (S.CLOSED, I.PARTIAL),
            (S.WRITING_RESPONSE, I.BYTES),  # a reported state, never the cycle's
        ],
    )
    def test_illegal_move_raises(self, before: ConnState, event: ConnInput) -> None:
        with pytest.raises(
            StateMachineError, match=rf"^illegal connection move {before.value} --{event.value}-->$"
        ):
            next_state(before, event)

    def test_an_illegal_move_is_a_bug_not_a_peer_error(self) -> None:
        """No handler that turns PostOfficeErrors into replies may swallow it."""
        assert not issubclass(StateMachineError, PostOfficeError)

    def test_closed_is_terminal(self) -> None:
        """From CLOSED every event either stays CLOSED or is refused: nothing reopens."""
        moves: dict[ConnInput, ConnState | None] = {}
        for event in ConnInput:
            try:
                moves[event] = next_state(S.CLOSED, event)
            except StateMachineError:
                moves[event] = None
        assert moves == {
            I.BYTES: None,
            I.IDLE: None,
            I.PARTIAL: None,
            I.CLOSE: S.CLOSED,
            I.LOST: S.CLOSED,
        }

    def test_closing_only_ends_in_closed(self) -> None:
        assert {next_state(S.CLOSING, event) for event in ConnInput} == {S.CLOSING, S.CLOSED}


# -- the shell ---------------------------------------------------------------------------


class TestLifecycle:
    def test_connection_made_admits_and_describes(self) -> None:
        manager = new_manager()
        conn, transport = connect(manager)
        assert conn.conn_id == 1
        assert manager.get(1) is conn
        assert conn.connects == 1
        assert (conn.peer, conn.local) == ("127.0.0.1:50000", "127.0.0.1:7000")
        assert transport.limits == (WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)
        assert state(conn) is S.READING_HEADER
        assert repr(conn) == "<EchoLines id=1 127.0.0.1:50000 READING_HEADER requests=0>"

    @pytest.mark.parametrize(
        ("peer", "shown"),
        [
            (("::1", 6380, 0, 0), "[::1]:6380"),
            ("/run/postoffice.sock", "/run/postoffice.sock"),
            ("", "?"),
            (None, "?"),
        ],
    )
    def test_peer_address_forms(self, peer: object, shown: str) -> None:
        conn, _ = connect(new_manager(), peer=peer)
        assert conn.peer == shown

    def test_connection_lost_releases_from_the_manager(self) -> None:
        manager = new_manager()
        conn, _ = connect(manager)
        conn.connection_lost(None)
        assert state(conn) is S.CLOSED
        assert conn.transport is None
        assert manager.get(conn.conn_id) is None
        assert manager.active == 0
        assert conn.close_reason == "peer closed"
        assert conn.closes == 1

    def test_connection_lost_with_an_error_says_broken(self) -> None:
        conn, _ = connect(new_manager())
        conn.connection_lost(ConnectionResetError("reset by peer"))
        assert conn.close_reason == "broken: reset by peer"

    def test_connection_lost_after_close_keeps_our_reason(self) -> None:
        manager = new_manager()
        conn, _ = connect(manager)
        conn.close("client quit")
        conn.connection_lost(None)
        assert (state(conn), conn.close_reason) == (S.CLOSED, "client quit")
        assert manager.stats()["connections_closed"] == 1

    def test_over_max_connections_is_rejected_and_closed(self) -> None:
        manager = new_manager(max_connections=1)
        connect(manager)
        conn, transport = connect(manager)
        assert conn.close_reason == "max number of clients reached"
        assert state(conn) is S.CLOSING
        assert transport.calls == ["close"]
        assert conn.connects == 0
        assert conn.conn_id == 0
        assert manager.active == 1
        conn.connection_lost(None)
        assert manager.active == 1  # releasing a refused connection frees no slot

    def test_bytes_after_lost_are_an_illegal_move(self) -> None:
        conn, _ = connect(new_manager())
        conn.connection_lost(None)
        with pytest.raises(StateMachineError, match=r"^illegal connection move closed --bytes-->$"):
            conn.data_received(b"late\n")

    def test_eof_lets_the_transport_close(self) -> None:
        conn, _ = connect(new_manager())
        assert not conn.eof_received()


class TestRequests:
    def test_complete_line_goes_back_to_reading_header(self) -> None:
        clock = FakeClock()
        conn, transport = connect(new_manager(clock=clock))
        clock.advance(5)
        conn.data_received(b"hello\nworld\n")
        assert transport.written == b"hello\nworld\n"
        assert state(conn) is S.READING_HEADER
        assert (conn.requests, conn.bytes_in, conn.bytes_out) == (2, 12, 12)
        assert conn.last_active == clock()

    def test_partial_line_reads_payload_then_header(self) -> None:
        conn, transport = connect(new_manager())
        conn.data_received(b"hel")
        assert state(conn) is S.READING_PAYLOAD
        assert transport.written == b""
        conn.data_received(b"lo\nwo")
        assert state(conn) is S.READING_PAYLOAD
        conn.data_received(b"rld\n")
        assert state(conn) is S.READING_HEADER
        assert transport.written == b"hello\nworld\n"

    def test_deferred_batch_stays_processing_until_done(self) -> None:
        conn, transport = connect(new_manager(), defer=True)
        conn.data_received(b"one\n")
        assert state(conn) is S.PROCESSING
        assert conn.in_flight
        conn.data_received(b"two\nth")  # bytes in flight while the pool works
        assert state(conn) is S.PROCESSING
        conn.finish()
        assert state(conn) is S.READING_PAYLOAD
        assert transport.written == b"one\ntwo\n"

    def test_batch_done_counts_as_activity(self) -> None:
        clock = FakeClock()
        conn, _ = connect(new_manager(clock=clock), defer=True)
        conn.data_received(b"slow\n")
        clock.advance(60)
        conn.finish()
        assert conn.last_active == clock()

    def test_batch_done_outside_a_batch_is_ignored(self) -> None:
        conn, _ = connect(new_manager())
        conn.batch_done(I.PARTIAL)
        assert state(conn) is S.READING_HEADER

    @pytest.mark.parametrize("outcome", [I.BYTES, I.CLOSE, I.LOST])
    def test_batch_done_refuses_other_outcomes(self, outcome: ConnInput) -> None:
        conn, _ = connect(new_manager(), defer=True)
        conn.data_received(b"x\n")
        with pytest.raises(
            StateMachineError,
            match=rf"^batch outcome must be idle or partial, got {outcome.value}$",
        ):
            conn.batch_done(outcome)
        assert state(conn) is S.PROCESSING

    def test_bytes_after_close_are_dropped(self) -> None:
        conn, transport = connect(new_manager())
        conn.close("client quit")
        conn.data_received(b"ignored\n")
        assert conn.buffer == b""
        assert transport.written == b""
        assert state(conn) is S.CLOSING

    def test_writes_after_close_are_dropped(self) -> None:
        conn, transport = connect(new_manager(), defer=True)
        conn.data_received(b"late\n")
        conn.close("killed")
        conn.finish()  # the pool answers after the close
        assert transport.written == b""
        assert conn.bytes_out == 0


class TestFlowControl:
    def test_pause_writing_blocks_and_pauses_reading(self) -> None:
        conn, transport = connect(new_manager())
        conn.pause_writing()
        assert state(conn) is S.WRITING_RESPONSE
        assert not transport.reading
        conn.resume_writing()
        assert state(conn) is S.READING_HEADER
        assert transport.reading
        assert transport.calls == ["pause_reading", "resume_reading"]

    def test_bytes_while_blocked_are_still_handled(self) -> None:
        conn, transport = connect(new_manager())
        conn.pause_writing()
        conn.data_received(b"in flight\npart")
        assert state(conn) is S.WRITING_RESPONSE
        assert transport.written == b"in flight\n"
        conn.resume_writing()
        assert state(conn) is S.READING_PAYLOAD

    def test_drain_returns_to_a_batch_still_in_the_pool(self) -> None:
        """Regression: DRAINED used to go to READING_HEADER with a request in flight."""
        manager = new_manager(idle_timeout_s=10)
        clock = manager.clock
        assert isinstance(clock, FakeClock)
        conn, transport = connect(manager, defer=True)
        conn.data_received(b"slow\n")
        conn.pause_writing()
        conn.resume_writing()
        assert state(conn) is S.PROCESSING
        assert not conn.can_idle_close()
        clock.advance(60)
        assert manager.sweep() == 0
        conn.finish()
        assert state(conn) is S.READING_HEADER
        assert transport.written == b"slow\n"

    def test_batch_finished_while_blocked_is_remembered(self) -> None:
        conn, _ = connect(new_manager(), defer=True)
        conn.data_received(b"a\nb")
        conn.pause_writing()
        conn.finish()
        assert state(conn) is S.WRITING_RESPONSE
        assert not conn.in_flight
        conn.resume_writing()
        assert state(conn) is S.READING_PAYLOAD

    def test_repeated_pause_writing_stays_blocked(self) -> None:
        conn, transport = connect(new_manager())
        conn.pause_writing()
        conn.pause_writing()
        conn.resume_writing()
        assert state(conn) is S.READING_HEADER
        assert transport.calls == ["pause_reading", "resume_reading"]

    def test_resume_writing_keeps_a_service_pause(self) -> None:
        """Regression: resume_writing used to resume reading the service had paused."""
        conn, transport = connect(new_manager())
        conn.pause_reading()  # the service's queue is full
        conn.pause_writing()
        conn.resume_writing()
        assert not transport.reading
        conn.resume_reading()
        assert transport.reading

    def test_resume_reading_waits_for_the_peer(self) -> None:
        conn, transport = connect(new_manager())
        conn.pause_reading()
        conn.pause_writing()
        conn.resume_reading()
        assert not transport.reading
        conn.resume_writing()
        assert transport.reading

    def test_pause_writing_while_closing_keeps_closing(self) -> None:
        conn, _ = connect(new_manager())
        conn.close("client quit")
        conn.pause_writing()
        conn.resume_writing()
        assert state(conn) is S.CLOSING

    async def test_drained_waits_for_resume_writing(self) -> None:
        conn, _ = connect(new_manager())
        await asyncio.wait_for(conn.drained(), 1)  # not paused: returns at once
        conn.pause_writing()
        waiter = asyncio.create_task(conn.drained())
        await asyncio.sleep(0)
        assert not waiter.done()
        conn.resume_writing()
        await asyncio.wait_for(waiter, 1)

    async def test_drained_returns_when_the_connection_is_lost(self) -> None:
        conn, _ = connect(new_manager())
        conn.pause_writing()
        waiter = asyncio.create_task(conn.drained())
        await asyncio.sleep(0)
        conn.connection_lost(None)
        await asyncio.wait_for(waiter, 1)
        await asyncio.wait_for(conn.drained(), 1)


class TestClose:
    def test_close_is_idempotent(self) -> None:
        conn, transport = connect(new_manager())
        conn.close("client quit")
        conn.close("idle timeout")
        assert state(conn) is S.CLOSING
        assert conn.close_reason == "client quit"
        assert transport.calls == ["close"]

    def test_abort_is_idempotent_and_follows_close(self) -> None:
        conn, transport = connect(new_manager())
        conn.close("server shutdown")
        conn.abort("shutdown deadline")
        conn.abort("shutdown deadline")
        assert conn.close_reason == "server shutdown"
        assert transport.calls == ["close", "abort", "abort"]
        conn.connection_lost(None)
        conn.abort("again")
        conn.close("again")
        assert state(conn) is S.CLOSED
        assert transport.calls == ["close", "abort", "abort"]

    def test_abort_from_a_live_state(self) -> None:
        conn, transport = connect(new_manager(), defer=True)
        conn.data_received(b"x\n")
        conn.abort("broken peer")
        assert (state(conn), conn.close_reason) == (S.CLOSING, "broken peer")
        assert transport.aborted

    def test_close_after_lost_changes_nothing(self) -> None:
        conn, transport = connect(new_manager())
        conn.connection_lost(None)
        conn.close("late")
        assert (state(conn), conn.close_reason) == (S.CLOSED, "peer closed")
        assert transport.calls == []

    def test_idle_timeout_closes(self) -> None:
        conn, transport = connect(new_manager())
        conn.on_idle_timeout()
        assert (state(conn), conn.close_reason) == (S.CLOSING, "idle timeout")
        assert transport.calls == ["close"]

    async def test_lingering_close_sends_fin_then_closes(self) -> None:
        conn, transport = connect(new_manager(), eof=True)
        conn.pause_reading()
        conn.close("client quit")
        assert transport.calls == ["pause_reading", "write_eof", "resume_reading"]
        conn.write(b"dropped\n")  # after write_eof a real transport raises: must not reach it
        assert transport.written == b""
        conn.connection_lost(None)  # the peer's FIN came before LINGER_S passed
        assert "close" not in transport.calls

    async def test_close_without_linger_closes_at_once(self) -> None:
        conn, transport = connect(new_manager(), eof=True)
        conn.close("killed", linger=False)
        assert transport.calls == ["close"]


class TestShutdown:
    def test_idle_connection_closes_at_once(self) -> None:
        conn, _ = connect(new_manager())
        conn.shutdown_requested()
        assert (state(conn), conn.close_reason) == (S.CLOSING, "server shutdown")

    def test_request_in_flight_finishes_first(self) -> None:
        """Regression: a connection mid-request used to stay open until aborted."""
        conn, transport = connect(new_manager(), defer=True)
        conn.data_received(b"last\n")
        conn.shutdown_requested()
        assert state(conn) is S.PROCESSING
        conn.finish()
        assert transport.written == b"last\n"
        assert (state(conn), conn.close_reason) == (S.CLOSING, "server shutdown")

    def test_request_in_flight_while_blocked_finishes_first(self) -> None:
        conn, transport = connect(new_manager(), defer=True)
        conn.data_received(b"last\n")
        conn.pause_writing()
        conn.shutdown_requested()
        assert state(conn) is S.WRITING_RESPONSE
        conn.finish()
        assert transport.written == b"last\n"
        assert state(conn) is S.CLOSING


# -- random event sequences ----------------------------------------------------------------

_chunks = st.lists(st.sampled_from([b"a", b"bc", b"\n", b"xyz\n", b"\n\n"]), min_size=1)


class ConnectionMachine(RuleBasedStateMachine):
    """Drives one connection with the events asyncio and the service can produce."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.manager = new_manager(max_connections=1, idle_timeout_s=10, clock=self.clock)
        self.conn, self.transport = connect(self.manager)
        self.lost = False
        self.closing = False
        self.close_after_batch = False
        self.write_paused = False
        self.hold = False
        self.received = bytearray()
        self.fed = 0

    def _close(self) -> None:
        self.closing = True

    @precondition(lambda self: not self.lost)
    @rule(chunks=_chunks.map(b"".join), defer=st.booleans())
    def receive(self, chunks: bytes, defer: bool) -> None:
        self.conn.defer = defer
        self.conn.data_received(chunks)
        self.fed += len(chunks)
        if not self.closing:
            self.received += chunks

    @precondition(lambda self: self.conn.pending)
    @rule()
    def finish_batch(self) -> None:
        self.conn.finish()
        if self.close_after_batch and not self.lost:
            self._close()

    @precondition(lambda self: not self.lost)
    @rule()
    def pause_writing(self) -> None:
        self.conn.pause_writing()
        self.write_paused = True

    @precondition(lambda self: not self.lost)
    @rule()
    def resume_writing(self) -> None:
        self.conn.resume_writing()
        self.write_paused = False

    @rule(hold=st.booleans())
    def service_queue(self, hold: bool) -> None:
        if hold:
            self.conn.pause_reading()
        else:
            self.conn.resume_reading()
        self.hold = hold

    @rule(reason=st.sampled_from(["client quit", "protocol error"]))
    def close(self, reason: str) -> None:
        self.conn.close(reason)
        if not self.lost:
            self._close()

    @rule()
    def abort(self) -> None:
        self.conn.abort("broken peer")
        if not self.lost:
            self._close()

    @rule()
    def shutdown(self) -> None:
        self.conn.shutdown_requested()
        if self.lost or self.closing:
            return
        if self.conn.pending:
            self.close_after_batch = True
        else:
            self._close()

    @rule()
    def idle_sweep(self) -> None:
        closable = not (self.lost or self.closing or self.write_paused or self.conn.pending)
        self.clock.advance(11)
        assert self.manager.sweep() == int(closable)
        if closable:
            self._close()

    @precondition(lambda self: not self.lost)
    @rule(broken=st.booleans())
    def lose(self, broken: bool) -> None:
        self.conn.connection_lost(ConnectionResetError("reset") if broken else None)
        self.lost = True

    @invariant()
    def state_follows_the_model(self) -> None:
        current = state(self.conn)
        assert isinstance(current, ConnState)
        if self.lost:
            expected = S.CLOSED
        elif self.closing:
            expected = S.CLOSING
        elif self.write_paused:
            expected = S.WRITING_RESPONSE
        elif self.conn.pending:
            expected = S.PROCESSING
        elif self.conn.buffer:
            expected = S.READING_PAYLOAD
        else:
            expected = S.READING_HEADER
        assert current is expected

    @invariant()
    def lost_means_released(self) -> None:
        if self.lost:
            assert self.manager.active == 0
            assert self.conn.transport is None
            assert self.conn.closes == 1
            assert self.conn.close_reason
        else:
            assert self.manager.get(self.conn.conn_id) is self.conn
            assert self.conn.closes == 0

    @invariant()
    def reading_is_paused_exactly_while_someone_asks(self) -> None:
        if not self.lost:
            assert self.transport.reading is not (self.write_paused or self.hold)

    @invariant()
    def replies_echo_requests_in_order(self) -> None:
        written = bytes(self.transport.written)
        assert self.received.startswith(written)
        if not (self.closing or self.lost or self.conn.pending):
            assert written + self.conn.buffer == self.received
        assert self.conn.bytes_in == self.fed
        assert self.conn.bytes_out == len(written)

    @invariant()
    def closing_told_the_transport(self) -> None:
        if self.closing:
            assert {"close", "abort"} & set(self.transport.calls)
        elif not self.lost:
            assert not self.transport.closed


ConnectionMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None
)
TestConnectionMachine = ConnectionMachine.TestCase


def test_hot_path_shortcuts_agree_with_the_table() -> None:
    """data_received and batch_done skip the table for their common moves; same answers."""
    from postoffice.core.transport import _NEXT

    for state in (ConnState.READING_HEADER, ConnState.READING_PAYLOAD):
        assert _NEXT[(state, ConnInput.BYTES)] is ConnState.PROCESSING
    assert _NEXT[(ConnState.PROCESSING, ConnInput.IDLE)] is ConnState.READING_HEADER
    assert _NEXT[(ConnState.PROCESSING, ConnInput.PARTIAL)] is ConnState.READING_PAYLOAD
