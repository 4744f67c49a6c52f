"""Tests for core.connections: admission, limits, idle sweeps on a fake clock, shutdown drain."""

from __future__ import annotations

import asyncio

import pytest

from postoffice.core.clock import FakeClock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import ConfigError
from postoffice.core.transport import ConnState
from tests.core.test_transport import EchoLines, connect, state
from tests.fakes import FakeTransport

_WAIT_S = 5.0  # upper bound on waits that should end at once


def new_manager(
    *, max_connections: int = 100, idle_timeout_s: float = 10.0
) -> tuple[ConnectionManager, FakeClock]:
    clock = FakeClock()
    limits = ConnectionLimits(max_connections=max_connections, idle_timeout_s=idle_timeout_s)
    return ConnectionManager(limits, clock=clock), clock


class TestLimits:
    def test_defaults(self) -> None:
        limits = ConnectionLimits()
        assert (limits.max_connections, limits.idle_timeout_s) == (10_000, 300.0)

    @pytest.mark.parametrize(
        ("field", "value", "bounds"),
        [
            ("max_connections", 0, "1 and 1000000"),
            ("idle_timeout_s", -1.0, "0 and 31536000"),
            ("max_request_bytes", 10, "64 and 2147483648"),
        ],
    )
    def test_out_of_range_names_the_field(self, field: str, value: float, bounds: str) -> None:
        message = rf"^setting '{field}' must be between {bounds}, got {value}$"
        with pytest.raises(ConfigError, match=message):
            ConnectionLimits(**{field: value})  # type: ignore[arg-type]  # one field at a time


class TestAdmission:
    def test_admit_and_release_count(self) -> None:
        manager, _ = new_manager()
        first, _ = connect(manager)
        second, _ = connect(manager)
        assert (first.conn_id, second.conn_id) == (1, 2)
        assert manager.active == 2
        assert list(manager) == [first, second]
        first.connection_lost(None)
        assert manager.active == 1
        assert manager.get(1) is None
        assert manager.get(2) is second
        assert manager.stats() == {
            "connections_accepted": 2,
            "connections_active": 1,
            "connections_rejected": 0,
            "connections_timed_out": 0,
            "connections_closed": 1,
        }

    def test_release_twice_counts_once(self) -> None:
        manager, _ = new_manager()
        conn, _ = connect(manager)
        manager.release(conn)
        manager.release(conn)
        assert manager.stats()["connections_closed"] == 1

    def test_ids_are_never_reused(self) -> None:
        manager, _ = new_manager()
        first, _ = connect(manager)
        first.connection_lost(None)
        second, _ = connect(manager)
        assert second.conn_id == 2

    def test_refusal_over_max_connections(self) -> None:
        manager, _ = new_manager(max_connections=2)
        connect(manager)
        connect(manager)
        extra = EchoLines(manager)
        assert manager.admit(extra) == "max number of clients reached"
        assert manager.active == 2
        assert manager.stats()["connections_rejected"] == 1
        assert extra.conn_id == 0

    def test_slot_frees_when_a_connection_leaves(self) -> None:
        manager, _ = new_manager(max_connections=1)
        conn, _ = connect(manager)
        conn.connection_lost(None)
        _, transport = connect(manager)
        assert transport.calls == []

    def test_lower_limit_refuses_new_connections_only(self) -> None:
        manager, _ = new_manager(max_connections=3)
        kept = [connect(manager)[0] for _ in range(3)]
        manager.limits = ConnectionLimits(max_connections=1)
        assert all(state(conn) is ConnState.READING_HEADER for conn in kept)
        assert manager.admit(EchoLines(manager)) == "max number of clients reached"
        assert manager.active == 3

    def test_repr(self) -> None:
        manager, _ = new_manager(max_connections=5)
        connect(manager)
        assert repr(manager) == "<ConnectionManager active=1 max=5 accepting=True>"


