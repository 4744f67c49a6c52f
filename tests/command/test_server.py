"""The command server's shell over in-memory transports: dispatch, auth, limits, dialects."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from postoffice.command.config import CommandConfig
from postoffice.command.keyspace import Deferred, Durable, SyncWaiter
from postoffice.command.server import CommandConnection, CommandServer
from postoffice.core.clock import FakeClock
from postoffice.core.errors import ConfigError, StorageError
from postoffice.core.resp import NIL, OK, Bulk, Map, Reply, bulk, encode_command, encode_resp
from postoffice.core.transport import ConnState
from postoffice.store.wire import Response, Status
from tests.fakes import FakeTransport


class Harness:
    """A CommandServer (not started: no sockets) and helpers to attach fake clients."""

    def __init__(self, **settings: object) -> None:
        self.clock = FakeClock()
        self.server = CommandServer(
            CommandConfig(metrics_port=None, **settings),  # type: ignore[arg-type]  # test knobs
            clock=self.clock,
        )
        self.server.pool.start()

    def connect(self, port: int = 50000) -> tuple[CommandConnection, FakeTransport]:
        conn = CommandConnection(self.server)
        transport = FakeTransport(conn, peer=("127.0.0.1", port))
        conn.connection_made(transport)
        return conn, transport


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    h.server.pool.close()


def state(conn: CommandConnection) -> ConnState:
    """The connection's state, read afresh (mypy would otherwise keep an old narrowing)."""
    return conn.state


def send(conn: CommandConnection, transport: FakeTransport, *args: bytes) -> bytes:
    conn.data_received(encode_command(list(args)))
    return transport.take()


class HeldSleep:
    """Stands in for the sleep DEBUG SLEEP blocks on (the server's `sleep` seam): the pool
    thread that runs it waits until `released` is set, so a test decides when the
    blocking command ends."""

    def __init__(self, server: CommandServer) -> None:
        self.asked: list[float] = []
        self.released = threading.Event()
        server.sleep = self.sleep

    def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        assert self.released.wait(10), "the sleep was never released"


@pytest.fixture
def held_sleep(harness: Harness) -> Iterator[HeldSleep]:
    held = HeldSleep(harness.server)
    yield held
    held.released.set()  # never leave a pool thread waiting


async def test_ping_and_echo_in_resp(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, b"PING") == b"+PONG\r\n"
    assert send(conn, t, b"ping", b"hello") == b"$5\r\nhello\r\n"
    assert send(conn, t, b"ECHO", b"x\r\ny") == b"$4\r\nx\r\ny\r\n"
    assert state(conn) is ConnState.READING_HEADER


async def test_text_dialect_speaks_plain_lines(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"PING\nNOPE a b\nECHO hi\n")
    assert t.take() == (
        b"PONG\nERR unknown command 'NOPE', with args beginning with: 'a' 'b'\nhi\n"
    )
    assert not t.closed


async def test_inline_with_crlf_answers_in_resp(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"PING\r\n")
    assert t.take() == b"+PONG\r\n"


