"""Intake.accept end to end in one process, with no sockets: the server's parts as
IngestServer wires them, a real store on disk and real I/O threads."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard

from postoffice.ingest.chunkdigest import new_chunk
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import IngestStorageError
from postoffice.ingest.messages import Chunk, FileId, UploadState
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
