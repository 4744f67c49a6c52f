"""AsyncClient against a scripted server on a real socket: matching, breaking, failing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from postoffice.core.errors import BrokenError
from postoffice.core.framing import FrameDecoder
from postoffice.store.client import AsyncClient
from postoffice.store.errors import StoreRequestError
from postoffice.store.wire import Status, encode_response

# What the scripted server answers to the request ids it read (in the order read).
Script = Callable[[list[int]], bytes]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            frames = FrameDecoder()
            ids: list[int] = []
            while len(ids) < 3:
                block = await reader.read(1 << 16)
                if not block:
                    break
                frames.feed(block)
                batch: list[tuple[int, int, int, bytes]] = []
                frames.read_frames(batch, 100)
                ids += [request_id for _, _, request_id, _ in batch]
            writer.write(script(ids))
            await writer.drain()
            await reader.read()  # hold the connection until the client closes it
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_responses_are_matched_by_request_id(
    scripted: Callable[[Script], Awaitable[int]],
) -> None:
    def backwards(ids: list[int]) -> bytes:
        a, b, c = ids
        return (
            encode_response(c, Status.NOT_FOUND, b"no such key")
            + encode_response(b, Status.OK)
            + encode_response(a, Status.OK, b"value-a")
        )

    port = await scripted(backwards)
    client = await AsyncClient.connect("127.0.0.1", port)
    got = await asyncio.gather(client.get(b"a"), client.put(b"b", b"2"), client.get(b"c"))
    assert list(got) == [b"value-a", None, None]
    await client.close()


async def test_a_broken_frame_fails_only_what_is_still_waiting(
    scripted: Callable[[Script], Awaitable[int]],
) -> None:
    def one_then_garbage(ids: list[int]) -> bytes:
        return encode_response(ids[0], Status.OK, b"first") + b"XX garbage, not a frame"

    port = await scripted(one_then_garbage)
    client = await AsyncClient.connect("127.0.0.1", port)
    first, second, third = await asyncio.gather(
        client.get(b"a"), client.get(b"b"), client.get(b"c"), return_exceptions=True
    )
    assert first == b"first"  # answered before the garbage: delivered
    for failed in (second, third):
        assert isinstance(failed, BrokenError)
        assert "bad frame magic" in str(failed)
    assert not client.is_open
    with pytest.raises(BrokenError):
        client.submit_get(b"d")
    await client.close()


async def test_a_bad_status_byte_breaks_the_connection(
    scripted: Callable[[Script], Awaitable[int]],
) -> None:
    def bad_status(ids: list[int]) -> bytes:
        from postoffice.core.framing import encode_parts
        from postoffice.store.wire import RESPONSE_TYPE

        return encode_response(ids[0], Status.BUSY, b"too many") + encode_parts(
            RESPONSE_TYPE, 0, ids[1], b"\x63"
        )

    port = await scripted(bad_status)
    client = await AsyncClient.connect("127.0.0.1", port)
    busy, broken, _ = await asyncio.gather(
        client.put(b"a", b"1"), client.get(b"b"), client.get(b"c"), return_exceptions=True
    )
    assert isinstance(busy, StoreRequestError)
    assert busy.status is Status.BUSY
    assert isinstance(broken, BrokenError)
    assert "unknown response status 99" in str(broken)
    await client.close()


async def test_a_reply_with_the_reserved_id_fails_every_request_with_its_message(
    scripted: Callable[[Script], Awaitable[int]],
) -> None:
    def refused(ids: list[int]) -> bytes:
        return encode_response(0, Status.BUSY, b"max number of clients reached")

    port = await scripted(refused)
    client = await AsyncClient.connect("127.0.0.1", port)
    async with asyncio.timeout(10):
        results = await asyncio.gather(
            client.get(b"a"), client.get(b"b"), client.get(b"c"), return_exceptions=True
        )
    for failed in results:
        assert isinstance(failed, BrokenError)
        assert str(failed) == "store connection broken: BUSY: max number of clients reached"
    assert not client.is_open
    await client.close()