async def test_pipelined_commands_leave_in_one_write(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(encode_command([b"PING"]) * 3 + encode_command([b"ECHO", b"z"]))
    assert t.take() == b"+PONG\r\n" * 3 + b"$1\r\nz\r\n"
    assert conn.requests == 4


async def test_partial_request_waits_for_the_rest(harness: Harness) -> None:
    conn, t = harness.connect()
    wire = encode_command([b"ECHO", b"abcdef"])
    conn.data_received(wire[:10])
    assert t.take() == b""
    assert state(conn) is ConnState.READING_PAYLOAD
    conn.data_received(wire[10:])
    assert t.take() == b"$6\r\nabcdef\r\n"
    assert state(conn) is ConnState.READING_HEADER


async def test_unknown_command_and_wrong_arity_keep_the_connection(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, b"FLY", b"away") == (
        b"-ERR unknown command 'FLY', with args beginning with: 'away'\r\n"
    )
    assert send(conn, t, b"ECHO") == b"-ERR wrong number of arguments for 'echo' command\r\n"
    assert send(conn, t, b"PING") == b"+PONG\r\n"
    assert harness.server.counts.unknown_commands == 1


async def test_protocol_error_replies_then_closes(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"*1\r\n$x\r\n")
    assert t.take() == b"-ERR Protocol error: invalid bulk length b'x'\r\n"
    assert t.closed
    assert harness.server.counts.protocol_errors == 1


async def test_quoted_inline_arguments_in_both_dialects(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"ECHO \"two words\\x21\"\r\nECHO 'it\\'s'\r\n")
    assert t.take() == b"$10\r\ntwo words!\r\n$4\r\nit's\r\n"
    text, tt = harness.connect(50001)
    text.data_received(b'ECHO "a b"\n')
    assert tt.take() == b"a b\n"


@pytest.mark.parametrize(
    ("end", "reply"),
    [
        (b"\r\n", b"-ERR Protocol error: unbalanced quotes in request\r\n"),
        (b"\n", b"ERR Protocol error: unbalanced quotes in request\n"),
    ],
)
async def test_unbalanced_quotes_reply_then_close(
    harness: Harness, end: bytes, reply: bytes
) -> None:
    """As Redis: the good line before is answered, the bad one closes, the rest is not run."""
    conn, t = harness.connect()
    conn.data_received(b"PING" + end + b'set """test-key""" test-value' + end + b"PING" + end)
    pong = b"+PONG\r\n" if end == b"\r\n" else b"PONG\n"
    assert t.take() == pong + reply
    assert t.closed
    assert harness.server.counts.protocol_errors == 1


async def test_oversized_bulk_is_refused_with_a_clear_error() -> None:
    h = Harness(max_bulk_bytes=100)
    conn, t = h.connect()
    conn.data_received(b"*2\r\n$4\r\nECHO\r\n$101\r\n")
    assert t.take() == b"-ERR Protocol error: invalid bulk length (101 exceeds limit 100)\r\n"
    assert t.closed
    h.server.pool.close()


async def test_quit_replies_then_closes(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(encode_command([b"QUIT"]) + encode_command([b"PING"]))
    assert t.take() == b"+OK\r\n"
    assert t.closed
    await asyncio.sleep(0)  # connection_lost runs on the next loop turn
    assert state(conn) is ConnState.CLOSED
    assert harness.server.manager.active == 0


async def test_auth_required_before_other_commands() -> None:
    h = Harness(requirepass="s3cret")
    conn, t = h.connect()
    assert send(conn, t, b"PING") == b"-NOAUTH Authentication required.\r\n"
    assert send(conn, t, b"AUTH", b"wrong") == (
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    )
    assert send(conn, t, b"AUTH", b"s3cret") == b"+OK\r\n"
    assert send(conn, t, b"PING") == b"+PONG\r\n"
    assert send(conn, t, b"AUTH", b"someone", b"s3cret") == (
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    )
    assert send(conn, t, b"PING") == b"-NOAUTH Authentication required.\r\n"
    assert send(conn, t, b"AUTH", b"default", b"s3cret") == b"+OK\r\n"
    h.server.pool.close()


async def test_auth_without_password_configured(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, b"AUTH", b"x").startswith(b"-ERR AUTH <password> called without")


async def test_rate_limit_refuses_then_refills() -> None:
    h = Harness(rate_limit_per_s=10.0, rate_limit_burst=3)
    conn, t = h.connect()
    conn.data_received(encode_command([b"PING"]) * 5)
    refusal = b"-RATELIMIT rate limit of 10 commands/s exceeded\r\n"
    assert t.take() == b"+PONG\r\n" * 3 + refusal * 2
    h.clock.advance(0.1)  # one token back
    assert send(conn, t, b"PING") == b"+PONG\r\n"
    assert send(conn, t, b"PING") == refusal
    assert h.server.counts.rate_limited == 3
    h.server.pool.close()


async def test_over_max_connections_is_refused_with_a_message() -> None:
    h = Harness(max_connections=2)
    h.connect(1)
    h.connect(2)
    _, t = h.connect(3)
    assert t.take() == b"-ERR max number of clients reached\r\n"
    assert t.closed
    assert h.server.manager.rejected == 1
    h.server.pool.close()


async def test_client_commands(harness: Harness) -> None:
    conn, t = harness.connect(1111)
    other, t2 = harness.connect(2222)
    assert send(conn, t, b"CLIENT", b"ID") == b":%d\r\n" % conn.conn_id
    assert send(conn, t, b"CLIENT", b"GETNAME") == b"$-1\r\n"
    assert send(conn, t, b"CLIENT", b"SETNAME", b"alice") == b"+OK\r\n"
    assert send(conn, t, b"CLIENT", b"GETNAME") == b"$5\r\nalice\r\n"
    assert send(conn, t, b"CLIENT", b"SETNAME", b"bad name").startswith(b"-ERR Client names")
    listing = send(conn, t, b"CLIENT", b"LIST")
    assert b"addr=127.0.0.1:1111" in listing
    assert b"name=alice" in listing
    assert b"addr=127.0.0.1:2222" in listing
    assert send(conn, t, b"CLIENT", b"KILL", b"ID", str(other.conn_id).encode()) == b":1\r\n"
    assert t2.closed
    assert send(conn, t, b"CLIENT", b"KILL", b"127.0.0.1:9") == b"-ERR No such client\r\n"
    third, t3 = harness.connect(3333)
    kill_self = encode_command([b"CLIENT", b"KILL", b"127.0.0.1:3333"])
    third.data_received(kill_self + encode_command([b"PING"]))  # old form, itself, pipelined
    assert t3.take() == b"+OK\r\n"  # answered, then closed before the PING
    assert t3.closed
    assert third.close_reason == "killed by CLIENT KILL"
    assert send(conn, t, b"CLIENT", b"NOPE").startswith(b"-ERR unknown subcommand")


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((b"CLIENT", b"SETNAME"), "client name"),
        ((b"CLIENT", b"SETINFO", b"LIB-NAME"), "lib-name"),
        ((b"CLIENT", b"SETINFO", b"lib-ver"), "lib-ver"),
        ((b"HELLO", b"2", b"SETNAME"), "client name"),
    ],
)
async def test_client_names_past_the_limit_are_refused(
    harness: Harness, args: tuple[bytes, ...], what: str
) -> None:
    """A name of any argument's length (8 MiB) would be kept for the connection's life
    and copied into every CLIENT LIST: past MAX_CLIENT_NAME_BYTES it is refused."""
    conn, t = harness.connect()
    limit = 256  # MAX_CLIENT_NAME_BYTES, as documented
    assert send(conn, t, *args, b"n" * (limit + 1)) == (
        f"-ERR {what} of {limit + 1} bytes exceeds limit {limit}\r\n".encode()
    )
    assert (conn.name, conn.lib_name, conn.lib_ver) == (b"", b"", b"")
    assert send(conn, t, *args, b"n" * limit).startswith((b"+OK", b"*"))
    assert b"n" * limit in (conn.name, conn.lib_name, conn.lib_ver)


