"""The command server against a hostile client, over in-memory transports: settings that
cannot lock clients out, the administrative path, AUTH throttling, the reply limit."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postoffice.command.config import CommandConfig
from postoffice.command.embedded import EmbeddedKeyspace
from postoffice.command.errors import ReplyTooLargeError
from postoffice.command.keyspace import Deferred, settle
from postoffice.command.remote import RemoteKeyspace
from postoffice.command.server import CommandConnection, CommandServer
from postoffice.core.clock import FakeClock
from postoffice.core.errors import ConfigError
from postoffice.core.resp import MAX_AUTH_FAILURES, NIL, Array, Bulk, Error, encode_command
from postoffice.store import Response, Status
from tests.fakes import FakeTransport


class Harness:
    """A CommandServer (not started: no sockets) with fake clients."""

    def __init__(self, **settings: object) -> None:
        self.clock = FakeClock()
        self.server = CommandServer(
            CommandConfig(metrics_port=None, **settings),  # type: ignore[arg-type]  # test knobs
            clock=self.clock,
        )
        self.server.pool.start()

    def connect(self, port: int = 50000) -> Client:
        conn = CommandConnection(self.server)
        transport = FakeTransport(conn, peer=("127.0.0.1", port))
        conn.connection_made(transport)
        return Client(conn, transport)


class Client:
    def __init__(self, conn: CommandConnection, transport: FakeTransport) -> None:
        self.conn = conn
        self.transport = transport

    def send(self, *args: bytes) -> bytes:
        """One command; what the server wrote back at once."""
        self.conn.data_received(encode_command(list(args)))
        return self.transport.take()


@pytest.fixture
def make() -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for harness in made:
        harness.server.pool.close()


def harness(made: list[Harness], **settings: object) -> Harness:
    h = Harness(**settings)
    made.append(h)
    return h


# -- settings that would lock every client out -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        (b"rate-limit", b"1e-300", b"setting 'rate_limit_per_s' must be 0 (off) or at least 0.1"),
        (b"rate-limit", b"nan", b"setting 'rate_limit_per_s' must be between 0 and"),
        (b"timeout", b"0.000001", b"setting 'idle_timeout_s' must be 0 (off) or at least 0.1"),
        (b"proto-max-bulk-len", b"1", b"setting 'max_bulk_bytes' must be between 64 and"),
        (b"proto-max-multibulk-len", b"1", b"setting 'max_array_items' must be between 16 and"),
        (b"max-reply-bytes", b"10", b"setting 'max_reply_bytes' must be between 65536 and"),
    ],
)
async def test_config_set_refuses_values_that_would_lock_clients_out(
    make: list[Harness], name: bytes, value: bytes, error: bytes
) -> None:
    client = harness(make).connect()
    before = client.send(b"CONFIG", b"GET", name)
    assert client.send(b"CONFIG", b"SET", name, value).startswith(b"-ERR " + error)
    assert client.send(b"CONFIG", b"GET", name) == before
    assert client.send(b"PING") == b"+PONG\r\n"


def test_the_config_dataclass_holds_the_same_ranges() -> None:
    for bad in (
        {"rate_limit_per_s": 1e-300},
        {"idle_timeout_s": 1e-9},
        {"max_bulk_bytes": 63},
        {"max_array_items": 15},
        {"max_reply_bytes": 1024},
    ):
        with pytest.raises(ConfigError, match=r"^setting '"):
            CommandConfig(**bad)


async def test_the_administrative_path_is_never_rate_limited(make: list[Harness]) -> None:
    """A client out of tokens can still AUTH, HELLO, look (INFO, CLIENT), put the rate
    right (CONFIG SET) and leave (QUIT): only the other commands are refused."""
    h = harness(make, rate_limit_per_s=0.1, rate_limit_burst=1)
    client = h.connect()
    refusal = b"-RATELIMIT rate limit of 0.1 commands/s exceeded\r\n"
    assert client.send(b"PING") == b"+PONG\r\n"
    assert client.send(b"PING") == refusal
    for _ in range(20):
        assert client.send(b"INFO", b"stats").startswith(b"$")
        assert client.send(b"CLIENT", b"ID").startswith(b":")
        assert client.send(b"HELLO", b"2").startswith(b"*")
        assert client.send(b"CONFIG", b"GET", b"rate-limit") == (
            b"*2\r\n$10\r\nrate-limit\r\n$3\r\n0.1\r\n"
        )
    assert client.send(b"PING") == refusal
    assert client.send(b"CONFIG", b"SET", b"rate-limit", b"0") == b"+OK\r\n"
    assert client.send(b"PING") == b"+PONG\r\n"
    assert client.send(b"QUIT") == b"+OK\r\n"


# -- the reply limit -------------------------------------------------------------------------


class FakeStoreClient:
    """Stands in for the store link: GETs whose answers the test gives, one by one."""

    is_open = True

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Response]] = []

    def submit_get(self, key: bytes) -> asyncio.Future[Response]:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


async def test_remote_mget_past_the_limit_is_refused_without_holding_the_values() -> None:
    """1000 values of 10 KiB against a 64 KiB limit: each value is dropped as it comes
    once the limit is passed, so the memory held stays near the limit, and the reply is
    an error naming both sizes."""
    keyspace = RemoteKeyspace("127.0.0.1", 1)
    store = FakeStoreClient()
    keyspace.pool._links[0] = store  # type: ignore[call-overload]  # the fake link, as connected
    answer = keyspace.mget([b"big"] * 1000, 65536)
    assert isinstance(answer, Deferred)
    tracemalloc.start()
    try:
        while store.futures:  # each answered and let go, as the store link does
            future = store.futures.pop(0)
            future.set_result(Response(request_id=1, status=Status.OK, body=b"v" * 10240))
            del future
            await asyncio.sleep(0)  # the done callback runs
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert settle(answer) == Error(
        code="ERR",
        message="reply of 10256016 bytes exceeds limit 65536 (CONFIG SET max-reply-bytes)",
    )


async def test_remote_mget_within_the_limit_answers_in_order() -> None:
    keyspace = RemoteKeyspace("127.0.0.1", 1)
    store = FakeStoreClient()
    keyspace.pool._links[0] = store  # type: ignore[call-overload]  # the fake link, as connected
    answer = keyspace.mget([b"a", b"b", b"c"], 65536)
    assert isinstance(answer, Deferred)
    values, expiries = store.futures[:3], store.futures[3:]  # each key's value, then expiry
    for future, body in reversed(list(zip(values, [b"1", b"", b"3"], strict=True))):
        status = Status.OK if body else Status.NOT_FOUND
        future.set_result(Response(request_id=1, status=status, body=body))
    for future in expiries:
        future.set_result(Response(request_id=1, status=Status.NOT_FOUND, body=b""))
    await asyncio.sleep(0)
    assert settle(answer) == Array(items=[Bulk(b"1"), NIL, Bulk(b"3")])


async def test_embedded_mget_stops_reading_at_the_limit(tmp_path: Path) -> None:
    keyspace = EmbeddedKeyspace(tmp_path / "store", "interval")
    await keyspace.start()
    try:
        keyspace.set(b"big", b"v" * 10240)
        with pytest.raises(
            ReplyTooLargeError,
            match=r"^reply of more than 71808 bytes exceeds limit 65536 \(CONFIG SET",
        ):
            keyspace.mget([b"big"] * 1000, 65536)
        assert keyspace.mget([b"big", b"none"], 65536) == Array(items=[Bulk(b"v" * 10240), NIL])
    finally:
        await keyspace.close()


async def test_client_list_past_the_limit_is_refused(make: list[Harness]) -> None:
    h = harness(make, max_reply_bytes=65536)
    clients = [h.connect(40000 + i) for i in range(200)]
    for client in clients:
        assert client.send(b"CLIENT", b"SETNAME", b"n" * 256) == b"+OK\r\n"
    reply = clients[0].send(b"CLIENT", b"LIST")
    assert reply.startswith(b"-ERR reply of more than 65")
    assert reply.endswith(b" bytes exceeds limit 65536 (CONFIG SET max-reply-bytes)\r\n")
    assert clients[0].send(b"CONFIG", b"SET", b"max-reply-bytes", b"1048576") == b"+OK\r\n"
    assert clients[0].send(b"CLIENT", b"LIST").startswith(b"$")


# -- AUTH throttling -------------------------------------------------------------------------


class Timers:
    """Stands in for the loop's call_later: the test runs each timer when it chooses."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        self.pending.append((delay_s, callback))

    def fire(self) -> float:
        """Run the oldest timer; its delay."""
        delay, callback = self.pending.pop(0)
        callback()
        return delay


WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


async def test_failed_auths_are_answered_ever_later_then_closed(make: list[Harness]) -> None:
    """Each wrong password's reply is held, twice as long as the one before, and nothing
    else the client sent is read meanwhile; the tenth closes the connection."""
    h = harness(make, requirepass="s3cret")
    timers = Timers()
    h.server.call_later = timers.call_later  # type: ignore[method-assign]  # the seam
    client = h.connect()
    delays: list[float] = []
    noauth = b"-NOAUTH Authentication required.\r\n"
    assert client.send(b"AUTH", b"typo") == WRONGPASS  # the first at once
    for attempt in range(2, MAX_AUTH_FAILURES + 1):
        client.conn.data_received(
            encode_command([b"AUTH", b"guess%d" % attempt]) + encode_command([b"PING"])
        )
        assert client.transport.take() == b""  # held: no reply, no PING run
        delays.append(timers.fire())
        assert client.transport.take() == WRONGPASS + (
            b"" if attempt == MAX_AUTH_FAILURES else noauth
        )
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert client.transport.closed
    assert client.conn.close_reason == "too many failed AUTH attempts"
    assert h.server.counts.auth_failures == MAX_AUTH_FAILURES
    other = h.connect(4)
    assert other.send(b"AUTH", b"s3cret") == b"+OK\r\n"  # another connection starts afresh
    assert b"\r\nauth_failures:10\r\n" in other.send(b"INFO", b"stats")


async def test_hello_with_a_wrong_password_is_throttled_too(make: list[Harness]) -> None:
    h = harness(make, requirepass="s3cret")
    timers = Timers()
    h.server.call_later = timers.call_later  # type: ignore[method-assign]  # the seam
    client = h.connect()
    assert client.send(b"HELLO", b"3", b"AUTH", b"default", b"nope") == WRONGPASS
    assert client.send(b"HELLO", b"3", b"AUTH", b"default", b"nope") == b""
    assert timers.fire() == 0.05
    assert client.transport.take() == WRONGPASS
    assert client.send(b"HELLO", b"3", b"AUTH", b"default", b"s3cret").startswith(b"%")
    assert h.server.counts.auth_failures == 2
    assert client.send(b"AUTH", b"nope") == WRONGPASS  # a success started the count over
