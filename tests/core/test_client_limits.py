"""What one client may cost the connection layer: output limits, the request deadline and
the budget of all partial requests (core.transport and core.connections, fake clock)."""

from __future__ import annotations

import pytest

from postoffice.core.clock import FakeClock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import ConfigError
from postoffice.core.transport import WRITE_HIGH_WATER_BYTES, BaseProtocol, ConnInput, ConnState
from tests.fakes import FakeTransport

KIB = 1024
MIB = 1024 * KIB


class UnreadTransport(FakeTransport):
    """A transport whose peer reads nothing until `drain()`: what is written stays in its
    buffer, and past the high-water mark it pauses the protocol, as asyncio's do."""

    def __init__(self, protocol: BaseProtocol) -> None:
        super().__init__(protocol)
        self.unsent = 0
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.unsent += len(data)
        if self.unsent > WRITE_HIGH_WATER_BYTES and not self.paused:
            self.paused = True
            self.protocol_paused()

    def protocol_paused(self) -> None:
        assert isinstance(self.protocol, BaseProtocol)
        self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def drain(self) -> None:
        """The peer read everything."""
        self.unsent = 0
        self.written.clear()
        if self.paused:
            self.paused = False
            assert isinstance(self.protocol, BaseProtocol)
            self.protocol.resume_writing()


class Lines(BaseProtocol):
    """Answers each line with `reply_bytes` bytes; what is left of a line is a partial
    request. Records `on_writable` calls."""

    def __init__(self, manager: ConnectionManager, *, reply_bytes: int = 3) -> None:
        super().__init__(manager)
        self.buffer = bytearray()
        self.reply = b"r" * reply_bytes
        self.writable_calls = 0
        self.refusals: list[str] = []

    def on_data(self, data: bytes) -> ConnInput | None:
        self.buffer += data
        while (end := self.buffer.find(b"\n")) >= 0:
            del self.buffer[: end + 1]
            self.requests += 1
            self.write(self.reply)
        return ConnInput.PARTIAL if self.buffer else ConnInput.IDLE

    def partial_bytes(self) -> int:
        return len(self.buffer)

    def on_writable(self) -> None:
        self.writable_calls += 1

    def reject(self, reason: str) -> None:
        self.refusals.append(reason)
        self.close(reason)


def new_manager(**limits: float) -> tuple[ConnectionManager, FakeClock]:
    clock = FakeClock()
    return ConnectionManager(ConnectionLimits(**limits), clock=clock), clock  # type: ignore[arg-type]


def connect(manager: ConnectionManager, *, reply_bytes: int = 3) -> tuple[Lines, UnreadTransport]:
    conn = Lines(manager, reply_bytes=reply_bytes)
    transport = UnreadTransport(conn)
    conn.connection_made(transport)
    return conn, transport


class TestLimitsConfig:
    def test_defaults_protect_every_server(self) -> None:
        limits = ConnectionLimits()
        assert limits.output_hard_limit_bytes == 64 * MIB
        assert (limits.output_soft_limit_bytes, limits.output_soft_limit_s) == (16 * MIB, 60.0)
        assert limits.request_timeout_s == 60.0
        assert limits.max_partial_bytes == 256 * MIB

    @pytest.mark.parametrize("field", ["output_hard_limit_bytes", "output_soft_limit_bytes"])
    def test_an_output_limit_under_the_high_water_mark_is_refused(self, field: str) -> None:
        with pytest.raises(
            ConfigError, match=rf"^setting '{field}' must be between 262144 and \d+, got 1000$"
        ):
            ConnectionLimits(**{field: 1000})

    def test_zero_turns_an_output_limit_off(self) -> None:
        limits = ConnectionLimits(output_hard_limit_bytes=0, output_soft_limit_bytes=0)
        assert limits.output_hard_limit_bytes == limits.output_soft_limit_bytes == 0

    def test_the_minimum_is_the_transport_high_water_mark(self) -> None:
        from postoffice.core.connections import MIN_OUTPUT_LIMIT_BYTES

        assert MIN_OUTPUT_LIMIT_BYTES == WRITE_HIGH_WATER_BYTES