async def test_config_get_and_set_apply_at_run_time(harness: Harness) -> None:
    conn, t = harness.connect()
    assert (
        send(conn, t, b"CONFIG", b"GET", b"maxclients")
        == b"*2\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n"
    )
    assert send(conn, t, b"CONFIG", b"SET", b"maxclients", b"5", b"timeout", b"7") == b"+OK\r\n"
    assert harness.server.manager.limits.max_connections == 5
    assert harness.server.manager.limits.idle_timeout_s == 7.0
    assert send(conn, t, b"CONFIG", b"SET", b"worker-threads", b"2") == b"+OK\r\n"
    assert harness.server.pool.size == 2
    assert send(conn, t, b"CONFIG", b"SET", b"worker-threads", b"0") == (
        b"-ERR setting 'threads' must be between 1 and 256, got 0\r\n"
    )
    assert harness.server.pool.size == 2
    assert send(conn, t, b"CONFIG", b"SET", b"nope", b"1").startswith(b"-ERR Unknown option")
    assert send(conn, t, b"CONFIG", b"SET", b"timeout", b"soon").startswith(
        b"-ERR CONFIG SET failed"
    )
    assert send(conn, t, b"CONFIG", b"GET", b"save") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"


async def test_connection_limits_are_settings_changed_at_run_time(harness: Harness) -> None:
    """The connection layer's limits (output, request deadline, partial requests) have
    CONFIG names, start at the core's defaults and apply to every client at once."""
    conn, t = harness.connect()
    names = (
        b"output-hard-limit",
        b"output-soft-limit",
        b"output-soft-seconds",
        b"request-timeout",
        b"max-partial-size",
    )
    shown = send(conn, t, b"CONFIG", b"GET", *names)
    assert shown == encode_resp(
        Map(
            pairs=[
                (bulk("output-hard-limit"), bulk("67108864")),
                (bulk("output-soft-limit"), bulk("16777216")),
                (bulk("output-soft-seconds"), bulk("60")),
                (bulk("request-timeout"), bulk("60")),
                (bulk("max-partial-size"), bulk("268435456")),
            ]
        )
    )
    changes = [b"1048576", b"524288", b"2.5", b"0.5", b"0"]
    pairs = [arg for pair in zip(names, changes, strict=True) for arg in pair]
    assert send(conn, t, b"CONFIG", b"SET", *pairs) == b"+OK\r\n"
    limits = harness.server.manager.limits
    assert (
        limits.output_hard_limit_bytes,
        limits.output_soft_limit_bytes,
        limits.output_soft_limit_s,
        limits.request_timeout_s,
        limits.max_partial_bytes,
    ) == (1048576, 524288, 2.5, 0.5, 0)
    # Below the transport's high-water mark an output limit could never be kept.
    assert send(conn, t, b"CONFIG", b"SET", b"output-hard-limit", b"1000") == (
        b"-ERR setting 'output_hard_limit_bytes' must be between 262144 and 1099511627776,"
        b" got 1000\r\n"
    )
    assert harness.server.manager.limits.output_hard_limit_bytes == 1048576


