"""AsyncClient against a scripted server over an in-memory transport: matching, breaking,
failing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from postoffice.core.errors import BrokenError
from postoffice.core.framing import FrameDecoder
from postoffice.store.client import AsyncClient
from postoffice.store.errors import StoreRequestError
from postoffice.store.wire import Status, encode_response
from tests.fakes import FakeTransport

# What the scripted server answers to the request ids it read (in the order read).
Script = Callable[[list[int]], bytes]
Connect = Callable[[Script], AsyncClient]


class _ScriptedPeer:
    """The server's end of a fake transport: once 3 requests are in, it answers with its
    script on the next loop turn (as a reply arrives in a later read), then stays open."""

    def __init__(self, client: AsyncClient, script: Script) -> None:
        self.client = client
        self.script = script
        self.frames = FrameDecoder()
        self.ids: list[int] = []

    def received(self, data: bytes) -> None:
        if len(self.ids) >= 3:
            return
        self.frames.feed(data)
        batch: list[tuple[int, int, int, bytes]] = []
        self.frames.read_frames(batch, 100)
        self.ids += [request_id for _, _, request_id, _ in batch]
        if len(self.ids) >= 3:
            asyncio.get_running_loop().call_soon(self.client.data_received, self.script(self.ids))


@pytest.fixture
def scripted() -> Connect:
    """Connect an AsyncClient to a scripted server over an in-memory transport."""

    def connect(script: Script) -> AsyncClient:
        client = AsyncClient()
        peer = _ScriptedPeer(client, script)
        client.connection_made(FakeTransport(client, on_write=peer.received))
        return client

    return connect


async def test_responses_are_matched_by_request_id(
    scripted: Connect,
) -> None:
    def backwards(ids: list[int]) -> bytes:
        a, b, c = ids
        return (
            encode_response(c, Status.NOT_FOUND, b"no such key")
            + encode_response(b, Status.OK)
            + encode_response(a, Status.OK, b"value-a")
        )

    client = scripted(backwards)
    got = await asyncio.gather(client.get(b"a"), client.put(b"b", b"2"), client.get(b"c"))
    assert list(got) == [b"value-a", None, None]
    await client.close()


async def test_a_broken_frame_fails_only_what_is_still_waiting(
    scripted: Connect,
) -> None:
    def one_then_garbage(ids: list[int]) -> bytes:
        return encode_response(ids[0], Status.OK, b"first") + b"XX garbage, not a frame"

    client = scripted(one_then_garbage)
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
    scripted: Connect,
) -> None:
    def bad_status(ids: list[int]) -> bytes:
        from postoffice.core.framing import encode_parts
        from postoffice.store.wire import RESPONSE_TYPE

        return encode_response(ids[0], Status.BUSY, b"too many") + encode_parts(
            RESPONSE_TYPE, 0, ids[1], b"\x63"
        )

    client = scripted(bad_status)
    busy, broken, _ = await asyncio.gather(
        client.put(b"a", b"1"), client.get(b"b"), client.get(b"c"), return_exceptions=True
    )
    assert isinstance(busy, StoreRequestError)
    assert busy.status is Status.BUSY
    assert isinstance(broken, BrokenError)
    assert "unknown response status 99" in str(broken)
    await client.close()


async def test_a_reply_with_the_reserved_id_fails_every_request_with_its_message(
    scripted: Connect,
) -> None:
    def refused(ids: list[int]) -> bytes:
        return encode_response(0, Status.BUSY, b"max number of clients reached")

    client = scripted(refused)
    async with asyncio.timeout(10):
        results = await asyncio.gather(
            client.get(b"a"), client.get(b"b"), client.get(b"c"), return_exceptions=True
        )
    for failed in results:
        assert isinstance(failed, BrokenError)
        assert str(failed) == "store connection broken: BUSY: max number of clients reached"
    assert not client.is_open
    await client.close()