class TestOutputLimits:
    async def test_passing_the_hard_limit_closes_at_once_and_drops_the_replies(self) -> None:
        manager, _ = new_manager(output_hard_limit_bytes=MIB, output_soft_limit_bytes=0)
        conn, transport = connect(manager, reply_bytes=300 * KIB)
        conn.data_received(b"a\nb\nc\n")  # 900 KiB unread: over the high-water mark only
        assert not transport.aborted
        conn.data_received(b"d\n")  # 1200 KiB
        assert transport.aborted
        assert conn.close_reason == f"output buffer of {1200 * KIB} bytes exceeds hard limit {MIB}"
        assert manager.output_limited == 1
        assert conn.closing

    async def test_a_reader_that_keeps_up_is_never_limited(self) -> None:
        manager, _ = new_manager(output_hard_limit_bytes=MIB, output_soft_limit_bytes=0)
        conn, transport = connect(manager, reply_bytes=300 * KIB)
        for _ in range(20):  # 6 MB in all, each batch read before the next
            conn.data_received(b"a\nb\n")
            transport.drain()
        assert not transport.aborted
        assert conn.requests == 40

    async def test_over_the_soft_limit_longer_than_its_seconds_closes(self) -> None:
        manager, clock = new_manager(
            output_hard_limit_bytes=0, output_soft_limit_bytes=512 * KIB, output_soft_limit_s=10
        )
        conn, transport = connect(manager, reply_bytes=300 * KIB)
        conn.data_received(b"a\nb\n")  # 600 KiB: over the soft limit from now
        clock.advance(10)
        manager.sweep()
        assert not transport.aborted  # exactly its seconds: not yet
        clock.advance(0.5)
        manager.sweep()  # no write needed: the sweep checks a client that stopped reading
        assert transport.aborted
        assert conn.close_reason == (
            f"output buffer of {600 * KIB} bytes over soft limit {512 * KIB} for more than 10 s"
        )
        assert manager.output_limited == 1

    async def test_dropping_under_the_soft_limit_restarts_its_clock(self) -> None:
        manager, clock = new_manager(
            output_hard_limit_bytes=0, output_soft_limit_bytes=512 * KIB, output_soft_limit_s=10
        )
        conn, transport = connect(manager, reply_bytes=300 * KIB)
        conn.data_received(b"a\nb\n")
        clock.advance(8)
        transport.drain()  # the peer caught up
        conn.data_received(b"a\nb\n")  # over again: a new period starts
        clock.advance(8)
        manager.sweep()
        assert not transport.aborted
        clock.advance(3)
        manager.sweep()
        assert transport.aborted

    async def test_resume_writing_tells_a_busy_connection_it_may_go_on(self) -> None:
        manager, _ = new_manager()
        conn, transport = connect(manager, reply_bytes=300 * KIB)
        conn.data_received(b"a\n")
        assert conn.write_blocked
        conn.cycle = ConnState.PROCESSING  # as a service still holding requests leaves it
        transport.drain()
        assert not conn.write_blocked
        assert conn.writable_calls == 1

    async def test_resume_writing_between_requests_calls_nothing(self) -> None:
        manager, _ = new_manager()
        conn, transport = connect(manager, reply_bytes=300 * KIB)
        conn.data_received(b"a\n")
        transport.drain()
        assert conn.writable_calls == 0