def test_connection_limits_out_of_range_are_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"^setting 'output_soft_limit_bytes' must be"):
        CommandConfig(output_soft_limit_bytes=4096)
    with pytest.raises(ConfigError, match=r"^setting 'request_timeout_s' must be"):
        CommandConfig(request_timeout_s=-1)


async def test_config_set_requirepass_locks_new_clients(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, b"CONFIG", b"SET", b"requirepass", b"pw") == b"+OK\r\n"
    assert send(conn, t, b"PING") == b"+PONG\r\n"  # already connected: stays authenticated
    newcomer, t2 = harness.connect()
    assert send(newcomer, t2, b"PING") == b"-NOAUTH Authentication required.\r\n"


async def test_info_sections(harness: Harness) -> None:
    conn, t = harness.connect()
    send(conn, t, b"PING")
    reply = send(conn, t, b"INFO").decode()
    for section in ("# Server", "# Clients", "# Memory", "# Stats", "# Threads"):
        assert section in reply
    assert "connected_clients:1" in reply
    assert "total_commands_processed:2" in reply
    only = send(conn, t, b"INFO", b"clients").decode()
    assert "# Clients" in only
    assert "# Server" not in only
    assert "cmdstat_ping:calls=1" in send(conn, t, b"INFO", b"commandstats").decode()


async def test_command_count_docs_and_help(harness: Harness) -> None:
    conn, t = harness.connect()
    count = int(send(conn, t, b"COMMAND", b"COUNT")[1:-2])
    assert count >= 14
    docs = send(conn, t, b"COMMAND", b"DOCS", b"ping")
    assert docs.startswith(b"*2\r\n$4\r\nping\r\n*6\r\n$7\r\nsummary\r\n")
    assert b"PING -- " in send(conn, t, b"HELP")


