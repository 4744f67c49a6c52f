"""Large values on the command path, over in-memory transports: a GET's value is written
from where it lies (a view of the store's segment map, or the store server's response)
with its header and CRLF around it, never joined into one new bytes."""

from __future__ import annotations

import asyncio
import mmap
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from postoffice.command.config import CommandConfig
from postoffice.command.remote import RemoteKeyspace
from postoffice.command.server import CommandConnection, CommandServer
from postoffice.core.clock import FakeClock
from postoffice.core.resp import encode_command
from postoffice.store import Response, Status, Store
from tests.fakes import FakeTransport

BIG = bytes(range(256)) * 4096  # 1 MiB
SEGMENT = 256 * 1024
MAX_TURNS = 1000


class SpyTransport(FakeTransport):
    """Keeps what `writelines` was given, part by part, as the real transport would."""

    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        super().__init__(protocol)
        self.parts: list[bytes | memoryview] = []
        self.sent: list[bytes | memoryview] = []  # every write and part, in order

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.sent.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        parts = [p if type(p) is bytes else memoryview(p) for p in list_of_data]
        self.parts += parts
        self.sent += parts
        self.calls.append("writelines")
        self.wrote.set()

    def output(self) -> bytes:
        return b"".join(self.sent)


def _prepare(path: Path) -> None:
    """A store whose 1 MiB value sits in a sealed, fsynced segment."""
    with Store.open(path, segment_bytes=SEGMENT) as store:
        store.put(b"big", BIG)
        for n in range(8):
            store.put(b"filler%d" % n, b"f" * (SEGMENT // 2))


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[CommandServer]:
    _prepare(tmp_path / "store")
    server = CommandServer(
        CommandConfig(metrics_port=None, store_dir=tmp_path / "store"), clock=FakeClock()
    )
    server.pool.start()
    assert server.keyspace is not None
    await server.keyspace.start()
    yield server
    await server.keyspace.close()
    server.pool.close()


def _connect(server: CommandServer) -> tuple[CommandConnection, SpyTransport]:
    conn = CommandConnection(server)
    transport = SpyTransport(conn)
    conn.connection_made(transport)
    return conn, transport


def _from_a_map(part: bytes | memoryview) -> bool:
    return isinstance(part, memoryview) and isinstance(part.obj, mmap.mmap)


async def test_a_large_get_is_written_from_the_segment_map(embedded: CommandServer) -> None:
    conn, transport = _connect(embedded)
    conn.data_received(encode_command([b"GET", b"big"]))
    assert [p for p in transport.parts if _from_a_map(p)] == [BIG]
    assert transport.output() == b"$1048576\r\n" + BIG + b"\r\n"


async def test_pipelined_large_gets_keep_their_place_among_small_replies(
    embedded: CommandServer,
) -> None:
    conn, transport = _connect(embedded)
    conn.data_received(
        b"".join(
            encode_command(c)
            for c in ([b"PING"], [b"GET", b"big"], [b"GET", b"filler0"], [b"GET", b"big"])
        )
    )
    small = b"f" * (SEGMENT // 2)
    big = b"$1048576\r\n" + BIG + b"\r\n"
    assert transport.output() == b"+PONG\r\n" + big + b"$%d\r\n%b\r\n" % (len(small), small) + big
    assert len([p for p in transport.parts if _from_a_map(p)]) == 3  # 128 KiB is large too


async def test_a_large_get_allocates_nothing_near_the_value_size(
    embedded: CommandServer,
) -> None:
    conn, transport = _connect(embedded)
    command = encode_command([b"GET", b"big"])
    conn.data_received(command)  # the segment mapped once, as any first read maps it
    transport.sent.clear()
    transport.parts.clear()
    tracemalloc.start()
    try:
        conn.data_received(command)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(BIG) // 4  # a copy of the value and one of it framed: 2x before
    assert transport.output() == b"$1048576\r\n" + BIG + b"\r\n"


class FakeLink:
    """A store connection that answers every GET with the same response object."""

    is_open = True

    def __init__(self, body: bytes) -> None:
        self.body = body

    def submit_get(self, key: bytes) -> asyncio.Future[Response]:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        future.set_result(Response(request_id=1, status=Status.OK, body=self.body))
        return future


async def test_a_large_value_from_the_store_server_is_written_as_it_came() -> None:
    server = CommandServer(CommandConfig(metrics_port=None, store="127.0.0.1:1"), clock=FakeClock())
    assert isinstance(server.keyspace, RemoteKeyspace)
    body = bytes(BIG)
    server.keyspace.pool._links[0] = FakeLink(body)  # type: ignore[call-overload]  # as connected
    conn, transport = _connect(server)
    conn.data_received(encode_command([b"GET", b"big"]))
    for _ in range(MAX_TURNS):
        if transport.parts:
            break
        await asyncio.sleep(0)
    assert any(part is body for part in transport.parts)
    assert transport.output() == b"$1048576\r\n" + BIG + b"\r\n"


async def test_a_large_get_behind_a_durable_write_waits_as_a_view(
    embedded: CommandServer,
) -> None:
    """SET then GET pipelined: the GET's reply waits for the SET's fsync, holding the
    value as the view of the map it was read as, then goes out after the SET's OK."""
    conn, transport = _connect(embedded)
    conn.data_received(encode_command([b"SET", b"small", b"1"]) + encode_command([b"GET", b"big"]))
    async with asyncio.timeout(10):
        while b"".join(bytes(p) for p in transport.sent).count(b"\r\n") < 3:
            transport.wrote.clear()
            await transport.wrote.wait()
    assert transport.output() == b"+OK\r\n$1048576\r\n" + BIG + b"\r\n"
    assert [p for p in transport.parts if _from_a_map(p)] == [BIG]
