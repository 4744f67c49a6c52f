"""MULTI/EXEC/DISCARD over in-memory transports, on a real embedded engine: queuing,
EXECABORT, nesting, limits, RESP2 and RESP3, pipelining, and nothing interleaved."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from postoffice.command import transactions
from postoffice.command.config import CommandConfig
from postoffice.command.keyspace import Deferred, Durable, SyncWaiter, settle
from postoffice.command.server import CommandConnection, CommandServer
from postoffice.core.clock import FakeClock
from postoffice.core.errors import StorageError
from postoffice.core.resp import OK, PONG, Array, Bulk, Error, encode_command
from tests.command.wire import say, taken, wire
from tests.fakes import FakeTransport


class Keyed:
    """A CommandServer on an embedded store (fsync never: replies at once), fake clients."""

    def __init__(self, tmp_path: Path) -> None:
        self.server = CommandServer(
            CommandConfig(metrics_port=None, store_dir=tmp_path / "keys", store_durability="never"),
            clock=FakeClock(),
        )
        self.ports = iter(range(50000, 60000))

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


async def test_multi_queues_and_exec_answers_every_reply_in_order(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    assert await say(conn, t, [b"MULTI"]) == b"+OK\r\n"
    assert await say(conn, t, [b"SET", b"k", b"1"]) == b"+QUEUED\r\n"
    assert await say(conn, t, [b"INCRBYFLOAT", b"k", b"1.0"]) == b"+QUEUED\r\n"
    assert await say(conn, t, [b"GET", b"k"]) == b"+QUEUED\r\n"
    assert await say(conn, t, [b"PING"]) == b"+QUEUED\r\n"
    assert await say(conn, t, [b"EXEC"]) == b"*4\r\n+OK\r\n$1\r\n2\r\n$1\r\n2\r\n+PONG\r\n"
    assert await say(conn, t, [b"GET", b"k"]) == b"$1\r\n2\r\n"


async def test_a_command_error_at_run_time_is_one_item_of_the_array(keyed: Keyed) -> None:
    """A command that fails when it runs fails alone; the others run (no rollback)."""
    conn, t = keyed.connect()
    conn.data_received(
        wire([b"MULTI"], [b"SET", b"s", b"x"], [b"INCR", b"s"], [b"SET", b"t", b"y"], [b"EXEC"])
    )
    assert await taken(t) == (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n"
        b"*3\r\n+OK\r\n-ERR value is not an integer or out of range\r\n+OK\r\n"
    )
    assert await say(conn, t, [b"GET", b"t"]) == b"$1\r\ny\r\n"


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ([b"NOSUCH", b"a"], b"-ERR unknown command 'NOSUCH', with args beginning with: 'a'\r\n"),
        ([b"GET"], b"-ERR wrong number of arguments for 'get' command\r\n"),
        ([b"SHUTDOWN"], b"-ERR Command not allowed inside a transaction\r\n"),
        ([b"DEBUG", b"SLEEP", b"0"], b"-ERR Command not allowed inside a transaction\r\n"),
    ],
)
async def test_an_error_while_queuing_makes_exec_answer_execabort(
    keyed: Keyed, bad: list[bytes], error: bytes
) -> None:
    conn, t = keyed.connect()
    conn.data_received(wire([b"MULTI"], [b"SET", b"k", b"v"], bad, [b"EXEC"], [b"GET", b"k"]))
    assert await taken(t) == (
        b"+OK\r\n+QUEUED\r\n"
        + error
        + b"-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n"
    )


async def test_nested_multi_is_refused_and_keeps_the_transaction(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    conn.data_received(wire([b"MULTI"], [b"SET", b"k", b"v"], [b"MULTI"], [b"EXEC"]))
    assert await taken(t) == (
        b"+OK\r\n+QUEUED\r\n-ERR MULTI calls can not be nested\r\n*1\r\n+OK\r\n"
    )


async def test_exec_and_discard_without_multi(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    assert await say(conn, t, [b"EXEC"]) == b"-ERR EXEC without MULTI\r\n"
    assert await say(conn, t, [b"DISCARD"]) == b"-ERR DISCARD without MULTI\r\n"


async def test_discard_drops_the_queue(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    conn.data_received(wire([b"MULTI"], [b"SET", b"k", b"v"], [b"DISCARD"], [b"GET", b"k"]))
    assert await taken(t) == b"+OK\r\n+QUEUED\r\n+OK\r\n$-1\r\n"
    assert await say(conn, t, [b"EXEC"]) == b"-ERR EXEC without MULTI\r\n"


async def test_empty_transaction_answers_an_empty_array(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    assert await say(conn, t, [b"MULTI"], [b"EXEC"]) == b"+OK\r\n*0\r\n"


async def test_exec_in_resp3_uses_resp3_items(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"HELLO", b"3"])
    conn.data_received(wire([b"MULTI"], [b"GET", b"none"], [b"LPOP", b"none", b"1"], [b"EXEC"]))
    assert await taken(t) == b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n_\r\n_\r\n"


async def test_exec_in_the_text_dialect(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    conn.data_received(b"MULTI\nSET k 'a b'\nGET k\nEXEC\n")
    assert await taken(t) == b"OK\nQUEUED\nQUEUED\nOK\na b\n"


async def test_quit_inside_multi_runs_at_once(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    conn.data_received(wire([b"MULTI"], [b"SET", b"k", b"v"], [b"QUIT"]))
    assert await taken(t) == b"+OK\r\n+QUEUED\r\n+OK\r\n"
    assert t.closed


async def test_no_other_client_runs_between_the_queued_commands(keyed: Keyed) -> None:
    """Another client's commands, sent while a transaction is queued, run before or after
    the whole EXEC, never between its commands."""
    a, ta = keyed.connect()
    b, tb = keyed.connect()
    a.data_received(wire([b"MULTI"], *([b"INCR", b"n"] for _ in range(500))))
    await taken(ta)
    b.data_received(wire([b"SET", b"n", b"100"]))
    assert await taken(tb) == b"+OK\r\n"
    a.data_received(wire([b"EXEC"], [b"GET", b"n"]))
    reply = await taken(ta)
    assert reply.startswith(b"*500\r\n:101\r\n:102\r\n")
    assert reply.endswith(b":600\r\n$3\r\n600\r\n")


async def test_queue_past_its_command_limit_aborts_the_transaction(
    keyed: Keyed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactions, "MAX_QUEUED_COMMANDS", 3)
    conn, t = keyed.connect()
    conn.data_received(wire([b"MULTI"], *([b"PING"] for _ in range(4)), [b"EXEC"]))
    assert await taken(t) == (
        b"+OK\r\n"
        + b"+QUEUED\r\n" * 3
        + b"-ERR transaction of 4 commands exceeds limit 3\r\n"
        + b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    )


async def test_queue_past_its_byte_limit_aborts_the_transaction(
    keyed: Keyed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactions, "MAX_QUEUED_BYTES", 1100)
    conn, t = keyed.connect()
    conn.data_received(wire([b"MULTI"], [b"SET", b"k", b"v" * 900], [b"SET", b"k", b"w" * 100]))
    assert await taken(t) == (
        b"+OK\r\n+QUEUED\r\n-ERR transaction of 1296 bytes exceeds limit 1100\r\n"
    )
    assert await say(conn, t, [b"EXEC"]) == (
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    )


async def test_client_list_shows_a_client_inside_multi(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"MULTI"])
    assert " flags=x " in conn.describe()
    await say(conn, t, [b"DISCARD"])
    assert " flags=N " in conn.describe()


async def test_a_closed_connection_drops_its_transaction(keyed: Keyed) -> None:
    conn, t = keyed.connect()
    await say(conn, t, [b"MULTI"], [b"SET", b"k", b"v"])
    conn.connection_lost(None)
    other, to = keyed.connect()
    assert await say(other, to, [b"GET", b"k"]) == b"$-1\r\n"


class _Commit:
    """A SyncQueue whose fsync the test finishes by hand."""

    def __init__(self) -> None:
        self.waiting: list[tuple[SyncWaiter, int]] = []

    def wait(self, waiter: SyncWaiter, ticket: int) -> None:
        self.waiting.append((waiter, ticket))


async def test_exec_reply_of_durable_writes_waits_for_the_last_ticket() -> None:
    commit = _Commit()
    answer = transactions.exec_reply(
        [
            Durable(ticket=4, reply=OK, commit=commit),
            PONG,
            Durable(ticket=7, reply=OK, commit=commit),
        ]
    )
    assert answer == Durable(ticket=7, reply=Array(items=[OK, PONG, OK]), commit=commit)


async def test_exec_reply_with_a_store_answer_waits_for_it_and_for_the_fsyncs() -> None:
    commit = _Commit()
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    answer = transactions.exec_reply(
        [
            Deferred(future, lambda value: Bulk(value)),
            Durable(ticket=3, reply=OK, commit=commit),
            Durable(ticket=5, reply=OK, commit=commit),
        ]
    )
    assert isinstance(answer, Deferred)
    future.set_result(b"v")
    [(first, _), (second, _)] = commit.waiting
    assert first.synced(3, None) is False
    assert second.synced(3, None) is True  # its own write is later
    await asyncio.sleep(0)
    assert not answer.future.done()
    second.synced(5, StorageError("disk full"))
    for _ in range(10):
        await asyncio.sleep(0)
        if answer.future.done():
            break
    reply = settle(answer)
    assert isinstance(reply, Array)
    assert reply.items is not None
    assert list(reply.items[:2]) == [Bulk(b"v"), OK]
    failed = reply.items[2]
    assert isinstance(failed, Error)
    assert "disk full" in failed.message


class TransactionMachine(RuleBasedStateMachine):
    """One connection's MULTI state against a model: every reply as predicted, whatever
    the order of MULTI, EXEC, DISCARD, good commands and refused ones."""

    def __init__(self) -> None:
        super().__init__()
        self.server = CommandServer(CommandConfig(metrics_port=None), clock=FakeClock())
        self.conn = CommandConnection(self.server)
        self.transport = FakeTransport(self.conn, peer=("127.0.0.1", 50000))
        self.conn.connection_made(self.transport)
        self.in_multi = False
        self.aborted = False
        self.queued: list[bytes] = []
        self.pending: list[bytes] = []  # sent in one read by `flush`
        self.expected = b""

    def _send(self, command: list[bytes], reply: bytes) -> None:
        self.pending.append(encode_command(command))
        self.expected += reply

    @rule(message=st.binary(max_size=8))
    def echo(self, message: bytes) -> None:
        reply = b"$%d\r\n%b\r\n" % (len(message), message)
        if self.in_multi:
            self.queued.append(reply)
            reply = b"+QUEUED\r\n"
        self._send([b"ECHO", message], reply)

    @rule()
    def unknown(self) -> None:
        self.aborted = self.aborted or self.in_multi
        self._send([b"NOSUCH"], b"-ERR unknown command 'NOSUCH', with args beginning with: \r\n")

    @rule()
    def wrong_arity(self) -> None:
        self.aborted = self.aborted or self.in_multi
        self._send([b"ECHO"], b"-ERR wrong number of arguments for 'echo' command\r\n")

    @rule()
    def multi(self) -> None:
        if self.in_multi:
            self._send([b"MULTI"], b"-ERR MULTI calls can not be nested\r\n")
        else:
            self.in_multi = True
            self._send([b"MULTI"], b"+OK\r\n")

    @rule()
    def exec_(self) -> None:
        if not self.in_multi:
            reply = b"-ERR EXEC without MULTI\r\n"
        elif self.aborted:
            reply = b"-EXECABORT Transaction discarded because of previous errors.\r\n"
        else:
            reply = b"*%d\r\n" % len(self.queued) + b"".join(self.queued)
        self.in_multi, self.aborted, self.queued = False, False, []
        self._send([b"EXEC"], reply)

    @rule()
    def discard(self) -> None:
        reply = b"+OK\r\n" if self.in_multi else b"-ERR DISCARD without MULTI\r\n"
        self.in_multi, self.aborted, self.queued = False, False, []
        self._send([b"DISCARD"], reply)

    @rule()
    def flush(self) -> None:
        """What was sent goes in one read (pipelined); every reply comes back in order."""
        self.conn.data_received(b"".join(self.pending))
        self.pending = []
        assert self.transport.take() == self.expected
        self.expected = b""

    @invariant()
    def flags_follow_the_model(self) -> None:
        if not self.pending:
            assert (" flags=x " in self.conn.describe()) is self.in_multi

    def teardown(self) -> None:
        self.flush()
        self.server.pool.close()


TestTransactionMachine = TransactionMachine.TestCase
TestTransactionMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
