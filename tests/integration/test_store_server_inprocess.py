"""The store server in-process, on a real socket and a real engine: when replies leave.

The real-process tests (tests/integration/test_store_server.py) cover the protocol; these
look inside, at the group commit: a durable write is answered only once an fsync covers
it, replies keep request order behind it, and one fsync answers every connection's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postoffice.core.framing import FrameDecoder, encode_parts
from postoffice.store.config import StoreConfig
from postoffice.store.server import StoreServer
from postoffice.store.wire import (
    NEED_DATA,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    RequestType,
    Response,
    StatsRequest,
    Status,
    decode_response,
    decode_stats_body,
    encode_request,
)
from tests.fakes import SyncGate, committer_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Peer:
    """A raw connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = FrameDecoder()
        self.next_id = 0

    @classmethod
    async def open(cls, server: StoreServer) -> Peer:
        host, port = server.addresses["store"]
        return cls(*await asyncio.open_connection(host, port))

    def send(self, *requests: Request, extra: bytes = b"") -> None:
        wire = b""
        for request in requests:
            self.next_id += 1
            wire += encode_request(request, self.next_id)
        self.writer.write(wire + extra)

    async def read(self, count: int, timeout_s: float = 10) -> list[Response]:
        out: list[Response] = []
        async with asyncio.timeout(timeout_s):
            while len(out) < count:
                event = self.frames.next_event()
                if event is NEED_DATA:
                    block = await self.reader.read(1 << 16)
                    if not block:
                        break
                    self.frames.feed(block)
                    continue
                out.append(decode_response(event))
        return out

    async def nothing_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                return not await self.reader.read(1)
        except TimeoutError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[StoreServer]:
    config = StoreConfig(port=0, metrics_port=None, data_dir=tmp_path, durability="always")
    srv = StoreServer(config)
    await srv.startup()
    try:
        yield srv
    finally:
        await srv.shutdown()


async def test_a_durable_put_is_answered_only_after_its_fsync(server: StoreServer) -> None:
    gate = SyncGate(server.commit)
    peer = await Peer.open(server)
    peer.send(PutRequest(key=b"k", value=b"v"), GetRequest(key=b"k"), PingRequest())
    assert await peer.nothing_within(0.3)  # the fsync is held: no reply, not even the GET's
    assert gate.calls
    gate.opened.set()
    replies = await peer.read(3)
    assert [(r.request_id, r.status) for r in replies] == [
        (1, Status.OK),
        (2, Status.OK),
        (3, Status.OK),
    ]
    assert replies[1].body == b"v"  # the GET behind the PUT read the new value
    await peer.close()


async def test_one_fsync_answers_every_connection(server: StoreServer) -> None:
    gate = SyncGate(server.commit)
    first = await Peer.open(server)
    first.send(PutRequest(key=b"first", value=b"1"))
    while not gate.calls:  # the first sync is running (held)
        await asyncio.sleep(0.01)
    peers = [await Peer.open(server) for _ in range(20)]
    for i, peer in enumerate(peers):
        peer.send(*(PutRequest(key=b"p%d-%d" % (i, n), value=b"x" * 100) for n in range(5)))
    async with asyncio.timeout(10):  # every write is appended while the first sync is held
        while server.stats.by_type[RequestType.PUT] < 101:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # and the loop iteration that appended the last one is over
    gate.opened.set()
    assert [r.status for r in await first.read(1)] == [Status.OK]
    for peer in peers:
        assert [r.status for r in await peer.read(5)] == [Status.OK] * 5
    # The first sync was asked for ticket 1 and covers all that was written when it ran,
    # so every reply may leave after it. The committer then syncs for the newest ticket
    # asked for, 101, at most once more (that sync may not have started yet when the
    # replies are read): two fsyncs at most for 101 writes on 21 connections.
    assert gate.calls[0] == 1
    assert gate.calls[1:] in ([], [101])
    stats = decode_stats_body((await _call(first, StatsRequest())).body)
    assert stats["requests_put"] == 101
    fsyncs = stats["engine_fsyncs"]
    assert isinstance(fsyncs, int)
    assert fsyncs <= 2
    for peer in (first, *peers):
        await peer.close()