class TestRequestDeadline:
    async def test_a_request_trickling_past_the_deadline_is_refused(self) -> None:
        manager, clock = new_manager(request_timeout_s=30, idle_timeout_s=0)
        conn, transport = connect(manager)
        for _ in range(31):  # a byte a second: never idle, never whole
            conn.data_received(b"x")
            clock.advance(1)
            manager.sweep()
        assert conn.refusals == ["request not received whole within 30 s"]
        assert transport.closed
        assert manager.request_timeouts == 1

    async def test_the_deadline_counts_from_the_request_first_byte(self) -> None:
        manager, clock = new_manager(request_timeout_s=30, idle_timeout_s=0)
        conn, _ = connect(manager)
        conn.data_received(b"whole\npart")
        clock.advance(20)
        conn.data_received(b"ial\nnext")  # the first one is whole; `next` began now
        clock.advance(20)
        manager.sweep()
        assert conn.refusals == []
        clock.advance(11)
        manager.sweep()
        assert conn.refusals == ["request not received whole within 30 s"]

    async def test_a_connection_between_requests_has_no_deadline(self) -> None:
        manager, clock = new_manager(request_timeout_s=30, idle_timeout_s=0)
        conn, _ = connect(manager)
        conn.data_received(b"part")
        conn.data_received(b"ial\n")
        clock.advance(1000)
        manager.sweep()
        assert conn.refusals == []
        assert conn.partial_since is None

    async def test_no_deadline_while_we_are_handling_requests(self) -> None:
        manager, clock = new_manager(request_timeout_s=30, idle_timeout_s=0)
        conn, _ = connect(manager)
        conn.data_received(b"part")
        conn.cycle = ConnState.PROCESSING  # a request of ours in a pool, say
        clock.advance(100)
        manager.sweep()
        assert conn.refusals == []

    async def test_no_deadline_while_the_peer_is_behind_on_our_replies(self) -> None:
        manager, clock = new_manager(request_timeout_s=30, idle_timeout_s=0)
        conn, _ = connect(manager)
        conn.data_received(b"part")
        conn.pause_writing()
        clock.advance(100)
        manager.sweep()
        assert conn.refusals == []

    async def test_zero_turns_the_deadline_off(self) -> None:
        manager, clock = new_manager(request_timeout_s=0, idle_timeout_s=0)
        conn, _ = connect(manager)
        conn.data_received(b"part")
        clock.advance(10_000)
        manager.sweep()
        assert conn.refusals == []

    def test_the_sweep_runs_often_enough_for_the_deadline(self) -> None:
        manager, _ = new_manager(request_timeout_s=2, idle_timeout_s=300)
        assert manager.sweep_interval() == 0.5


class TestPartialBudget:
    async def test_the_connection_that_would_pass_the_budget_is_refused(self) -> None:
        manager, _ = new_manager(max_partial_bytes=1000)
        first, _ = connect(manager)
        second, second_transport = connect(manager)
        first.data_received(b"x" * 600)
        assert manager.partial_bytes == 600
        second.data_received(b"y" * 300)
        second.data_received(b"y" * 200)  # 1100 in all
        assert second.refusals == ["server busy: partial requests would hold more than 1000 bytes"]
        assert second_transport.closed
        assert first.refusals == []
        assert manager.partial_refused == 1

    async def test_a_completed_request_frees_its_share(self) -> None:
        manager, _ = new_manager(max_partial_bytes=1000)
        conn, _ = connect(manager)
        conn.data_received(b"x" * 900)
        conn.data_received(b"\n")
        assert manager.partial_bytes == 0
        other, _ = connect(manager)
        other.data_received(b"y" * 900)
        assert other.refusals == []

    async def test_a_closed_connection_frees_its_share(self) -> None:
        manager, _ = new_manager(max_partial_bytes=1000)
        conn, _ = connect(manager)
        conn.data_received(b"x" * 900)
        conn.connection_lost(None)
        assert manager.partial_bytes == 0

    async def test_zero_means_no_budget(self) -> None:
        manager, _ = new_manager(max_partial_bytes=0)
        conn, _ = connect(manager)
        conn.data_received(b"x" * 100_000)
        assert conn.refusals == []
        assert manager.limit_stats() == {
            "connections_request_timeout": 0,
            "connections_output_limited": 0,
            "connections_partial_refused": 0,
            "partial_request_bytes": 100_000,
        }