async def test_time_is_two_numbers(harness: Harness) -> None:
    conn, t = harness.connect()
    reply = send(conn, t, b"TIME").split(b"\r\n")
    assert reply[0] == b"*2"
    assert int(reply[2]) > 1_700_000_000
    assert 0 <= int(reply[4]) < 1_000_000


async def test_blocking_command_keeps_order_and_frees_the_loop(
    harness: Harness, held_sleep: HeldSleep
) -> None:
    conn, t = harness.connect()
    conn.data_received(
        encode_command([b"PING"])
        + encode_command([b"DEBUG", b"SLEEP", b"0.05"])
        + encode_command([b"ECHO", b"after"])
    )
    assert t.take() == b"+PONG\r\n"  # the sleep runs in the pool
    assert state(conn) is ConnState.PROCESSING
    assert not t.reading
    other, t2 = harness.connect()
    assert send(other, t2, b"PING") == b"+PONG\r\n"  # the loop is free meanwhile
    await asyncio.sleep(0)
    assert t.take() == b""  # the sleep still holds its pool thread
    held_sleep.released.set()
    assert await t.next_write() == b"+OK\r\n$5\r\nafter\r\n"
    assert held_sleep.asked == [0.05]
    assert t.reading
    assert state(conn) is ConnState.READING_HEADER


async def test_shutdown_command_asks_the_server_to_stop(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, b"SHUTDOWN", b"NOSAVE") == b"+OK\r\n"
    assert harness.server._shutdown.is_set()
    assert t.closed


async def test_idle_timeout_closes_idle_clients_only() -> None:
    h = Harness(idle_timeout_s=10.0)
    _, t_idle = h.connect(1)
    busy, t_busy = h.connect(2)
    h.clock.advance(6)
    send(busy, t_busy, b"PING")
    h.clock.advance(6)
    assert h.server.manager.sweep() == 1
    assert t_idle.closed
    assert not t_busy.closed
    h.server.pool.close()


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(
        ConfigError, match=r"^setting 'port' must be between 0 and 65535, got 70000$"
    ):
        CommandConfig(port=70000)
    with pytest.raises(ConfigError, match=r"^settings 'tls_cert' and 'tls_key' must be given"):
        CommandConfig(tls_cert=__import__("pathlib").Path("x.pem"))