async def _call(peer: Peer, request: Request) -> Response:
    peer.send(request)
    return (await peer.read(1))[0]


async def test_a_bad_frame_behind_owed_replies_waits_for_them(server: StoreServer) -> None:
    gate = SyncGate(server.commit)
    peer = await Peer.open(server)
    peer.send(PutRequest(key=b"a", value=b"1"), extra=b"NOT A FRAME AT ALL, SORRY")
    assert await peer.nothing_within(0.3)
    gate.opened.set()
    replies = await peer.read(3)
    assert [r.status for r in replies] == [Status.OK, Status.BAD_REQUEST]
    assert "bad frame magic" in replies[1].body.decode()
    assert await peer.reader.read(1) == b""  # then closed
    await peer.close()
    other = await Peer.open(server)
    assert (await _call(other, GetRequest(key=b"a"))).body == b"1"
    await other.close()


async def test_a_failed_fsync_fails_the_writes_it_covers(server: StoreServer) -> None:
    from postoffice.store.errors import StoreStorageError

    committer = committer_of(server.commit)
    real_sync = committer.sync
    failures = [StoreStorageError("cannot fsync the log: disk on fire")]

    def sync(ticket: int) -> int:
        if failures:
            raise failures.pop()
        return real_sync(ticket)

    committer.sync = sync
    peer = await Peer.open(server)
    peer.send(PutRequest(key=b"a", value=b"1"), GetRequest(key=b"a"))
    failed, read = await peer.read(2)
    assert failed.status is Status.STORAGE
    assert failed.body == b"cannot fsync the log: disk on fire"
    assert read.status is Status.OK  # not a write: only the writes fail
    assert (await _call(peer, PutRequest(key=b"b", value=b"2"))).status is Status.OK
    await peer.close()


async def test_replies_wait_in_order_up_to_the_in_flight_limit(tmp_path: Path) -> None:
    config = StoreConfig(
        port=0, metrics_port=None, data_dir=tmp_path, durability="always", max_in_flight=8
    )
    srv = StoreServer(config)
    await srv.startup()
    try:
        gate = SyncGate(srv.commit)
        peer = await Peer.open(srv)
        puts = [PutRequest(key=b"k%02d" % i, value=b"%d" % i) for i in range(30)]
        peer.send(*puts, *(GetRequest(key=p.key) for p in puts))
        assert await peer.nothing_within(0.3)
        (conn,) = list(srv.manager)  # stopped reading at 8 owed replies
        assert len(conn.owed) == 8  # type: ignore[attr-defined]
        gate.opened.set()
        replies = await peer.read(60)
        assert [r.request_id for r in replies] == list(range(1, 61))
        assert [r.body for r in replies[30:]] == [p.value for p in puts]
        await peer.close()
    finally:
        await srv.shutdown()


async def test_garbage_in_a_good_frame_keeps_the_connection(server: StoreServer) -> None:
    peer = await Peer.open(server)
    peer.writer.write(encode_parts(0x03, 0, 5, b"\x00"))  # PUT payload too short
    peer.writer.write(encode_parts(0x02, 1, 6, b"key"))  # GET with a flag set
    peer.writer.write(encode_parts(0x02, 0, 7, b"k" * 1025))  # GET key over the limit
    peer.writer.write(encode_parts(0x7F, 0, 8, b""))  # unknown type
    replies = await peer.read(4)
    assert [(r.request_id, r.status) for r in replies] == [
        (5, Status.BAD_REQUEST),
        (6, Status.BAD_REQUEST),
        (7, Status.TOO_LARGE),
        (8, Status.BAD_REQUEST),
    ]
    assert replies[0].body == b"put payload of 1 bytes, expected at least 2"
    assert replies[2].body == b"get key of 1025 bytes exceeds limit 1024"
    assert (await _call(peer, PingRequest())).status is Status.OK
    await peer.close()


@pytest.fixture
async def frame_pages(tmp_path: Path) -> AsyncIterator[StoreServer]:
    """A server whose SCAN page budget is a whole frame, so only the frame cuts a page."""
    config = StoreConfig(
        port=0, metrics_port=None, data_dir=tmp_path, max_scan_page_bytes=16 * 1024 * 1024
    )
    srv = StoreServer(config)
    await srv.startup()
    try:
        yield srv
    finally:
        await srv.shutdown()


