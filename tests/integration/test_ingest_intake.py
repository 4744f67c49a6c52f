"""Intake.accept end to end in one process, with no sockets: the server's parts as
IngestServer wires them, a real store on disk and real I/O threads."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard

from postoffice.core.errors import ConfigError
from postoffice.core.framing import Frame
from postoffice.ingest import reports as reports_module
from postoffice.ingest.chunkdigest import new_chunk
from postoffice.ingest.config import SMALL_UPLOAD_CHUNKS, IngestConfig
from postoffice.ingest.errors import (
    AssemblyError,
    ConflictError,
    IngestStorageError,
    OutOfRangeError,
    TooManyUploadsError,
)
from postoffice.ingest.events import AckHub, EventHub
from postoffice.ingest.messages import (
    MAX_CHUNKS,
    MAX_STATUS_RANGES,
    Chunk,
    FileId,
    UploadState,
    file_id_hex,
)
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.protocol import decode, encode
from postoffice.ingest.published import PublishedRecords
from postoffice.ingest.reports import FAILED_HOLD_S, IngestStats, Reports, published_message
from postoffice.ingest.server import IngestServer

#: A real IngestServer in this process: its I/O threads and disk, waited for by polling.
pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **settings: Any) -> AsyncIterator[IngestServer]:
    """An IngestServer taking chunks, without its listeners (startup() would bind them)."""
    config = IngestConfig(
        sys_base=0,
        data_base=0,
        x=1,
        data_dir=tmp_path,
        fsync=False,
        cleanup_interval_s=3600,
        **settings,
    )
    srv = IngestServer(config)
    srv.pool.start()
    await srv.blocking(srv.store.open)
    config.files_path.mkdir(parents=True)
    srv.intake.open()
    try:
        yield srv
    finally:
        srv.intake.close()
        srv.pool.close()
        srv.singles.close()
        srv.assembler.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[IngestServer]:
    """An IngestServer with the default settings (see `running`)."""
    async with running(tmp_path) as srv:
        yield srv


def one_chunk(name: str, content: bytes, *, file_id: FileId | None = None) -> Chunk:
    data = zstandard.ZstdCompressor().compress(content)
    return new_chunk(
        file_id=file_id or FileId(os.urandom(16)),
        index=0,
        total=1,
        size=len(data),
        name=name,
        payload_digest=xxhash.xxh3_128_digest(data),
        data=data,
    )


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_a_one_chunk_upload_whose_publish_fails_is_refused_and_leaves_nothing(
    server: IngestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its ACK would say the file is published: a publish that fails (here its record, on
    a full disk) is answered STORAGE instead, and nothing of it stays behind; sent again
    once the disk has room, it is published."""

    def full(self: PublishedRecords, infos: object) -> None:
        raise IngestStorageError(f"cannot append to {self.path}: No space left on device")

    chunk = one_chunk("report.txt", b"a report\n" * 100)
    with monkeypatch.context() as patched:
        patched.setattr(PublishedRecords, "write_many", full)
        with pytest.raises(IngestStorageError, match="No space left on device"):
            await server.accept_chunk(chunk)
    assert entries(tmp_path / "files") == []
    assert server.store.info(chunk.file_id) is None  # not stored as patches either
    assert server.store.payloads() == []
    assert server.query(chunk.file_id).state is UploadState.UNKNOWN
    assert server.stats.published == 0

    ack = await server.accept_chunk(chunk)
    assert (ack.complete, ack.committed, ack.total) == (True, 1, 1)
    assert (tmp_path / "files" / "report.txt").read_bytes() == b"a report\n" * 100
    assert server.query(chunk.file_id).state is UploadState.PUBLISHED


