"""Unit tests of the ingest client: error mapping and the send pipeline against an
in-memory fake server (no sockets). Payload preparation and chunk frames are in
test_payload.py, the /info parser in test_links.py."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard

from postoffice.core.errors import BrokenError, ConfigError
from postoffice.ingest import errors as errors_module
from postoffice.ingest.client import sender as client_module
from postoffice.ingest.client.links import PIPELINE_DEPTH
from postoffice.ingest.client.payload import chunk_count, prepare, work_root
from postoffice.ingest.client.sender import IngestClient, error_for, send_files
from postoffice.ingest.errors import (
    AssemblyError,
    BadNameError,
    ChecksumError,
    ConflictError,
    ErrorCode,
    IngestError,
    IngestLimitError,
    IngestProtocolError,
    IngestStorageError,
    OutOfRangeError,
    UnknownFileError,
)
from postoffice.ingest.messages import (
    Ack,
    Chunk,
    ErrorReply,
    Failed,
    FileId,
    Message,
    Ping,
    Pong,
    Published,
    Query,
    Status,
    Subscribe,
    Subscribed,
    UploadState,
    missing_ranges,
)
from postoffice.ingest.protocol import MessageDecoder, NeedData, encode
from tests.fakes import FakeTransport
from tests.ingest.client.test_links import http

SEED = 20240611


def random_bytes(size: int, seed: int = SEED) -> bytes:
    """Incompressible bytes, so a small chunk size gives many chunks."""
    return random.Random(seed).randbytes(size)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.BAD_FRAME, IngestProtocolError),
        (ErrorCode.BAD_MESSAGE, IngestProtocolError),
        (ErrorCode.CHECKSUM, ChecksumError),
        (ErrorCode.CONFLICT, ConflictError),
        (ErrorCode.BAD_NAME, BadNameError),
        (ErrorCode.TOO_LARGE, IngestLimitError),
        (ErrorCode.OUT_OF_RANGE, OutOfRangeError),
        (ErrorCode.STORAGE, IngestStorageError),
        (ErrorCode.SHUTTING_DOWN, IngestError),
        (ErrorCode.UNKNOWN_FILE, UnknownFileError),
        (ErrorCode.ASSEMBLY, AssemblyError),
        (ErrorCode.ABORTED, IngestError),
    ],
)
def test_error_code_maps_to_its_exception(code: ErrorCode, cls: type[IngestError]) -> None:
    error = error_for(code, "the server's words")
    assert type(error) is cls
    assert str(error) == "the server's words"


def test_every_error_code_is_mapped() -> None:
    assert set(errors_module._ERRORS) == set(ErrorCode)


# --- client arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, r"'chunk_size' must be between 1 and 8388608, got 0"),
        ({"chunk_size": 8 * 1024 * 1024 + 1}, r"'chunk_size' must be between"),
        ({"parallel": 0}, r"'parallel' must be between 1 and 256, got 0"),
        ({"timeout_s": 0}, r"'timeout_s' must be at least"),
        ({"sys_base": 65533}, r"'sys_base' must be between 0 and 65535, got 65536"),
        ({"ports": 0}, r"'ports' must be between"),
        ({"ports": 2, "data_base": 65535}, r"'data_base' must be between 0 and 65535, got 65536"),
    ],
)
def test_bad_client_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IngestClient(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": []}, r"^'nodes' lists 0 addresses, expected 1 to 64$"),
        ({"nodes": [("h", p) for p in range(1000, 1065)]}, r"^'nodes' lists 65 addresses"),
        (
            {"nodes": [("a", 7000), ("b", 7010)], "ports": 2},
            r"^'ports' names one node's data ports: not with several nodes$",
        ),
        ({"nodes": [("a", 7000), ("b", 65533)]}, r"'sys_base' must be between 0 and 65535"),
        ({"nodes": [("a", 7000)], "failover_s": -1}, r"'failover_s' must be at least 0"),
    ],
)
def test_bad_cluster_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IngestClient(**kwargs)


# --- the send pipeline against an in-memory server ------------------------------------------------


class FakeConn:
    """One client connection as the fake server sees it."""

    def __init__(
        self, server: FakeServer, port: int, reader: asyncio.StreamReader, client: asyncio.Protocol
    ) -> None:
        self.server = server
        self.port = port
        self.reader = reader
        self.decoder = MessageDecoder()
        self.http = bytearray()
        self.hung_up = False
        self.held: list[tuple[Message, int]] = []
        self.flush_timer: asyncio.TimerHandle | None = None
        # The client's side: what it writes reaches this fake server at once.
        self.transport = FakeTransport(client, on_write=self.received, drop_after_close=True)

    @property
    def closed(self) -> bool:
        """Closed by either side."""
        return self.hung_up or self.transport.closed

    def reply(self, message: Message, request_id: int) -> None:
        if not self.closed:
            self.reader.feed_data(encode(message, request_id))

    def hold(self, message: Message, request_id: int) -> None:
        """Answer chunks only once PIPELINE_DEPTH wait (or, for the tail, a moment later)."""
        self.held.append((message, request_id))
        self.server.max_in_flight = max(self.server.max_in_flight, len(self.held))
        if len(self.held) >= PIPELINE_DEPTH:
            self.flush()
        elif self.flush_timer is None:
            self.flush_timer = asyncio.get_running_loop().call_later(0.05, self.flush)

    def flush(self) -> None:
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        held, self.held = self.held, []
        for message, request_id in held:
            self.reply(message, request_id)

    def hang_up(self) -> None:
        """The server closes the connection."""
        if not self.closed:
            self.hung_up = True
            self.reader.feed_eof()

    def received(self, data: bytes) -> None:
        self.server.writes[self.port] = self.server.writes.get(self.port, 0) + 1
        if self.port == self.server.sys_base:
            self.http += data
            if b"\r\n\r\n" in self.http:
                self.reader.feed_data(self.server.info_response)
                self.hang_up()
            return
        self.decoder.feed(data)
        while not isinstance(event := self.decoder.next_event(), NeedData):
            self.server.handle(self, *event)


class FakeServer:
    """Just enough of the ingest server: chunks, QUERY, SUBSCRIBE, PUBLISHED and FAILED."""

    def __init__(self, *, data_ports: tuple[int, ...] = (7100, 7101), sys_base: int = 7000) -> None:
        self.sys_base = sys_base
        self.data_ports = data_ports
        self.info_response = http(json.dumps({"data_ports": list(data_ports)}).encode())
        self.chunks: dict[bytes, dict[int, bytes]] = {}
        self.meta: dict[bytes, tuple[int, int, str]] = {}
        self.published: dict[bytes, Published] = {}
        self.failed: dict[bytes, Failed] = {}
        self.subscribers: dict[bytes, list[FakeConn]] = {}
        self.received: list[tuple[int, int]] = []  # (port, index) of every CHUNK
        self.connects: list[int] = []
        self.inject: dict[int, list[ErrorCode]] = {}  # index -> error codes to answer first
        self.inject_query: list[ErrorCode] = []  # error codes to answer QUERYs with first
        self.queries = 0
        self.inject_request_id_zero = False  # as the real server answers decode errors
        self.moved_message = ""  # the message of an injected MOVED, when not empty
        self.hang_up_at: set[int] = set()  # close the connection when these chunks arrive
        self.wrong_digest = False
        self.wrong_payload_digest = False
        self.fail_assembly: str | None = None
        self.hang_up_acks_at_publish = False
        self.hold_replies = False
        self.assemble_delay_s = 0.0  # lets a client reach its wait before the publish
        self.max_in_flight = 0
        self.tasks: list[asyncio.TimerHandle] = []
        self.writes: dict[int, int] = {}  # port -> write calls the client made on it
        self.subscribes: list[tuple[FileId, ...]] = []
        self.hang_up_at_subscribe = 0  # close the ack connection at the next N SUBSCRIBEs

    async def connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if port not in (*self.data_ports, self.sys_base, self.sys_base + 3):
            raise ConnectionRefusedError(111, "Connection refused")
        self.connects.append(port)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = FakeConn(self, port, reader, protocol).transport
        protocol.connection_made(transport)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    def handle(self, conn: FakeConn, request_id: int, message: Message) -> None:
        match message:
            case Chunk():
                self.chunk(conn, request_id, message)
            case Query(file_id=fid):
                self.queries += 1
                if self.inject_query:
                    code = self.inject_query.pop(0)
                    error = ErrorReply(code=code, message=f"injected {code.name.lower()}")
                    conn.reply(error, request_id)
                    return
                conn.reply(self.status(fid), request_id)
            case Subscribe(file_ids=ids):
                self.subscribes.append(ids)
                if self.hang_up_at_subscribe:
                    self.hang_up_at_subscribe -= 1
                    conn.hang_up()
                    return
                conn.reply(Subscribed(file_ids=ids), request_id)
                for fid in ids:
                    self.subscribers.setdefault(fid, []).append(conn)
                    done = self.published.get(fid) or self.failed.get(fid)
                    if done is not None:
                        conn.reply(done, 0)
            case Ping():
                conn.reply(Pong(), request_id)
            case _:
                raise AssertionError(f"unexpected {message!r}")

    def status(self, fid: FileId) -> Status:
        if fid in self.published:
            return Status(
                file_id=fid,
                state=UploadState.PUBLISHED,
                total=0,
                committed=0,
                size=0,
                name="",
                missing=(),
            )
        if fid not in self.meta:
            state = UploadState.FAILED if fid in self.failed else UploadState.UNKNOWN
            return Status(
                file_id=fid, state=state, total=0, committed=0, size=0, name="", missing=()
            )
        total, size, name = self.meta[fid]
        have = self.chunks[fid]
        missing = missing_ranges(have, total)
        return Status(
            file_id=fid,
            state=UploadState.UPLOADING,
            total=total,
            committed=len(have),
            size=size,
            name=name,
            missing=missing,
        )

    def chunk(self, conn: FakeConn, request_id: int, chunk: Chunk) -> None:
        self.received.append((conn.port, chunk.index))
        if chunk.index in self.hang_up_at:
            self.hang_up_at.discard(chunk.index)
            conn.hang_up()
            return
        codes = self.inject.get(chunk.index)
        if codes:
            code = codes.pop(0)
            rid = 0 if self.inject_request_id_zero else request_id
            message = f"injected {code.name.lower()}"
            if code is ErrorCode.MOVED and self.moved_message:
                message = self.moved_message
            conn.reply(ErrorReply(code=code, message=message), rid)
            return
        fid = chunk.file_id
        if fid in self.published:
            conn.reply(
                Ack(
                    file_id=fid,
                    index=chunk.index,
                    committed=chunk.total,
                    total=chunk.total,
                    published=True,
                ),
                request_id,
            )
            return
        meta = self.meta.setdefault(fid, (chunk.total, chunk.size, chunk.name))
        if meta != (chunk.total, chunk.size, chunk.name):
            conn.reply(ErrorReply(code=ErrorCode.CONFLICT, message="total changed"), request_id)
            return
        have = self.chunks.setdefault(fid, {})
        duplicate = chunk.index in have
        have[chunk.index] = bytes(chunk.data)
        self.failed.pop(fid, None)
        complete = len(have) == chunk.total
        (conn.hold if self.hold_replies else conn.reply)(
            Ack(
                file_id=fid,
                index=chunk.index,
                committed=len(have),
                total=chunk.total,
                duplicate=duplicate,
                complete=complete,
            ),
            request_id,
        )
        if complete:
            loop = asyncio.get_running_loop()
            self.tasks.append(loop.call_later(self.assemble_delay_s, self.assemble, fid))

    def assemble(self, fid: FileId) -> None:
        total, _, name = self.meta.pop(fid)
        have = self.chunks.pop(fid)
        payload = b"".join(have[i] for i in range(total))
        final: Published | Failed
        if self.fail_assembly is not None:
            final = Failed(file_id=fid, code=ErrorCode.ASSEMBLY, message=self.fail_assembly)
            self.failed[fid] = final
        else:
            reader = zstandard.ZstdDecompressor().stream_reader(payload, read_across_frames=True)
            output = reader.read()
            digest = xxhash.xxh3_128_digest(output + (b"!" if self.wrong_digest else b""))
            payload_digest = xxhash.xxh3_128_digest(
                payload + (b"!" if self.wrong_payload_digest else b"")
            )
            final = Published(
                file_id=fid,
                name=name,
                size=len(output),
                digest=digest,
                payload_digest=payload_digest,
            )
            self.published[fid] = final
            self.output = output
        if self.hang_up_acks_at_publish:  # the event is lost; a resubscribe replays it
            for conn in self.subscribers.pop(fid, []):
                conn.hang_up()
        for conn in self.subscribers.get(fid, []):
            conn.reply(final, 0)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries happen at once: tests never sleep."""
    monkeypatch.setattr(client_module, "RETRY_BACKOFF_S", (0.0, 0.0, 0.0))