async def test_a_scan_page_is_cut_to_fit_one_frame(frame_pages: StoreServer) -> None:
    from postoffice.store.wire import ScanRequest, decode_scan_body, next_start

    peer = await Peer.open(frame_pages)
    big = 7 * 1024 * 1024  # two fit one 16 MiB frame, three do not
    for key in (b"a", b"b", b"c"):
        assert (await _call(peer, PutRequest(key=key, value=key * big))).status is Status.OK
    first = decode_scan_body((await _call(peer, ScanRequest(limit=10))).body)
    assert [key for key, _ in first.items] == [b"a", b"b"]
    assert first.more
    start = next_start(first)
    assert start == b"b\0"
    rest = decode_scan_body((await _call(peer, ScanRequest(start=start, limit=10))).body)
    assert [(key, len(value)) for key, value in rest.items] == [(b"c", big)]
    assert not rest.more
    huge = b"h" * (16 * 1024 * 1024 - 8)  # fits a PUT frame, not a page with its head
    assert (await _call(peer, PutRequest(key=b"h", value=huge))).status is Status.OK
    refused = await _call(peer, ScanRequest(start=b"h", limit=1))
    assert refused.status is Status.TOO_LARGE
    assert refused.body == b"scan item b'h' of 16777208 bytes does not fit one response frame"
    assert (await _call(peer, GetRequest(key=b"c"))).body == b"c" * big  # still served
    await peer.close()


async def test_scan_more_is_zero_when_exactly_the_limit_remained(server: StoreServer) -> None:
    """`more` is exact: the server looks one item ahead, so no page is empty with more."""
    from postoffice.store.wire import ScanRequest, decode_scan_body, next_start

    peer = await Peer.open(server)
    for key in (b"k1", b"k2", b"k3", b"l1"):
        assert (await _call(peer, PutRequest(key=key, value=key))).status is Status.OK
    exact = decode_scan_body((await _call(peer, ScanRequest(prefix=b"k", limit=3))).body)
    assert [key for key, _ in exact.items] == [b"k1", b"k2", b"k3"]
    assert not exact.more
    first = decode_scan_body((await _call(peer, ScanRequest(prefix=b"k", limit=2))).body)
    assert [key for key, _ in first.items] == [b"k1", b"k2"]
    assert first.more
    start = next_start(first)
    last = decode_scan_body(
        (await _call(peer, ScanRequest(prefix=b"k", start=start, limit=2))).body
    )
    assert [key for key, _ in last.items] == [b"k3"]
    assert not last.more
    await peer.close()


async def test_a_request_with_id_0_is_refused_with_id_0_and_closes(server: StoreServer) -> None:
    """Id 0 is the server's, for replies that answer no request; each ends the connection."""
    peer = await Peer.open(server)
    peer.send(PutRequest(key=b"before", value=b"1"))
    peer.writer.write(encode_parts(0x01, 0, 0, b""))  # PING with the reserved id
    peer.send(PutRequest(key=b"after", value=b"2"))  # never read: the connection is lost
    replies = await peer.read(3)
    assert [(r.request_id, r.status) for r in replies] == [(1, Status.OK), (0, Status.BAD_REQUEST)]
    assert replies[1].body == (
        b"request id 0 is reserved for replies that answer no request, "
        b"expected 1..18446744073709551615"
    )
    assert await peer.reader.read(1) == b""
    await peer.close()
    other = await Peer.open(server)
    assert (await _call(other, GetRequest(key=b"after"))).status is Status.NOT_FOUND
    await other.close()


async def test_a_broken_frame_with_a_readable_header_is_answered_to_its_id(
    server: StoreServer,
) -> None:
    peer = await Peer.open(server)
    wire = bytearray(encode_parts(0x01, 0, 77, b""))
    wire[7] = 1  # the reserved field
    peer.writer.write(bytes(wire))
    (reply,) = await peer.read(1)
    assert (reply.request_id, reply.status) == (77, Status.BAD_REQUEST)
    assert reply.body == b"frame reserved field 0x0001, expected 0"
    assert await peer.reader.read(1) == b""
    await peer.close()


