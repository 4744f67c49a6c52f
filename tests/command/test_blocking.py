"""BLPOP/BRPOP over in-memory transports, on a real embedded engine: served by pushes in
the order clients blocked, timeouts, disconnects, limits, MULTI, the idle timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from postoffice.command import connection, lists
from postoffice.command.blocking import BlockedClients, parse_timeout
from postoffice.command.config import CommandConfig
from postoffice.command.errors import CommandError
from postoffice.command.keyspace import Durable
from postoffice.command.server import CommandConnection, CommandServer
from postoffice.core.clock import FakeClock
from postoffice.core.resp import Integer
from tests.command.wire import say, taken, wire
from tests.fakes import FakeTransport


class _Timer:
    def __init__(self, delay_s: float, then: Callable[[], None]) -> None:
        self.delay_s = delay_s
        self.then = then
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Keyed:
    """A CommandServer on an embedded store, fake clients, and BLPOP's timers by hand."""

    def __init__(self, tmp_path: Path, *, idle_timeout_s: float = 300.0) -> None:
        self.clock = FakeClock()
        self.server = CommandServer(
            CommandConfig(
                metrics_port=None,
                store_dir=tmp_path / "keys",
                store_durability="never",
                idle_timeout_s=idle_timeout_s,
            ),
            clock=self.clock,
        )
        self.timers: list[_Timer] = []
        self.server.blocked = BlockedClients(self.server, self._schedule)
        self.ports = iter(range(50000, 60000))

    def _schedule(self, delay_s: float, then: Callable[[], None]) -> _Timer:
        self.timers.append(_Timer(delay_s, then))
        return self.timers[-1]

    def connect(self) -> tuple[CommandConnection, FakeTransport]:
        conn = CommandConnection(self.server)
        transport = FakeTransport(conn, peer=("127.0.0.1", next(self.ports)))
        conn.connection_made(transport)
        return conn, transport


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[Keyed]:
    k = Keyed(tmp_path)
    assert k.server.keyspace is not None
    await k.server.keyspace.start()
    k.server.pool.start()
    yield k
    k.server.pool.close()
    await k.server.keyspace.close()


async def turn() -> None:
    """Let the loop run the callbacks ready now (a woken client answers on the next turn)."""
    await asyncio.sleep(0)


async def test_blpop_on_a_list_with_items_pops_at_once(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"RPUSH", b"k", b"a", b"b"])
    assert await say(conn, t, [b"BLPOP", b"none", b"k", b"0"]) == b"*2\r\n$1\r\nk\r\n$1\r\na\r\n"
    assert await say(conn, t, [b"BRPOP", b"k", b"0"]) == b"*2\r\n$1\r\nk\r\n$1\r\nb\r\n"
    assert await say(conn, t, [b"EXISTS", b"k"]) == b":0\r\n"


async def test_a_push_serves_the_blocked_clients_in_the_order_they_blocked(keyed: Keyed) -> None:
    clients = [keyed.connect() for _ in range(3)]
    for conn, t in clients:
        assert await say(conn, t, [b"BLPOP", b"q", b"0"]) == b""
    pusher, tp = keyed.connect()
    assert await say(pusher, tp, [b"RPUSH", b"q", b"a", b"b"]) == b":2\r\n"
    await turn()
    assert [await taken(t) for _, t in clients] == [
        b"*2\r\n$1\r\nq\r\n$1\r\na\r\n",
        b"*2\r\n$1\r\nq\r\n$1\r\nb\r\n",
        b"",
    ]
    assert await say(pusher, tp, [b"LLEN", b"q"]) == b":0\r\n"
    assert keyed.server.blocked.waiting_on(0, b"q") == 1
    await say(pusher, tp, [b"LPUSH", b"q", b"c"])
    await turn()
    assert clients[2][1].take() == b"*2\r\n$1\r\nq\r\n$1\r\nc\r\n"
    assert len(keyed.server.blocked) == 0


async def test_a_blocked_client_waits_on_each_of_its_keys(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"BRPOP", b"k1", b"k2", b"0"])
    pusher, tp = keyed.connect()
    await say(pusher, tp, [b"RPUSH", b"k2", b"x", b"y"])
    await turn()
    assert await taken(t) == b"*2\r\n$2\r\nk2\r\n$1\r\ny\r\n"
    assert keyed.server.blocked.waiting_on(0, b"k1") == 0


