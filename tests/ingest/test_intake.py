"""Intake.accept end to end in one process, with no sockets: the server's parts as
IngestServer wires them, a real store on disk and real I/O threads."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import xxhash
import zstandard

from postoffice.core.framing import Frame
from postoffice.ingest.chunkdigest import new_chunk
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import ConflictError, IngestStorageError
from postoffice.ingest.messages import MAX_CHUNKS, MAX_STATUS_RANGES, Chunk, FileId, UploadState
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.protocol import decode, encode
from postoffice.ingest.published import PublishedRecords
from postoffice.ingest.server import IngestServer


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[IngestServer]:
    """An IngestServer taking chunks, without its listeners (startup() would bind them)."""
    config = IngestConfig(
        sys_base=0, data_base=0, x=1, data_dir=tmp_path, fsync=False, cleanup_interval_s=3600
    )
    srv = IngestServer(config)
    srv.pool.start()
    await srv.blocking(srv.store.open)
    config.files_path.mkdir(parents=True)
    srv.intake.open()
    yield srv
    srv.intake.close()
    srv.pool.close()
    srv.singles.close()
    srv.assembler.close()


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