async def test_a_put_value_is_bounded_by_the_frame_and_over_it_closes(server: StoreServer) -> None:
    """16 MiB - 3 is the largest value with a 1-byte key; one more is a broken frame."""
    from postoffice.core.framing import HEADER, MAGIC, VERSION

    limit = 16 * 1024 * 1024
    peer = await Peer.open(server)
    largest = b"v" * (limit - 3)
    assert (await _call(peer, PutRequest(key=b"k", value=largest))).status is Status.OK
    assert (await _call(peer, GetRequest(key=b"k"))).body == largest
    payload_len = limit + 1  # key length, key, a value of 16 MiB - 2
    peer.writer.write(HEADER.pack(MAGIC, VERSION, 0x03, 0, 0, 41, payload_len, 0) + b"\0\x01k")
    (reply,) = await peer.read(1)
    assert (reply.request_id, reply.status) == (41, Status.TOO_LARGE)
    assert reply.body == b"frame payload length 16777217 exceeds limit 16777216"
    assert await peer.reader.read(1) == b""
    await peer.close()


async def test_flags_with_a_right_crc_are_a_bad_request_a_wrong_crc_closes(
    server: StoreServer,
) -> None:
    """The store names no self-checked flag: the CRC-32 is checked whatever the flags."""
    from postoffice.core.framing import HEADER, MAGIC, VERSION

    peer = await Peer.open(server)
    peer.writer.write(encode_parts(0x02, 0x0002, 5, b"key"))  # unknown flag, CRC right
    peer.writer.write(HEADER.pack(MAGIC, VERSION, 0x01, 0x0002, 0, 6, 0, 0))  # empty: CRC 0
    flagged, empty = await peer.read(2)
    assert (flagged.request_id, flagged.status) == (5, Status.BAD_REQUEST)
    assert flagged.body == b"frame flags 0x0002 set, expected 0 or 0x0001 (traced)"
    assert (empty.request_id, empty.status) == (6, Status.BAD_REQUEST)
    assert (await _call(peer, PingRequest())).status is Status.OK  # still open
    peer.writer.write(HEADER.pack(MAGIC, VERSION, 0x02, 0x0001, 0, 8, 3, 0) + b"key")
    (broken,) = await peer.read(1)  # sent self-checked: CRC field 0 for a real payload
    assert (broken.request_id, broken.status) == (8, Status.BAD_REQUEST)
    assert broken.body.startswith(b"payload checksum 0x")
    assert await peer.reader.read(1) == b""
    await peer.close()


@pytest.mark.parametrize("durability", ["interval", "never"])
async def test_without_fsync_a_reads_puts_are_written_once_and_answered_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    """Under `interval` and `never` no reply waits for an fsync, but a read's PUTs go to
    the log in one write(2) (not one each), and no OK leaves before its record is in the
    file."""
    config = StoreConfig(port=0, metrics_port=None, data_dir=tmp_path, durability=durability)
    srv = StoreServer(config)
    await srv.startup()
    writes: list[int] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        writes.append(len(data))
        return real_pwrite(fd, data, offset)

    try:
        commit = srv.commit  # writes go out once per loop iteration, with no fsync to wait for
        assert commit is not None
        assert commit.committer is None
        peer = await Peer.open(srv)
        monkeypatch.setattr(os, "pwrite", pwrite)
        puts = [PutRequest(key=b"k%03d" % i, value=b"v" * 100) for i in range(200)]
        peer.send(*puts, GetRequest(key=b"k199"))
        replies = await peer.read(201)
        assert [(r.request_id, r.status) for r in replies] == [
            (i, Status.OK) for i in range(1, 202)
        ]
        assert replies[-1].body == b"v" * 100
        log_dir = tmp_path / "store" / "log"
        assert sum(p.stat().st_size for p in log_dir.iterdir()) >= 200 * 100
        assert 1 <= len(writes) <= 10
        await peer.close()
    finally:
        monkeypatch.undo()
        await srv.shutdown()