async def test_the_commands_pipelined_behind_a_blocked_pop_wait_for_it(keyed: Keyed) -> None:
    """Redis's "blocking ops and pipelining" regression: two BLPOPs in one read."""
    conn, t = keyed.connect()
    conn.data_received(wire([b"BLPOP", b"nolist", b"0"], [b"BLPOP", b"nolist", b"0"]))
    assert await taken(t) == b""
    pusher, tp = keyed.connect()
    await say(pusher, tp, [b"RPUSH", b"nolist", b"a"])
    await turn()
    assert await taken(t) == b"*2\r\n$6\r\nnolist\r\n$1\r\na\r\n"
    await say(pusher, tp, [b"RPUSH", b"nolist", b"b"])
    await turn()
    assert await taken(t) == b"*2\r\n$6\r\nnolist\r\n$1\r\nb\r\n"
    assert await say(conn, t, [b"PING"]) == b"+PONG\r\n"


async def test_the_timeout_answers_the_nil_array_in_resp2_and_resp3(keyed: Keyed) -> None:
    two, t2 = keyed.connect()
    three, t3 = keyed.connect()
    await say(three, t3, [b"HELLO", b"3"])
    assert await say(two, t2, [b"BLPOP", b"k", b"0.5"]) == b""
    assert await say(three, t3, [b"BLPOP", b"k", b"2"]) == b""
    assert [timer.delay_s for timer in keyed.timers] == [0.5, 2.0]
    for timer in keyed.timers:
        timer.then()
    await turn()
    assert await taken(t2) == b"*-1\r\n"
    assert await taken(t3) == b"_\r\n"
    assert len(keyed.server.blocked) == 0


async def test_a_served_client_cancels_its_timer(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"BLPOP", b"k", b"5"])
    pusher, tp = keyed.connect()
    await say(pusher, tp, [b"RPUSH", b"k", b"v"])
    await turn()
    assert await taken(t) == b"*2\r\n$1\r\nk\r\n$1\r\nv\r\n"
    assert keyed.timers[0].cancelled


async def test_a_client_that_closes_while_blocked_leaves_nothing_behind(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"BLPOP", b"k", b"a", b"5"])
    assert len(keyed.server.blocked) == 1
    conn.connection_lost(None)
    assert len(keyed.server.blocked) == 0
    assert keyed.server.blocked.waiting_on(0, b"k") == 0
    assert keyed.timers[0].cancelled
    pusher, tp = keyed.connect()
    await say(pusher, tp, [b"RPUSH", b"k", b"v"])
    await turn()
    assert await say(pusher, tp, [b"LLEN", b"k"]) == b":1\r\n"  # nobody took it


async def test_the_idle_timeout_leaves_a_blocked_client_alone(tmp_path: Path) -> None:
    keyed = Keyed(tmp_path, idle_timeout_s=10.0)
    assert keyed.server.keyspace is not None
    await keyed.server.keyspace.start()
    try:
        blocked, tb = keyed.connect()
        idle, ti = keyed.connect()
        await say(blocked, tb, [b"BLPOP", b"k", b"0"])
        await say(idle, ti, [b"PING"])
        keyed.clock.advance(60)
        assert keyed.server.manager.sweep() == 1
        assert ti.closed
        assert not tb.closed
    finally:
        await keyed.server.keyspace.close()


async def test_inside_multi_a_blocking_pop_does_not_block(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    conn.data_received(
        wire(
            [b"MULTI"],
            [b"BLPOP", b"empty", b"0"],
            [b"RPUSH", b"l", b"a"],
            [b"BRPOP", b"l", b"0"],
            [b"EXEC"],
        )
    )
    assert await taken(t) == (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n*-1\r\n:1\r\n*2\r\n$1\r\nl\r\n$1\r\na\r\n"
    )


async def test_a_push_inside_exec_wakes_the_blocked_after_the_whole_transaction(
    keyed: Keyed,
) -> None:
    waiting, tw = keyed.connect()
    await say(waiting, tw, [b"BLPOP", b"k", b"0"])
    conn, t = keyed.connect()
    conn.data_received(wire([b"MULTI"], [b"RPUSH", b"k", b"a"], [b"LLEN", b"k"], [b"EXEC"]))
    assert await taken(t) == b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n"
    await turn()
    assert await taken(tw) == b"*2\r\n$1\r\nk\r\n$1\r\na\r\n"


async def test_a_blocking_pop_on_another_kind_is_wrongtype(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"SET", b"s", b"x"])
    assert await say(conn, t, [b"BLPOP", b"s", b"0"]) == (
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    )
    assert len(keyed.server.blocked) == 0


