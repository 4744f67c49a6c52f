"""IngestServer in-process, spoken to over real sockets as docs/protocols/ingest.md says:
what a client written from the docs alone sees on the data and ack ports."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard

from postoffice.ingest import assembler as assembler_module
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.connections import DataConnection
from postoffice.ingest.errors import ErrorCode
from postoffice.ingest.messages import (
    Ack,
    ChunkStored,
    ErrorReply,
    Failed,
    FileId,
    Message,
    Ping,
    Pong,
    Query,
    Status,
    Subscribe,
    Subscribed,
    UploadState,
)
from postoffice.ingest.protocol import NEED_DATA, MessageDecoder, encode, encode_chunk
from postoffice.ingest.server import IngestServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

#: How long a test waits for one message before it calls the server silent.
REPLY_TIMEOUT_S = 5.0


def config(tmp_path: Path, **changes: Any) -> IngestConfig:
    settings: dict[str, Any] = {
        "sys_base": 0,
        "data_base": 0,
        "x": 1,
        "data_dir": tmp_path,
        "fsync": False,
        "cleanup_interval_s": 3600,
        "shutdown_timeout_s": 5,
    }
    return IngestConfig(**(settings | changes))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[IngestServer]:
    srv = IngestServer(config(tmp_path))
    await srv.startup()
    yield srv
    await srv.shutdown()


class Peer:
    """A raw client of one binary port: frames out, the server's messages in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = MessageDecoder()

    @classmethod
    async def open(cls, port: int) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, wire: bytes) -> None:
        self.writer.write(wire)
        await self.writer.drain()

    async def next(self) -> tuple[int, Message]:
        """The next message, within REPLY_TIMEOUT_S."""
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            while (event := self.decoder.next_event()) is NEED_DATA:
                block = await self.reader.read(65536)
                assert block, "the server closed the connection"
                self.decoder.feed(block)
        return event

    async def at_eof(self) -> bool:
        """Whether the server closes the connection (within REPLY_TIMEOUT_S) with nothing
        more to say."""
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            rest = await self.reader.read()
        return rest == b""

    def reset(self) -> None:
        """Drop the connection with a TCP reset, as a crashed client or a broken link does."""
        sock: socket.socket = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass  # reset: closed all the same