class TestIdleSweep:
    def test_closes_only_idle_connections(self) -> None:
        manager, clock = new_manager(idle_timeout_s=10)
        idle, idle_t = connect(manager)
        active, active_t = connect(manager)
        clock.advance(6)
        active.data_received(b"ping\n")
        clock.advance(6)
        assert manager.sweep() == 1
        assert (state(idle), idle.close_reason) == (ConnState.CLOSING, "idle timeout")
        assert idle_t.calls == ["close"]
        assert state(active) is ConnState.READING_HEADER
        assert "close" not in active_t.calls
        assert manager.stats()["connections_timed_out"] == 1

    def test_exactly_at_the_timeout_is_not_idle_yet(self) -> None:
        manager, clock = new_manager(idle_timeout_s=10)
        connect(manager)
        clock.advance(10)
        assert manager.sweep() == 0

    def test_partial_request_counts_as_idle(self) -> None:
        manager, clock = new_manager(idle_timeout_s=10)
        conn, _ = connect(manager)
        conn.data_received(b"half a li")
        assert state(conn) is ConnState.READING_PAYLOAD
        clock.advance(11)
        assert manager.sweep() == 1

    def test_busy_or_blocked_connections_are_spared(self) -> None:
        manager, clock = new_manager(idle_timeout_s=10)
        processing, _ = connect(manager, defer=True)
        processing.data_received(b"slow\n")
        blocked, _ = connect(manager)
        blocked.pause_writing()
        closing, closing_t = connect(manager)
        closing.close("client quit")
        clock.advance(100)
        assert manager.sweep() == 0
        assert state(processing) is ConnState.PROCESSING
        assert state(blocked) is ConnState.WRITING_RESPONSE
        assert closing_t.calls == ["close"]
        assert manager.stats()["connections_timed_out"] == 0

    def test_zero_timeout_disables(self) -> None:
        manager, clock = new_manager(idle_timeout_s=0)
        conn, _ = connect(manager)
        clock.advance(10**9)
        assert manager.sweep() == 0
        assert state(conn) is ConnState.READING_HEADER

    def test_new_timeout_applies_at_the_next_sweep(self) -> None:
        manager, clock = new_manager(idle_timeout_s=0)
        connect(manager)
        clock.advance(5)
        manager.limits = ConnectionLimits(idle_timeout_s=2)
        assert manager.sweep() == 1

    async def test_sweeper_task_runs_the_sweep(self) -> None:
        manager, clock = new_manager(idle_timeout_s=0.004)  # sweeps every millisecond
        timed_out = asyncio.Event()

        class Watched(EchoLines):
            def on_idle_timeout(self) -> None:
                super().on_idle_timeout()
                timed_out.set()

        conn = Watched(manager)
        conn.connection_made(FakeTransport())
        manager.startup()
        manager.startup()  # idempotent: one sweeper
        clock.advance(1)
        await asyncio.wait_for(timed_out.wait(), _WAIT_S)
        assert conn.close_reason == "idle timeout"
        await manager.shutdown(deadline_s=0)


class TestShutdown:
    async def test_idle_connections_close_and_shutdown_returns(self) -> None:
        manager, _ = new_manager()
        conns = [connect(manager, auto_lost=True) for _ in range(3)]
        await asyncio.wait_for(manager.shutdown(deadline_s=_WAIT_S), _WAIT_S)
        assert manager.active == 0
        for conn, transport in conns:
            assert conn.close_reason == "server shutdown"
            assert not transport.aborted

    async def test_no_connections_returns_at_once(self) -> None:
        manager, _ = new_manager()
        manager.startup()
        await asyncio.wait_for(manager.shutdown(deadline_s=_WAIT_S), _WAIT_S)
        assert manager.admit(EchoLines(manager)) == "server is shutting down"

    async def test_waits_for_the_request_in_flight(self) -> None:
        manager, _ = new_manager()
        busy, busy_t = connect(manager, defer=True, auto_lost=True)
        busy.data_received(b"last words\n")
        idle, _ = connect(manager, auto_lost=True)
        stopping = asyncio.create_task(manager.shutdown(deadline_s=_WAIT_S))
        for _ in range(5):
            await asyncio.sleep(0)  # let the idle connection go
        assert state(idle) is ConnState.CLOSED
        assert not stopping.done()
        assert state(busy) is ConnState.PROCESSING
        busy.finish()
        await asyncio.wait_for(stopping, _WAIT_S)
        assert busy_t.written == b"last words\n"
        assert busy.close_reason == "server shutdown"
        assert not busy_t.aborted
        assert manager.active == 0

    async def test_refuses_new_connections_while_draining(self) -> None:
        manager, _ = new_manager()
        busy, _ = connect(manager, defer=True, auto_lost=True)
        busy.data_received(b"x\n")
        stopping = asyncio.create_task(manager.shutdown(deadline_s=_WAIT_S))
        await asyncio.sleep(0)
        late, late_t = connect(manager)
        assert late.close_reason == "server is shutting down"
        assert late_t.calls == ["close"]
        busy.finish()
        await asyncio.wait_for(stopping, _WAIT_S)
        assert manager.stats()["connections_rejected"] == 1

    async def test_aborts_what_is_left_after_the_deadline(self) -> None:
        manager, _ = new_manager()
        stuck, stuck_t = connect(manager, defer=True)  # its request never finishes
        stuck.data_received(b"forever\n")
        slow, slow_t = connect(manager)  # closes, but the peer never goes away
        await asyncio.wait_for(manager.shutdown(deadline_s=0.01), _WAIT_S)
        assert stuck_t.aborted
        assert stuck.close_reason == "shutdown deadline"
        assert slow_t.calls == ["close", "abort"]
        assert slow.close_reason == "server shutdown"

    async def test_sweeper_stops(self) -> None:
        manager, _ = new_manager()
        manager.startup()
        await asyncio.wait_for(manager.shutdown(deadline_s=0), _WAIT_S)
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "idle-sweeper"]