async def test_blocked_clients_past_the_limit_are_refused(keyed: Keyed) -> None:
    keyed.server.blocked.max_blocked = 1
    first, t1 = keyed.connect()
    second, t2 = keyed.connect()
    assert await say(first, t1, [b"BLPOP", b"k", b"0"]) == b""
    assert await say(second, t2, [b"BLPOP", b"k", b"0"]) == (
        b"-ERR blocked clients of 2 exceed limit 1\r\n"
    )


async def test_client_list_shows_a_blocked_client(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"BLPOP", b"k", b"0"])
    assert " flags=b " in conn.describe()


async def test_shutdown_answers_the_blocked_clients(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"BLPOP", b"k", b"0"])
    keyed.server.blocked.release_all()
    await turn()
    assert await taken(t) == b"*-1\r\n"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"-1", "timeout is negative"),
        (b"abc", "timeout is not a float or out of range"),
        (b"nan", "timeout is not a float or out of range"),
        (b"inf", "timeout is not a float or out of range"),
        (b"1e16", "timeout is out of range"),
    ],
)
def test_bad_timeouts_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(CommandError, match=f"^{message}$"):
        parse_timeout(raw)


async def test_a_bad_timeout_is_answered_without_blocking(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    assert await say(conn, t, [b"BLPOP", b"k", b"-1"]) == b"-ERR timeout is negative\r\n"
    assert (
        await say(conn, t, [b"BLPOP", b"k"])
        == b"-ERR wrong number of arguments for 'blpop' command\r\n"
    )


async def test_under_workers_a_blocked_client_looks_again_on_its_own(keyed: Keyed) -> None:
    """A push through another worker signals nothing here: the client's own next look
    finds the item."""
    keyed.server.blocked.poll_s = 0.1
    conn, t = keyed.connect()
    await say(conn, t, [b"BLPOP", b"k", b"0"])
    [poll] = keyed.timers
    assert poll.delay_s == 0.1
    poll.then()  # nothing yet: it schedules its next look
    assert len(keyed.timers) == 2
    answer = lists.cmd_rpush(keyed.server, conn, [b"RPUSH", b"k", b"v"])  # no signal
    assert isinstance(answer, Durable)  # held for its record's write at the loop's turn
    assert answer.reply == Integer(value=1)
    keyed.timers[-1].then()
    await turn()
    assert await taken(t) == b"*2\r\n$1\r\nk\r\n$1\r\nv\r\n"
    assert len(keyed.server.blocked) == 0


async def test_a_blocked_client_sending_on_is_paused_past_its_input_budget(
    keyed: Keyed,
) -> None:
    # The real budget, not a patched one: a compiled build binds the constant at build time.
    half = connection.BLOCKED_INPUT_BYTES // 2 + 1
    conn, t = keyed.connect()
    await say(conn, t, [b"BLPOP", b"k", b"0"])
    conn.data_received(wire([b"ECHO", b"x" * half]))
    assert t.reading
    conn.data_received(wire([b"ECHO", b"y" * half]))
    assert not t.reading
    pusher, tp = keyed.connect()
    await say(pusher, tp, [b"RPUSH", b"k", b"v"])
    await turn()
    assert t.reading
    assert await taken(t) == (
        b"*2\r\n$1\r\nk\r\n$1\r\nv\r\n"
        + b"$%d\r\n" % half
        + b"x" * half
        + b"\r\n$%d\r\n" % half
        + b"y" * half
        + b"\r\n"
    )


def test_long_timeouts_are_accepted_as_redis_does() -> None:
    assert parse_timeout(b"1e12") == 1e12
    assert parse_timeout(b"0.001") == 0.001


async def test_a_timeout_past_ten_years_sets_no_timer(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    assert await say(conn, t, [b"BLPOP", b"k", b"1e12"]) == b""
    assert keyed.timers == []
    assert len(keyed.server.blocked) == 1