def make_client(server: FakeServer, tmp_path: Path, **kwargs: Any) -> IngestClient:
    options: dict[str, Any] = {
        "ports": len(server.data_ports),
        "data_base": server.data_ports[0],
        "chunk_size": 1024,
        "parallel": 2,
        "timeout_s": 5.0,
        "work_dir": tmp_path / "work",
        "connect": server.connect,
    }
    options.update(kwargs)
    return IngestClient("127.0.0.1", server.sys_base, **options)


class TestSend:
    async def test_upload_is_published_and_verified(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        data = random_bytes(20_000)
        src = write(tmp_path / "r.bin", data)
        seen: list[tuple[int, int]] = []
        async with make_client(server, tmp_path) as client:
            result = await client.send(src, progress=lambda d, t: seen.append((d, t)))
        assert server.output == data
        assert result.name == "r.bin"
        assert (result.size, result.digest) == (len(data), xxhash.xxh3_128_digest(data))
        assert result.chunks == chunk_count(result.compressed_size, 1024) == result.sent_chunks
        assert result.skipped_chunks == 0
        assert not result.replaced
        assert seen[0] == (0, result.compressed_size)
        assert seen[-1] == (result.compressed_size, result.compressed_size)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert {port for port, _ in server.received} == {7100, 7101}
        assert list(work_root(tmp_path / "work").iterdir()) == []

    async def test_ports_are_discovered_from_info(self, server: FakeServer, tmp_path: Path) -> None:
        client = IngestClient(
            "127.0.0.1", 7000, 0, connect=server.connect, chunk_size=1024, work_dir=tmp_path
        )
        async with client:
            assert client.data_ports == (7100, 7101)
            await client.send(write(tmp_path / "a.txt", random_bytes(5000)))
        assert server.connects[0] == 7000

    async def test_unreachable_health_port_is_a_broken_error(self, tmp_path: Path) -> None:
        server = FakeServer(sys_base=7000)
        client = IngestClient("127.0.0.1", 8000, 0, connect=server.connect)
        with pytest.raises(BrokenError, match=r"^cannot read http://127\.0\.0\.1:8000/info"):
            await client.__aenter__()

    async def test_interrupted_upload_resumes_with_the_missing_chunks(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        data = random_bytes(30_000)
        src = write(tmp_path / "big.bin", data)
        server.inject = {5: [ErrorCode.CONFLICT]}
        async with make_client(server, tmp_path) as client:
            with pytest.raises(ConflictError, match=r"^chunk 5 of big\.bin \([0-9a-f]{32}\): "):
                await client.send(src)
        stored = set(next(iter(server.chunks.values())))
        assert 5 not in stored
        assert len(list(work_root(tmp_path / "work").iterdir())) == 2  # kept for the resume
        server.received.clear()
        async with make_client(server, tmp_path) as client:  # a restarted client
            result = await client.send(src)
        assert server.output == data
        assert sorted(i for _, i in server.received) == sorted(set(range(result.chunks)) - stored)
        assert result.skipped_chunks == len(stored)
        assert result.sent_chunks == result.chunks - len(stored)

    async def test_sending_a_published_file_again_sends_nothing(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        src = write(tmp_path / "a.txt", b"hello\n" * 1000)
        async with make_client(server, tmp_path) as client:
            first = await client.send(src)
            server.received.clear()
            again = await client.send(src)
        assert server.received == []
        assert (again.sent_chunks, again.skipped_chunks) == (0, first.chunks)
        assert again.digest == first.digest

    @pytest.mark.parametrize("request_id_zero", [False, True])
    async def test_retryable_errors_are_retried(
        self, server: FakeServer, tmp_path: Path, request_id_zero: bool
    ) -> None:
        data = random_bytes(8000)
        server.inject = {1: [ErrorCode.CHECKSUM, ErrorCode.STORAGE, ErrorCode.SHUTTING_DOWN]}
        server.inject_request_id_zero = request_id_zero
        async with make_client(server, tmp_path) as client:
            result = await client.send(write(tmp_path / "a.bin", data))
        assert server.output == data
        assert [i for _, i in server.received].count(1) == 4
        assert result.sent_chunks >= result.chunks

    async def test_retries_give_up_after_three(self, server: FakeServer, tmp_path: Path) -> None:
        server.inject = {0: [ErrorCode.CHECKSUM] * 4}
        async with make_client(server, tmp_path) as client:
            with pytest.raises(ChecksumError, match=r"^chunk 0 of a\.bin .*: injected checksum$"):
                await client.send(write(tmp_path / "a.bin", random_bytes(3000)))
        assert [i for _, i in server.received].count(0) == 4

    async def test_a_moved_chunk_goes_again_to_the_owner_named(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        """The fake is the owner it names: the chunk goes again over its links."""
        data = random_bytes(8000)
        server.inject = {2: [ErrorCode.MOVED, ErrorCode.MOVED]}
        server.moved_message = "moved fake 127.0.0.1:7000 7100,7101"
        async with make_client(server, tmp_path) as client:
            result = await client.send(write(tmp_path / "a.bin", data))
        assert server.output == data
        assert [i for _, i in server.received].count(2) == 3
        assert result.sent_chunks == result.chunks

    async def test_a_query_answered_shutting_down_fails_over_in_a_cluster(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        """A cluster node that drains refuses the upload's QUERY with SHUTTING_DOWN: the
        client asks the listed nodes in turn (the second is down here, and the first drains
        through two of them) instead of failing the upload."""
        data = random_bytes(8000)
        server.inject_query = [ErrorCode.SHUTTING_DOWN, ErrorCode.SHUTTING_DOWN]
        nodes = [("127.0.0.1", server.sys_base), ("127.0.0.1", server.sys_base + 1000)]
        async with make_client(
            server, tmp_path, ports=None, data_base=None, nodes=nodes, failover_s=10.0
        ) as client:
            result = await client.send(write(tmp_path / "a.bin", data))
        assert server.output == data
        assert server.queries == 3
        assert result.sent_chunks == result.chunks

    async def test_a_query_answered_shutting_down_fails_a_single_node_send(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        server.inject_query = [ErrorCode.SHUTTING_DOWN]
        async with make_client(server, tmp_path) as client:
            with pytest.raises(IngestError, match=r"^query of \w{32}: injected shutting_down$"):
                await client.send(write(tmp_path / "a.bin", random_bytes(8000)))

    async def test_a_moved_loop_is_cut_after_five_redirects(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        server.inject = {0: [ErrorCode.MOVED] * 6}
        server.moved_message = "moved fake 127.0.0.1:7000 7100,7101"
        async with make_client(server, tmp_path) as client:
            with pytest.raises(
                IngestError,
                match=r"^chunk 0 of a\.bin \(\w{32}\): moved more than 5 times, last to fake at "
                r"127\.0\.0\.1:7000: the nodes disagree about its owner$",
            ):
                await client.send(write(tmp_path / "a.bin", random_bytes(3000)))
        assert [i for _, i in server.received].count(0) == 6

    async def test_a_moved_reply_that_does_not_parse_fails_the_send(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        server.inject = {0: [ErrorCode.MOVED]}
        async with make_client(server, tmp_path) as client:
            with pytest.raises(
                IngestProtocolError,
                match=r"^moved message 'injected moved' is not 'moved <node> <host>:<port> "
                r"<ports>'$",
            ):
                await client.send(write(tmp_path / "a.bin", random_bytes(3000)))

    async def test_a_dropped_connection_is_reconnected(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        data = random_bytes(20_000)
        server.hang_up_at = {3, 11}
        async with make_client(server, tmp_path) as client:
            result = await client.send(write(tmp_path / "a.bin", data))
        assert server.output == data
        assert result.skipped_chunks == 0
        assert len([p for p in server.connects if p != 7003]) > 2

    async def test_a_gone_data_port_is_skipped(self, tmp_path: Path) -> None:
        server = FakeServer(data_ports=(7100,))
        data = random_bytes(6000)
        client = make_client(server, tmp_path, ports=2, data_base=7100)  # 7101 is gone
        async with client:
            await client.send(write(tmp_path / "a.bin", data))
        assert server.output == data
        assert {p for p, _ in server.received} == {7100}

    async def test_failed_assembly_raises(self, server: FakeServer, tmp_path: Path) -> None:
        server.fail_assembly = "decompressed output exceeds limit 10"
        async with make_client(server, tmp_path) as client:
            with pytest.raises(
                AssemblyError, match=r"^bomb not published: decompressed output exceeds limit 10$"
            ):
                await client.send(write(tmp_path / "bomb", b"\0" * 100_000))

    async def test_published_checksum_must_be_ours(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        server.wrong_digest = True
        async with make_client(server, tmp_path) as client:
            with pytest.raises(
                IngestError,
                match=r"^published digest [0-9a-f]{32} \(5 bytes\) "
                r"of a\.txt does not match ours [0-9a-f]{32} \(5 bytes\)$",
            ):
                await client.send(write(tmp_path / "a.txt", b"hello"))

    @pytest.mark.parametrize("zst", [False, True])
    async def test_published_payload_digest_must_be_ours(
        self, server: FakeServer, tmp_path: Path, zst: bool
    ) -> None:
        server.wrong_payload_digest = True
        src = (
            write(tmp_path / "a.txt.zst", zstandard.compress(b"hello"))
            if zst
            else write(tmp_path / "a.txt", b"hello")
        )
        async with make_client(server, tmp_path) as client:
            with pytest.raises(
                IngestError,
                match=r"^published payload digest [0-9a-f]{32} of a\.txt does not match ours "
                r"[0-9a-f]{32}: the server decompressed other bytes than we sent$",
            ):
                await client.send(src)

    async def test_zst_file_goes_as_it_is_and_is_kept(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        data = b"already compressed " * 500
        packed = zstandard.ZstdCompressor(level=19).compress(data)
        src = write(tmp_path / "doc.txt.zst", packed)
        async with make_client(server, tmp_path) as client:
            result = await client.send(src)
        assert result.name == "doc.txt"
        assert result.compressed_size == len(packed)
        assert result.payload_digest == xxhash.xxh3_128_digest(packed)
        assert (result.size, result.digest) == (len(data), xxhash.xxh3_128_digest(data))
        assert server.output == data
        assert src.read_bytes() == packed

    async def test_name_override(self, server: FakeServer, tmp_path: Path) -> None:
        async with make_client(server, tmp_path) as client:
            result = await client.send(write(tmp_path / "a.txt", b"x"), name="renamed.txt")
        assert result.name == "renamed.txt"

    async def test_send_files(self, server: FakeServer, tmp_path: Path) -> None:
        paths = [write(tmp_path / f"f{i}.txt", f"file {i}\n".encode() * 300) for i in range(3)]
        results = await send_files(
            paths,
            sys_base=7000,
            data_base=7100,
            ports=2,
            chunk_size=1024,
            work_dir=tmp_path / "work",
            connect=server.connect,
        )
        assert [r.name for r in results] == ["f0.txt", "f1.txt", "f2.txt"]
        assert len(server.published) == 3

    async def test_an_upload_that_failed_before_is_sent_again(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        """The server replays the old FAILED to a new subscriber; that is not this attempt's."""
        data = random_bytes(5000)
        src = write(tmp_path / "a.bin", data)
        server.fail_assembly = "output exceeds limit"
        async with make_client(server, tmp_path) as client:
            with pytest.raises(AssemblyError):
                await client.send(src)
            server.fail_assembly = None  # the operator raised the limit
            server.assemble_delay_s = 0.02  # so the stale FAILED is seen while waiting
            result = await client.send(src)
        assert server.output == data
        assert result.sent_chunks == result.chunks

    async def test_a_complete_but_unassembled_upload_is_nudged(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        data = random_bytes(5000)
        src = write(tmp_path / "a.bin", data)
        prepared = prepare(src, chunk_size=1024, work_dir=tmp_path / "work")
        payload = prepared.payload.read_bytes()
        server.meta[prepared.file_id] = (prepared.total, len(payload), "a.bin")
        server.chunks[prepared.file_id] = {
            i: payload[prepared.chunk_offset(i) :][: prepared.chunk_length(i)]
            for i in range(prepared.total)
        }
        async with make_client(server, tmp_path) as client:
            result = await client.send(src)
        assert [i for _, i in server.received] == [prepared.total - 1]
        assert server.output == data
        assert (result.sent_chunks, result.skipped_chunks) == (1, prepared.total - 1)

    async def test_publish_is_found_again_after_the_ack_port_drops(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        server.hang_up_acks_at_publish = True
        data = random_bytes(3000)
        async with make_client(server, tmp_path) as client:
            result = await client.send(write(tmp_path / "a.bin", data))
        assert result.digest == xxhash.xxh3_128_digest(data)
        assert server.connects.count(7003) == 2

    async def test_each_connection_pipelines_up_to_the_depth(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        server.hold_replies = True
        data = random_bytes(40_000)
        async with make_client(server, tmp_path, parallel=2) as client:
            await client.send(write(tmp_path / "a.bin", data))
        assert server.output == data
        assert server.max_in_flight == PIPELINE_DEPTH


class TestSmallFiles:
    """Many one-chunk uploads at once: shared SUBSCRIBEs, frames gathered, links in turn."""

    async def test_concurrent_sends_share_one_subscribe_and_gather_their_frames(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        sources = [write(tmp_path / f"s{i}.txt", random_bytes(300, seed=i)) for i in range(12)]
        async with make_client(server, tmp_path, parallel=2) as client:
            results = await asyncio.gather(*(client.send(p) for p in sources))
        assert [r.name for r in results] == [p.name for p in sources]
        assert all(r.sent_chunks == 1 for r in results)
        # One SUBSCRIBE for all twelve (and its PING), in one write.
        assert len(server.subscribes) == 1
        assert set(server.subscribes[0]) == {r.file_id for r in results}
        assert server.writes[7003] == 1
        # The chunks went over both links, one write each: the first send's chunk left
        # with the others.
        ports = [port for port, _ in server.received]
        assert sorted(set(ports)) == [7100, 7101]
        assert len(ports) == 12
        assert (server.writes[7100], server.writes[7101]) == (1, 1)
        for path, result in zip(sources, results, strict=True):
            assert server.published[result.file_id].digest == xxhash.xxh3_128_digest(
                path.read_bytes()
            )

    async def test_a_shared_subscribe_that_drops_is_retried_by_every_send(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        sources = [write(tmp_path / f"d{i}.txt", random_bytes(200, seed=i)) for i in range(5)]
        async with make_client(server, tmp_path, parallel=2) as client:
            server.hang_up_at_subscribe = 1
            results = await asyncio.gather(*(client.send(p) for p in sources))
        assert all(r.sent_chunks == 1 for r in results)
        assert set(server.subscribes[0]) == {r.file_id for r in results}
        assert len(server.subscribes) >= 2  # the dropped one, then again
        assert server.connects.count(7003) == 2

    async def test_a_send_that_is_cancelled_while_subscribing_does_not_stall_the_others(
        self, server: FakeServer, tmp_path: Path
    ) -> None:
        sources = [write(tmp_path / f"c{i}.txt", random_bytes(200, seed=i)) for i in range(4)]
        async with make_client(server, tmp_path, parallel=2) as client:
            first = asyncio.ensure_future(client.send(sources[0]))
            others = [asyncio.ensure_future(client.send(p)) for p in sources[1:]]
            await asyncio.sleep(0)  # every send has joined the first one's SUBSCRIBE
            first.cancel()
            results = await asyncio.gather(*others)
        assert [r.name for r in results] == [p.name for p in sources[1:]]
        with pytest.raises(asyncio.CancelledError):
            await first