async def test_a_large_one_chunk_upload_whose_publish_fails_is_refused_too(
    server: IngestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk too large for a batch is published alone, by another road: the same rule."""

    def full(self: PublishedRecords, info: object) -> None:
        raise IngestStorageError(f"cannot append to {self.path}: No space left on device")

    chunk = one_chunk("large.bin", os.urandom(400 * 1024))
    with monkeypatch.context() as patched:
        patched.setattr(PublishedRecords, "write", full)
        with pytest.raises(IngestStorageError, match="No space left on device"):
            await server.accept_chunk(chunk)
    assert entries(tmp_path / "files") == []
    assert server.store.payloads() == []
    ack = await server.accept_chunk(chunk)
    assert ack.complete
    assert (tmp_path / "files" / "large.bin").stat().st_size == 400 * 1024


async def test_a_chunk_of_another_content_under_a_published_id_conflicts(
    server: IngestServer, tmp_path: Path
) -> None:
    """Before, any chunk of a published id was told PUBLISHED, as if its bytes were."""
    chunk = one_chunk("one.txt", b"the first content\n")
    assert (await server.accept_chunk(chunk)).complete
    again = await server.accept_chunk(chunk)
    assert again.published
    other = one_chunk("one.txt", b"another content\n", file_id=chunk.file_id)
    with pytest.raises(ConflictError, match="not of the payload published under that id"):
        await server.accept_chunk(other)
    renamed = one_chunk("two.txt", b"the first content\n", file_id=chunk.file_id)
    with pytest.raises(ConflictError, match="not of the payload published under that id"):
        await server.accept_chunk(renamed)
    assert (tmp_path / "files" / "one.txt").read_bytes() == b"the first content\n"


async def test_two_contents_racing_under_one_id_publish_exactly_one(
    server: IngestServer, tmp_path: Path
) -> None:
    """Two senders' chunks arrive interleaved before any is committed: the content whose
    chunk was taken first owns the id, every chunk of the other is refused, and the file
    published is the first's, whole."""
    file_id = FileId(os.urandom(16))
    contents = [os.urandom(20_000), os.urandom(20_000)]
    uploads = []
    for content in contents:
        payload = zstandard.ZstdCompressor().compress(content)
        pieces = [payload[i : i + 4096] for i in range(0, len(payload), 4096)]
        uploads.append(
            [
                new_chunk(
                    file_id=file_id,
                    index=index,
                    total=len(pieces),
                    size=len(payload),
                    name="race.bin",
                    payload_digest=xxhash.xxh3_128_digest(payload),
                    data=piece,
                )
                for index, piece in enumerate(pieces)
            ]
        )
    assert len(uploads[0]) == len(uploads[1]) > 2
    published = asyncio.Event()
    server.events.listeners.append(
        lambda record: published.set() if record["event"] == "published" else None
    )
    # Interleaved, each sender's first chunk at another index than the other's.
    order = [c for pair in zip(uploads[0], reversed(uploads[1]), strict=True) for c in pair]
    results = await asyncio.gather(*(server.accept_chunk(c) for c in order), return_exceptions=True)
    winner = 0 if not isinstance(results[0], BaseException) else 1
    for chunk, result in zip(order, results, strict=True):
        mine = chunk.payload_digest == uploads[winner][0].payload_digest
        if mine:
            assert not isinstance(result, BaseException), result
        else:
            assert isinstance(result, ConflictError), result
    async with asyncio.timeout(10):
        await published.wait()
    assert server.query(file_id).state is UploadState.PUBLISHED
    assert (tmp_path / "files" / "race.bin").read_bytes() == contents[winner]


async def test_a_multi_chunk_upload_conflicts_with_a_one_chunk_publish_in_flight(
    server: IngestServer, tmp_path: Path
) -> None:
    single = one_chunk("one.txt", b"published as one chunk\n")
    data = zstandard.ZstdCompressor().compress(b"sent as two chunks\n" * 10)
    half = new_chunk(
        file_id=single.file_id,
        index=0,
        total=2,
        size=len(data),
        name="one.txt",
        payload_digest=xxhash.xxh3_128_digest(data),
        data=data[: len(data) // 2],
    )
    results = await asyncio.gather(
        server.accept_chunk(single), server.accept_chunk(half), return_exceptions=True
    )
    assert not isinstance(results[0], BaseException)
    assert results[0].complete
    assert isinstance(results[1], ConflictError)
    assert (tmp_path / "files" / "one.txt").read_bytes() == b"published as one chunk\n"


async def test_query_of_a_sparse_huge_upload_lists_at_most_the_status_limit(
    server: IngestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other index committed of 2**24: the STATUS lists the first MAX_STATUS_RANGES
    missing ranges (a client decoder refuses more) and is built from the committed
    indexes, not from a walk over all 2**24."""
    file_id = FileId(os.urandom(16))
    committed = frozenset(range(0, 2 * MAX_STATUS_RANGES + 10, 2))
    info = PayloadInfo(
        file_id=file_id,
        name="sparse.bin",
        total=MAX_CHUNKS,
        size=MAX_CHUNKS,
        committed=committed,
        created=0.0,
        updated=0.0,
    )
    monkeypatch.setattr(server.store, "info", lambda fid: info if fid == file_id else None)
    status = server.query(file_id)
    assert len(status.missing) == MAX_STATUS_RANGES
    assert status.missing[:2] == ((1, 1), (3, 3))
    decoded = decode(Frame(type=0x12, flags=0, request_id=1, payload=encode(status, 1)[24:]))
    assert decoded == status


# -- one-chunk uploads when larger ones are assembled via .part ----------------------------


async def test_a_one_chunk_upload_is_published_before_its_ack_when_assembling_via_part(
    tmp_path: Path,
) -> None:
    """Its ACK COMPLETE says the file is published: with --via-part it went the patch road
    before, acknowledged once stored, while its assembly had not even started."""
    async with running(tmp_path, assemble_via_part=True) as server:
        chunk = one_chunk("via-part.txt", b"published before the ack\n" * 40)
        ack = await server.accept_chunk(chunk)
        assert (ack.complete, ack.committed, ack.total) == (True, 1, 1)
        assert (tmp_path / "files" / "via-part.txt").read_bytes() == (
            b"published before the ack\n" * 40
        )
        assert server.query(chunk.file_id).state is UploadState.PUBLISHED
        assert server.store.payloads() == []


# -- uploads in progress and the chunks they are cut into ----------------------------------


def chunks_of(
    payload: bytes, step: int, *, name: str = "cut.bin", file_id: FileId | None = None
) -> list[Chunk]:
    """`payload` cut into chunks of `step` bytes (the last shorter), in index order."""
    pieces = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
    file_id = file_id or FileId(os.urandom(16))
    return [
        new_chunk(
            file_id=file_id,
            index=index,
            total=len(pieces),
            size=len(payload),
            name=name,
            payload_digest=xxhash.xxh3_128_digest(payload),
            data=piece,
        )
        for index, piece in enumerate(pieces)
    ]


async def test_a_chunk_that_would_start_an_upload_past_max_uploads_is_busy(
    tmp_path: Path,
) -> None:
    """Each upload in progress costs a directory and two files: past max_uploads a new one
    is refused with BUSY, the ones in progress go on, and one that ends makes room."""
    async with running(tmp_path, max_uploads=2) as server:
        payload = zstandard.ZstdCompressor().compress(os.urandom(3000))
        uploads = [chunks_of(payload, 1024, name=f"u{n}.bin") for n in range(3)]
        for upload in uploads[:2]:
            assert not (await server.accept_chunk(upload[0])).complete
        with pytest.raises(
            TooManyUploadsError,
            match=r"^chunk 1 of [0-9a-f]{32} would start an upload: 2 uploads in progress, "
            r"limit 2$",
        ):
            await server.accept_chunk(uploads[2][1])
        assert server.store.info(uploads[2][0].file_id) is None
        assert entries(tmp_path / "ingest" / "patches") == sorted(
            file_id_hex(u[0].file_id) for u in uploads[:2]
        )
        # One-chunk uploads are published, never in progress: not refused.
        assert (await server.accept_chunk(one_chunk("small.txt", b"small\n"))).complete
        # The uploads in progress go on, and the one that is published makes room.
        for chunk in uploads[0][1:]:
            await server.accept_chunk(chunk)
        async with asyncio.timeout(10):
            while server.store.payloads()[1:]:
                await asyncio.sleep(0.01)
        assert (await server.accept_chunk(uploads[2][1])).committed == 1
        # CONFIG SET max-uploads: lowered below the count, it refuses every new upload.
        server.set_max_uploads(1)
        with pytest.raises(TooManyUploadsError, match=r"2 uploads in progress, limit 1$"):
            await server.accept_chunk(chunks_of(payload, 1024)[0])
        assert server.config.max_uploads == 1


async def test_chunks_cut_below_the_minimum_are_refused_past_sixteen_chunks(
    tmp_path: Path,
) -> None:
    """One upload could make 2**24 patches of a byte each (16 million inodes for 16 MiB):
    past SMALL_UPLOAD_CHUNKS chunks, each but the last must hold min_chunk_bytes."""
    async with running(tmp_path, min_chunk_bytes=1024) as server:
        payload = zstandard.ZstdCompressor().compress(os.urandom(40_000))
        tiny = chunks_of(payload, 1000)
        assert len(tiny) > SMALL_UPLOAD_CHUNKS
        with pytest.raises(
            OutOfRangeError,
            match=rf"^upload [0-9a-f]{{32}} of {len(payload)} bytes cannot have {len(tiny)} "
            r"chunks: past 16, every chunk but the last holds at least 1024 bytes$",
        ):
            await server.accept_chunk(tiny[0])
        # A total that fits its size, and one chunk (not the last) cut short.
        fitting = chunks_of(payload, 1024, name="fitting.bin")
        short = new_chunk(
            file_id=FileId(os.urandom(16)),
            index=3,
            total=fitting[3].total,
            size=fitting[3].size,
            name="short.bin",
            payload_digest=fitting[3].payload_digest,
            data=fitting[3].data[:1000],
        )
        with pytest.raises(
            OutOfRangeError,
            match=r"^chunk 3 of [0-9a-f]{32} holds 1000 bytes, below the minimum 1024 for "
            r"all but the last of more than 16 chunks$",
        ):
            await server.accept_chunk(short)
        sparse = new_chunk(
            file_id=FileId(os.urandom(16)),
            index=5,
            total=MAX_CHUNKS,
            size=MAX_CHUNKS,
            name="sparse.bin",
            payload_digest=bytes(16),
            data=b"x" * 1024,
        )
        with pytest.raises(
            OutOfRangeError,
            match=r"^upload [0-9a-f]{32} of 16777216 bytes cannot have 16777216 chunks: past "
            r"16, every chunk but the last holds at least 1024 bytes$",
        ):
            await server.accept_chunk(sparse)
        assert server.store.payloads() == []
        # Chunks of the minimum, the last one shorter: published.
        assert len(fitting) > SMALL_UPLOAD_CHUNKS
        assert len(fitting[-1].data) < 1024
        acks = [await server.accept_chunk(chunk) for chunk in reversed(fitting)]
        assert acks[-1].complete
        # Sixteen chunks or fewer may be cut as small as they like.
        small = zstandard.ZstdCompressor().compress(os.urandom(2900))
        few = chunks_of(small, 182, name="few.bin")
        assert len(few) == SMALL_UPLOAD_CHUNKS
        for chunk in few:
            await server.accept_chunk(chunk)
        async with asyncio.timeout(10):
            while server.stats.published < 2:
                await asyncio.sleep(0.01)
        assert server.query(fitting[0].file_id).state is UploadState.PUBLISHED


# -- failed uploads: what they refuse, and for how long ------------------------------------


async def wait_failed(server: IngestServer, file_id: FileId) -> None:
    async with asyncio.timeout(10):
        while server.query(file_id).state is not UploadState.FAILED or server.store.info(file_id):
            await asyncio.sleep(0.01)


async def test_garbage_under_a_file_id_does_not_lock_its_owner_out(server: IngestServer) -> None:
    """Anyone who knows a file id can make its upload fail; the failure refused the id until
    a restart, so the owner's own content was refused with ASSEMBLY. Now a chunk of another
    payload digest starts the upload afresh (one chunk or many)."""
    for total in (1, 2):
        file_id = FileId(os.urandom(16))
        garbage = os.urandom(3000)
        for chunk in chunks_of(garbage, -(-len(garbage) // total), file_id=file_id):
            with contextlib.suppress(AssemblyError):
                await server.accept_chunk(chunk)
        await wait_failed(server, file_id)
        # The chunks of the content that failed are still refused (its sender's in flight).
        with pytest.raises(AssemblyError, match=rf"^upload {file_id_hex(file_id)} failed: "):
            await server.accept_chunk(chunks_of(garbage, len(garbage), file_id=file_id)[0])
        content = os.urandom(5000)
        payload = zstandard.ZstdCompressor().compress(content)
        owner = chunks_of(payload, -(-len(payload) // total), name="own.bin", file_id=file_id)
        for chunk in owner:
            await server.accept_chunk(chunk)
        async with asyncio.timeout(10):
            while server.query(file_id).state is not UploadState.PUBLISHED:
                await asyncio.sleep(0.01)
        assert (server.config.files_path / "own.bin").read_bytes() == content
        done = server.store.published(file_id)
        assert done is not None
        assert server.final_event(file_id) == published_message(done)


async def test_a_failure_refuses_its_content_only_for_the_hold(server: IngestServer) -> None:
    """After FAILED_HOLD_S the same content is tried afresh (and fails again on its own);
    QUERY says FAILED until then."""
    clock = [1_000_000.0]
    server.reports.wall = lambda: clock[0]
    garbage = new_chunk(
        file_id=FileId(os.urandom(16)),
        index=0,
        total=1,
        size=4,
        name="bad.zst",
        payload_digest=xxhash.xxh3_128_digest(b"nope"),
        data=b"nope",
    )
    with pytest.raises(AssemblyError):
        await server.accept_chunk(garbage)
    clock[0] += FAILED_HOLD_S - 0.5
    with pytest.raises(AssemblyError, match=r"failed: "):
        await server.accept_chunk(garbage)
    assert server.stats.assembly_failures == 1  # refused, not tried
    clock[0] += 1.0
    with pytest.raises(AssemblyError):
        await server.accept_chunk(garbage)
    assert server.stats.assembly_failures == 2  # tried afresh, failed again
    assert server.query(garbage.file_id).state is UploadState.FAILED


async def test_cleanup_forgets_failed_uploads_older_than_the_ttl(server: IngestServer) -> None:
    """Failed uploads stayed in memory until the process ended."""
    clock = [1_000_000.0]
    server.reports.wall = lambda: clock[0]
    ids = []
    for n in range(3):
        chunk = new_chunk(
            file_id=FileId(os.urandom(16)),
            index=0,
            total=1,
            size=4,
            name=f"bad{n}.zst",
            payload_digest=xxhash.xxh3_128_digest(b"nope"),
            data=b"nope",
        )
        ids.append(chunk.file_id)
        with pytest.raises(AssemblyError):
            await server.accept_chunk(chunk)
        clock[0] += 100
    assert server.reports.failures == 3
    server.set_ttl(250)
    report = await server.cleanup_now()
    assert report.expired_failures == 1  # failed 300 s ago; the others 200 and 100
    assert [server.query(fid).state for fid in ids] == [
        UploadState.UNKNOWN,
        UploadState.FAILED,
        UploadState.FAILED,
    ]
    assert server.final_event(ids[0]) is None
    assert server.metrics()["failed_uploads"] == 2


def test_failed_uploads_remembered_are_bounded_oldest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reports_module, "MAX_FAILED_UPLOADS", 3)
    reports = Reports(stats=IngestStats(), events=EventHub(), acks=AckHub())
    ids = [FileId(bytes([n]) * 16) for n in range(5)]
    for file_id in ids:
        reports.assembly_failed(
            file_id,
            name="x.bin",
            total=1,
            size=1,
            payload_digest=None,
            error=AssemblyError("not a zstd frame"),
        )
    assert [reports.failure(fid) is not None for fid in ids] == [False, False, True, True, True]


def test_the_connection_limits_of_the_data_and_ack_ports_come_from_the_settings(
    tmp_path: Path,
) -> None:
    """They were the connection layer's defaults, with no way to change them."""
    config = IngestConfig(
        data_dir=tmp_path,
        request_timeout_s=5,
        max_partial_bytes=1 << 20,
        output_hard_limit_bytes=1 << 20,
        output_soft_limit_bytes=512 * 1024,
        output_soft_limit_s=3,
    )
    server = IngestServer(config)
    for manager in (server.data_manager, server.sys_manager):
        limits = manager.limits
        assert (limits.request_timeout_s, limits.max_partial_bytes) == (5, 1 << 20)
        assert (limits.output_hard_limit_bytes, limits.output_soft_limit_bytes) == (
            1 << 20,
            512 * 1024,
        )
        assert limits.output_soft_limit_s == 3
        assert limits.max_request_bytes == server.max_frame_payload
    with pytest.raises(ConfigError, match=r"^setting 'output_hard_limit_bytes' must be"):
        IngestConfig(output_hard_limit_bytes=1000)


async def test_a_chunk_its_replication_refuses_is_not_committed(
    server: IngestServer, tmp_path: Path
) -> None:
    """In cluster mode the object store's put comes before the commit: a put that fails
    leaves nothing stored, and the chunk is refused with STORAGE."""
    from postoffice.ingest.cluster import ClusterError

    async def refuse(chunk: Chunk) -> None:
        raise ClusterError(f"cannot put chunks/{file_id_hex(chunk.file_id)}/{chunk.index:08d}")

    server.intake.replicate = refuse
    chunk = one_chunk("kept.txt", b"not yet\n")
    chunk = new_chunk(
        file_id=chunk.file_id,
        index=0,
        total=2,
        size=len(chunk.data) + 10,
        name="kept.txt",
        payload_digest=chunk.payload_digest,
        data=chunk.data,
    )
    with pytest.raises(ClusterError, match="cannot put") as refused:
        await server.accept_chunk(chunk)
    assert refused.value.wire_code == "STORAGE"
    assert server.store.info(chunk.file_id) is None
    assert server.query(chunk.file_id).state is UploadState.UNKNOWN


async def test_a_replicated_one_chunk_upload_is_put_before_its_commit_then_assembled(
    server: IngestServer, tmp_path: Path
) -> None:
    """In cluster mode a one-chunk upload takes the patch road: put, committed, then
    assembled (not published by the one-chunk road before its ACK)."""
    seen: list[tuple[int, bool]] = []

    async def put(chunk: Chunk) -> None:
        seen.append((chunk.index, server.store.info(chunk.file_id) is None))

    server.intake.replicate = put
    chunk = one_chunk("single.txt", b"one chunk, replicated\n")
    ack = await server.accept_chunk(chunk)
    assert (ack.committed, ack.total, ack.complete) == (1, 1, True)
    assert seen == [(0, True)]  # put while nothing of the upload was committed
    for _ in range(200):
        if server.store.published(chunk.file_id) is not None:
            break
        await asyncio.sleep(0.01)
    assert (tmp_path / "files" / "single.txt").read_bytes() == b"one chunk, replicated\n"
    assert not server.singles.pending