class _HeldStore:
    """A keyspace whose answers the test hands out itself, in any order."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Response]] = []

    def get(self, key: bytes, db: int = 0) -> Deferred:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return Deferred(future, lambda response: Bulk(data=response.body))


async def test_store_replies_keep_request_order_whatever_order_they_settle_in(
    harness: Harness,
) -> None:
    store = _HeldStore()
    harness.server.keyspace = store  # type: ignore[assignment]  # the fake has what GET uses
    conn, t = harness.connect()
    conn.data_received(b"".join(encode_command([b"GET", k]) for k in (b"a", b"b", b"c")))
    conn.data_received(encode_command([b"PING"]))  # not a store command: waits its turn
    assert len(store.futures) == 3
    assert t.take() == b""

    def answer(index: int, value: bytes) -> None:
        store.futures[index].set_result(Response(request_id=index, status=Status.OK, body=value))

    answer(2, b"C")
    await asyncio.sleep(0)
    assert t.take() == b""  # the first two are still owed
    answer(0, b"A")
    await asyncio.sleep(0)
    assert t.take() == b"$1\r\nA\r\n"
    answer(1, b"B")
    await asyncio.sleep(0)
    assert t.take() == b"$1\r\nB\r\n$1\r\nC\r\n+PONG\r\n"
    assert state(conn) is ConnState.READING_HEADER


async def test_lone_commands_that_are_not_answered_at_once_go_through_the_batch_loop(
    harness: Harness, held_sleep: HeldSleep
) -> None:
    """One command per read takes the hot path; each kind of answer that is not an
    immediate reply (pool, store, quit, a kill of itself) ends as the batch loop ends it."""
    store = _HeldStore()
    harness.server.keyspace = store  # type: ignore[assignment]  # the fake has what GET uses
    conn, t = harness.connect()
    conn.data_received(encode_command([b"GET", b"a"]))  # a store answer: owed
    assert state(conn) is ConnState.PROCESSING
    conn.data_received(encode_command([b"ECHO", b"behind"]))  # waits its turn
    store.futures[0].set_result(Response(request_id=0, status=Status.OK, body=b"A"))
    await asyncio.sleep(0)
    assert t.take() == b"$1\r\nA\r\n$6\r\nbehind\r\n"
    assert state(conn) is ConnState.READING_HEADER

    held_sleep.released.set()
    conn.data_received(encode_command([b"DEBUG", b"SLEEP", b"0.01"]))  # the pool
    assert state(conn) is ConnState.PROCESSING
    assert await t.next_write() == b"+OK\r\n"
    assert state(conn) is ConnState.READING_HEADER

    conn.data_received(b"PING\r\n")  # inline, alone in its read
    assert t.take() == b"+PONG\r\n"

    me = conn.conn_id
    kill = [b"CLIENT", b"KILL", b"ID", str(me).encode(), b"SKIPME", b"no"]
    conn.data_received(encode_command(kill))
    assert t.take() == b":1\r\n"  # its answer, then the close
    assert state(conn) is ConnState.CLOSING
    assert t.closed

    other, t2 = harness.connect(50001)
    other.data_received(encode_command([b"QUIT"]))
    assert t2.take() == b"+OK\r\n"
    assert t2.closed


class _HeldSync:
    """A keyspace whose writes are durable when the test says so (a fake group commit)."""

    def __init__(self) -> None:
        self.ticket = 0
        self.waiting: dict[SyncWaiter, int] = {}
        self.values: dict[bytes, bytes] = {}

    def wait(self, waiter: SyncWaiter, ticket: int) -> None:
        self.waiting[waiter] = ticket

    def sync(self, covered: int, error: BaseException | None = None) -> None:
        waiting, self.waiting = self.waiting, {}
        for waiter in waiting:
            if waiter.synced(covered, error):
                self.waiting[waiter] = covered + 1

    def set(self, key: bytes, value: bytes, db: int = 0) -> Durable:
        self.ticket += 1
        self.values[key] = value
        return Durable(self.ticket, OK, self)

    def get(self, key: bytes, db: int = 0) -> Reply:
        value = self.values.get(key)
        return NIL if value is None else Bulk(data=value)


def test_durable_replies_wait_for_their_sync_and_hold_the_replies_behind(
    harness: Harness,
) -> None:
    store = _HeldSync()
    harness.server.keyspace = store  # type: ignore[assignment]  # the fake has what GET/SET use
    conn, t = harness.connect()
    conn.data_received(
        encode_command([b"SET", b"k", b"1"])
        + encode_command([b"GET", b"k"])
        + encode_command([b"SET", b"k", b"2"])
        + encode_command([b"PING"])  # not a keyspace command: held until the queue is empty
    )
    assert t.take() == b""  # nothing leaves before the first write is durable
    assert store.waiting == {conn: 2}
    store.sync(1)
    assert t.take() == b"+OK\r\n$1\r\n1\r\n"  # the GET behind it read the write
    store.sync(2, StorageError("cannot fsync the log: disk on fire"))
    assert t.take() == (
        b"-ERR store refused the request (STORAGE): cannot fsync the log: disk on fire\r\n+PONG\r\n"
    )
    assert not store.waiting
    assert state(conn) is ConnState.READING_HEADER


def test_a_durable_reply_for_a_closed_connection_is_dropped(harness: Harness) -> None:
    store = _HeldSync()
    harness.server.keyspace = store  # type: ignore[assignment]  # the fake has what SET uses
    conn, t = harness.connect()
    conn.data_received(encode_command([b"SET", b"k", b"1"]))
    conn.connection_lost(None)
    store.sync(1)
    assert t.take() == b""
    assert not store.waiting