Connect = Callable[[int], Awaitable[Peer]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open raw connections to a port; all are closed when the test ends."""
    peers: list[Peer] = []

    async def open_peer(port: int) -> Peer:
        peers.append(await Peer.open(port))
        return peers[-1]

    yield open_peer
    for peer in peers:
        await peer.close()


def data_port(server: IngestServer, index: int = 0) -> int:
    return server.addresses[f"data{index}"][1]


def ack_port(server: IngestServer) -> int:
    return server.addresses["ack"][1]


def zstd_pieces(count: int) -> tuple[list[bytes], int]:
    """A real zstd payload in `count` pieces and its size: a streaming assembly waits for
    the pieces still missing instead of failing the upload."""
    payload = zstandard.ZstdCompressor(level=1).compress(os.urandom(2000 * count))
    step = -(-len(payload) // count)
    pieces = [payload[i : i + step] for i in range(0, len(payload), step)]
    assert len(pieces) == count
    return pieces, len(payload)


def chunk_wire(
    file_id: bytes,
    index: int,
    pieces: list[bytes],
    size: int,
    request_id: int,
    name: str = "up.bin",
) -> bytes:
    return encode_chunk(
        file_id=FileId(file_id),
        index=index,
        total=len(pieces),
        size=size,
        name=name,
        payload_digest=xxhash.xxh3_128_digest(b"".join(pieces)),
        data=pieces[index],
        request_id=request_id,
    )


async def subscribe(connect: Connect, server: IngestServer, file_id: bytes) -> Peer:
    peer = await connect(ack_port(server))
    await peer.send(encode(Subscribe(file_ids=(FileId(file_id),)), 1))
    assert await peer.next() == (1, Subscribed(file_ids=(FileId(file_id),)))
    return peer


async def events_until_pong(peer: Peer) -> list[Message]:
    """Every event the ack port has sent so far: a PING's PONG comes after them."""
    await peer.send(encode(Ping(), 99))
    events: list[Message] = []
    while (event := await peer.next()) != (99, Pong()):
        events.append(event[1])
    return events


async def committed(server: IngestServer, file_id: bytes, count: int) -> None:
    """Wait until `count` chunks of the upload are committed."""
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        while True:
            info = server.store.info(FileId(file_id))
            if info is not None and len(info.committed) >= count:
                return
            await asyncio.sleep(0.01)


class StoreGate:
    """Holds every ChunkStore.store_chunk call on its thread until `opened` is set."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.entered = threading.Semaphore(0)
        self.opened = threading.Event()

    def __call__(self, **kwargs: Any) -> Any:
        self.entered.release()
        assert self.opened.wait(REPLY_TIMEOUT_S * 2), "the gate was never opened"
        return self.real(**kwargs)

    async def wait_entered(self, count: int) -> None:
        for _ in range(count):
            assert await asyncio.to_thread(self.entered.acquire, timeout=REPLY_TIMEOUT_S)


def gate_store(server: IngestServer, monkeypatch: pytest.MonkeyPatch) -> StoreGate:
    gate = StoreGate(server.store.store_chunk)
    monkeypatch.setattr(server.store, "store_chunk", gate)
    return gate


# -- BAD_FRAME -----------------------------------------------------------------------------


def _bad_crc(request_id: int) -> bytes:
    wire = bytearray(encode(Query(file_id=FileId(bytes(16))), request_id))
    wire[20:24] = b"\xde\xad\xbe\xef"  # not the payload's CRC-32
    return bytes(wire)


def _too_long(request_id: int) -> bytes:
    # A header announcing 16 MiB: refused from the header alone.
    return struct.pack(">2sBBHHQII", b"PO", 1, 0x02, 0, 0, request_id, 16 * 1024 * 1024, 0)


def _bad_magic(request_id: int) -> bytes:
    return b"XY" + encode(Ping(), request_id)[2:]


@pytest.mark.parametrize(
    ("make", "expected_id", "message"),
    [
        (_bad_crc, 7, r"^payload checksum 0x[0-9a-f]{8} does not match header 0xdeadbeef$"),
        (_too_long, 9, r"^frame payload length 16777216 exceeds limit \d+$"),
        (_bad_magic, 0, r"^bad frame magic b'XY', expected b'PO'$"),
    ],
    ids=["crc", "length", "magic"],
)
async def test_bad_frame_carries_the_request_id_when_the_header_was_readable(
    server: IngestServer,
    connect: Connect,
    make: Callable[[int], bytes],
    expected_id: int,
    message: str,
) -> None:
    peer = await connect(data_port(server))
    await peer.send(make(expected_id or 5))
    request_id, reply = await peer.next()
    assert isinstance(reply, ErrorReply)
    assert reply.code is ErrorCode.BAD_FRAME
    assert request_id == expected_id
    assert re.match(message, reply.message)
    assert await peer.at_eof()


# -- CHUNK_STORED: once per newly committed chunk ------------------------------------------


async def test_chunks_committed_after_their_connection_was_reset_are_announced_once(
    server: IngestServer, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack port is the reliable channel: a chunk that commits after the connection it
    came on broke is still announced there, and on /events, exactly once."""
    records: list[dict[str, object]] = []
    server.events.listeners.append(records.append)
    file_id = os.urandom(16)
    pieces, size = zstd_pieces(6)
    watcher = await subscribe(connect, server, file_id)
    gate = gate_store(server, monkeypatch)
    uploader = await connect(data_port(server))
    await uploader.send(b"".join(chunk_wire(file_id, i, pieces, size, i + 1) for i in range(4)))
    await gate.wait_entered(4)  # all four are being stored
    uploader.reset()
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        while any(isinstance(c, DataConnection) for c in server.data_manager):  # the reset
            await asyncio.sleep(0.01)
    gate.opened.set()
    await committed(server, file_id, 4)
    events = [await watcher.next() for _ in range(4)]
    assert all(request_id == 0 for request_id, _ in events)
    stored = [event for _, event in events if isinstance(event, ChunkStored)]
    assert sorted(event.index for event in stored) == [0, 1, 2, 3]
    assert sorted(event.committed for event in stored) == [1, 2, 3, 4]
    assert await events_until_pong(watcher) == []  # no second announcement
    telemetry = [r for r in records if r["event"] == "chunk_stored"]
    assert sorted(r["index"] for r in telemetry) == [0, 1, 2, 3]  # type: ignore[type-var]


async def test_a_duplicate_of_an_acknowledged_chunk_is_not_announced(
    server: IngestServer, connect: Connect
) -> None:
    records: list[dict[str, object]] = []
    server.events.listeners.append(records.append)
    file_id = os.urandom(16)
    pieces, size = zstd_pieces(3)
    watcher = await subscribe(connect, server, file_id)
    uploader = await connect(data_port(server))
    await uploader.send(chunk_wire(file_id, 0, pieces, size, 1))
    assert await uploader.next() == (
        1,
        Ack(file_id=FileId(file_id), index=0, committed=1, total=3),
    )
    assert await events_until_pong(watcher) == [
        ChunkStored(file_id=FileId(file_id), index=0, committed=1, total=3)
    ]
    await uploader.send(chunk_wire(file_id, 0, pieces, size, 2))
    assert await uploader.next() == (
        2,
        Ack(file_id=FileId(file_id), index=0, committed=1, total=3, duplicate=True),
    )
    assert await events_until_pong(watcher) == []
    assert [r["event"] for r in records].count("chunk_stored") == 1


# -- ABORT ---------------------------------------------------------------------------------


async def control(connect: Connect, server: IngestServer, line: str) -> bytes:
    """One inline command on the control port, and its reply line."""
    peer = await connect(server.addresses["control"][1])
    await peer.send(line.encode() + b"\r\n")
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        return await peer.reader.readline()


async def query(uploader: Peer, file_id: bytes, request_id: int) -> Status:
    await uploader.send(encode(Query(file_id=FileId(file_id)), request_id))
    got_id, status = await uploader.next()
    assert got_id == request_id
    assert isinstance(status, Status)
    return status


async def test_an_aborted_upload_is_forgotten_and_a_resend_starts_afresh(
    server: IngestServer, connect: Connect
) -> None:
    file_id = os.urandom(16)
    pieces, size = zstd_pieces(3)
    watcher = await subscribe(connect, server, file_id)
    uploader = await connect(data_port(server))
    await uploader.send(chunk_wire(file_id, 0, pieces, size, 1))
    await uploader.send(chunk_wire(file_id, 1, pieces, size, 2))
    assert {(await uploader.next())[0] for _ in range(2)} == {1, 2}
    assert await control(connect, server, f"ABORT {file_id.hex()}") == b"+OK\r\n"
    events = await events_until_pong(watcher)
    assert events[-1] == Failed(
        file_id=FileId(file_id), code=ErrorCode.ABORTED, message="upload aborted"
    )
    assert await query(uploader, file_id, 3) == Status(
        file_id=FileId(file_id),
        state=UploadState.UNKNOWN,
        total=0,
        committed=0,
        size=0,
        name="",
        missing=(),
    )
    latecomer = await subscribe(connect, server, file_id)
    assert await events_until_pong(latecomer) == []  # nothing to replay: it is forgotten
    await uploader.send(chunk_wire(file_id, 1, pieces, size, 4))
    assert await uploader.next() == (4, Ack(file_id=FileId(file_id), index=1, committed=1, total=3))
    status = await query(uploader, file_id, 5)
    assert (status.state, status.committed, status.missing) == (
        UploadState.UPLOADING,
        1,
        ((0, 0), (2, 2)),
    )


# -- QUERY of a failed upload --------------------------------------------------------------


async def test_a_failed_upload_answers_query_with_what_it_was(
    server: IngestServer, connect: Connect
) -> None:
    """FAILED keeps the upload's total, size and name; its chunks were dropped."""
    file_id = os.urandom(16)
    garbage = [b"PK\x03\x04 not zstandard", b"at all"]
    size = sum(map(len, garbage))
    watcher = await subscribe(connect, server, file_id)
    uploader = await connect(data_port(server))
    await uploader.send(chunk_wire(file_id, 0, garbage, size, 1, name="bad.zip"))
    assert (await uploader.next())[0] == 1
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        while not any(isinstance(event, Failed) for event in await events_until_pong(watcher)):
            pass
    assert await query(uploader, file_id, 2) == Status(
        file_id=FileId(file_id),
        state=UploadState.FAILED,
        total=2,
        committed=0,
        size=size,
        name="bad.zip",
        missing=(),
    )


async def test_a_failed_one_chunk_upload_answers_query_with_what_it_was(
    server: IngestServer, connect: Connect
) -> None:
    file_id = os.urandom(16)
    garbage = [b"not zstandard either"]
    uploader = await connect(data_port(server))
    await uploader.send(chunk_wire(file_id, 0, garbage, len(garbage[0]), 1, name="one.bin"))
    request_id, reply = await uploader.next()
    assert (request_id, getattr(reply, "code", None)) == (1, ErrorCode.ASSEMBLY)
    assert await query(uploader, file_id, 2) == Status(
        file_id=FileId(file_id),
        state=UploadState.FAILED,
        total=1,
        committed=0,
        size=len(garbage[0]),
        name="one.bin",
        missing=(),
    )


# -- a data port that closes (CONFIG SET x lowered) ----------------------------------------


async def test_a_draining_data_port_refuses_new_chunks_and_finishes_those_in_flight(
    tmp_path: Path, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = IngestServer(config(tmp_path, x=2))
    await srv.startup()
    try:
        file_id = os.urandom(16)
        pieces, size = zstd_pieces(3)
        gate = gate_store(srv, monkeypatch)
        uploader = await connect(data_port(srv, 1))
        await uploader.send(chunk_wire(file_id, 0, pieces, size, 1))
        await gate.wait_entered(1)  # chunk 0 is in flight
        assert await control(connect, srv, "CONFIG SET x 1") == b"+OK\r\n"
        await uploader.send(chunk_wire(file_id, 1, pieces, size, 2))
        request_id, reply = await uploader.next()  # at once: chunk 0 still waits
        assert request_id == 2
        assert isinstance(reply, ErrorReply)
        assert reply.code is ErrorCode.SHUTTING_DOWN
        assert reply.message == "data port is closing, chunk 1 not stored"
        gate.opened.set()
        assert await uploader.next() == (
            1,
            Ack(file_id=FileId(file_id), index=0, committed=1, total=3),
        )
        assert await uploader.at_eof()
        info = srv.store.info(FileId(file_id))
        assert info is not None
        assert info.committed == {0}
    finally:
        await srv.shutdown()


# -- the size checks -----------------------------------------------------------------------


async def test_a_one_chunk_upload_with_more_data_than_its_size_is_a_conflict(
    server: IngestServer, connect: Connect
) -> None:
    """As for any chunk: data past the upload's size contradicts it (CONFLICT), whichever
    road the chunk would take."""
    file_id = os.urandom(16)
    payload = zstandard.ZstdCompressor().compress(b"one chunk\n" * 100)
    uploader = await connect(data_port(server))
    await uploader.send(chunk_wire(file_id, 0, [payload], len(payload) - 1, 1))
    request_id, reply = await uploader.next()
    assert request_id == 1
    assert isinstance(reply, ErrorReply)
    assert reply.code is ErrorCode.CONFLICT
    assert reply.message == (
        f"chunk 0 of {file_id.hex()} brings the payload to {len(payload)} bytes,"
        f" over its size {len(payload) - 1}"
    )
    assert (await query(uploader, file_id, 2)).state is UploadState.UNKNOWN


async def test_an_upload_whose_chunks_fall_short_of_its_size_fails_in_assembly(
    server: IngestServer, connect: Connect
) -> None:
    file_id = os.urandom(16)
    payload = zstandard.ZstdCompressor().compress(b"short\n" * 100)
    pieces = [payload[:10], payload[10:]]
    watcher = await subscribe(connect, server, file_id)
    uploader = await connect(data_port(server))
    for index in (0, 1):
        await uploader.send(chunk_wire(file_id, index, pieces, len(payload) + 5, index + 1))
    acks = [await uploader.next() for _ in range(2)]
    assert any(isinstance(ack, Ack) and ack.complete for _, ack in acks)
    events: list[Message] = []
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        while not any(isinstance(event, Failed) for event in events):
            events += await events_until_pong(watcher)
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert failed.code is ErrorCode.ASSEMBLY
    assert failed.message == (
        f"payload {file_id.hex()} has size {len(payload) + 5},"
        f" its patches hold {len(payload)} bytes"
    )


# -- TTL cleanup ---------------------------------------------------------------------------


async def test_an_idle_upload_outlives_its_ttl_while_its_streaming_assembly_waits(
    tmp_path: Path, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doc's rule: a cleanup pass removes an upload idle past its TTL, but not while
    its streaming assembly still waits (STREAM_IDLE_S) for the next chunk."""
    monkeypatch.setattr(assembler_module, "STREAM_IDLE_S", 2.0)
    monkeypatch.setattr(assembler_module, "STREAM_POLL_S", 0.05)
    srv = IngestServer(config(tmp_path, ttl_s=1))
    await srv.startup()
    try:
        file_id = os.urandom(16)
        pieces, size = zstd_pieces(2)
        uploader = await connect(data_port(srv))
        await uploader.send(chunk_wire(file_id, 0, pieces, size, 1))
        assert (await uploader.next())[0] == 1
        assert FileId(file_id) in srv.assembler.running
        await asyncio.sleep(1.2)  # past the TTL
        assert await control(connect, srv, "CLEANUP") == b":0\r\n"
        assert (await query(uploader, file_id, 2)).state is UploadState.UPLOADING
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            while FileId(file_id) in srv.assembler.running:  # it gives up
                await asyncio.sleep(0.02)
        assert await control(connect, srv, "CLEANUP") == b":1\r\n"
        assert (await query(uploader, file_id, 3)).state is UploadState.UNKNOWN
    finally:
        await srv.shutdown()
