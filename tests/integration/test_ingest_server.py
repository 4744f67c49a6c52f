"""IngestServer in-process (ports picked by the kernel, no fsync): intake and assembly paths."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard

from postoffice.ingest import assembler as assembler_module
from postoffice.ingest import assembly
from postoffice.ingest import singles as singles_module
from postoffice.ingest.chunkdigest import new_chunk
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import AssemblyError, ConflictError, IngestStorageError
from postoffice.ingest.messages import Ack, Chunk, FileId, UploadState
from postoffice.ingest.server import IngestServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[IngestServer]:
    config = IngestConfig(
        sys_base=0, data_base=0, x=1, data_dir=tmp_path, fsync=False, cleanup_interval_s=3600
    )
    srv = IngestServer(config)
    await srv.startup()
    yield srv
    await srv.shutdown()


def one_chunk(name: str, content: bytes) -> Chunk:
    data = zstandard.ZstdCompressor().compress(content)
    return make_chunk(FileId(os.urandom(16)), 0, 1, len(data), name, data)


def make_chunk(
    file_id: FileId,
    index: int,
    total: int,
    size: int,
    name: str,
    data: bytes,
    *,
    payload: bytes | None = None,
) -> Chunk:
    """Chunk `index` of `payload` (for a one-chunk upload, `data` is the payload)."""
    return new_chunk(
        file_id=file_id,
        index=index,
        total=total,
        size=size,
        name=name,
        payload_digest=xxhash.xxh3_128_digest(data if payload is None else payload),
        data=data,
    )


def count_decompressions(monkeypatch: pytest.MonkeyPatch, *, fail_first: bool) -> list[int]:
    """Count the assemblies and the batched one-chunk decompressions (both roads); with
    `fail_first` the first of them raises a disk error."""
    calls: list[int] = []
    real_assemble, real_stage = assembly.assemble, assembly.stage

    def counted(real: Any) -> Any:
        def run(**kwargs: Any) -> Any:
            calls.append(1)
            if fail_first and len(calls) == 1:
                raise OSError(28, "No space left on device")
            return real(**kwargs)

        return run

    monkeypatch.setattr(assembler_module, "assemble", counted(real_assemble))
    monkeypatch.setattr(singles_module, "assemble", counted(real_assemble))
    monkeypatch.setattr(singles_module, "stage", counted(real_stage))
    return calls


async def wait_for(path: Path, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await asyncio.to_thread(path.exists):
            await asyncio.sleep(0.02)


async def test_a_crashed_assembly_is_restarted(
    server: IngestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_decompressions(monkeypatch, fail_first=True)
    data = zstandard.ZstdCompressor().compress(b"survives a crash\n" * 100)
    file_id = FileId(os.urandom(16))
    half = len(data) // 2
    acks = [
        await server.accept_chunk(
            make_chunk(file_id, i, 2, len(data), "retry.txt", piece, payload=data)
        )
        for i, piece in enumerate((data[:half], data[half:]))
    ]
    assert acks[-1].complete
    await wait_for(tmp_path / "files" / "retry.txt")
    assert (tmp_path / "files" / "retry.txt").read_bytes() == b"survives a crash\n" * 100
    assert len(calls) == 2
    assert server.stats.assembly_failures == 1
    # The file is renamed into place before the published record is written and the
    # upload's state moves on, so the state may trail the file by a moment.
    async with asyncio.timeout(10):
        while server.query(file_id).state is not UploadState.PUBLISHED:
            await asyncio.sleep(0.02)


async def test_a_bomb_fails_for_good_and_frees_the_upload(tmp_path: Path) -> None:
    config = IngestConfig(
        sys_base=0, data_base=0, x=1, data_dir=tmp_path, fsync=False, max_output_bytes=1000
    )
    srv = IngestServer(config)
    await srv.startup()
    try:
        chunk = one_chunk("bomb.bin", b"\0" * 100_000)
        # One chunk is published before its ACK, so the chunk itself is refused.
        with pytest.raises(AssemblyError, match=r"exceeds limit 1000"):
            await srv.accept_chunk(chunk)
        assert srv.query(chunk.file_id).state is UploadState.FAILED
        with pytest.raises(AssemblyError, match=r"failed: .*exceeds limit 1000"):
            await srv.accept_chunk(chunk)  # a re-send is refused too
        assert srv.store.info(chunk.file_id) is None  # patches dropped
        assert list((tmp_path / "files").iterdir()) == []
        failed = srv.final_event(chunk.file_id)
        assert failed is not None
        assert "exceeds limit" in getattr(failed, "message", "")
    finally:
        await srv.shutdown()


async def test_one_assembly_even_when_the_last_chunks_land_together(
    server: IngestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = assembly.assemble

    def counting(**kwargs: Any) -> Any:
        calls.append(1)
        return real(**kwargs)

    monkeypatch.setattr(assembler_module, "assemble", counting)
    data = zstandard.ZstdCompressor().compress(os.urandom(50_000))
    pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    file_id = FileId(os.urandom(16))
    chunks = [
        make_chunk(file_id, i, len(pieces), len(data), "race.bin", piece, payload=data)
        for i, piece in enumerate(pieces)
    ]
    # Every chunk at once, twice: duplicates race the completing chunk.
    acks = await asyncio.gather(*(server.accept_chunk(c) for c in chunks + chunks))
    assert sum(a.complete for a in acks) == 1
    await wait_for(tmp_path / "files" / "race.bin")
    await asyncio.sleep(0.1)  # give a second (wrong) assembly the chance to start
    assert len(calls) == 1


def text_payload(lines: int) -> bytes:
    return b"".join(
        b"2026-12-01T06:%02d:00Z GET /item/%d 200 ms=%d\n" % (i % 60, i, i % 97)
        for i in range(lines)
    )


def pieces_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_assembly_streams_while_chunks_arrive(
    server: IngestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = assembly.assemble

    def counting(**kwargs: Any) -> Any:
        calls.append(1)
        return real(**kwargs)

    monkeypatch.setattr(assembler_module, "assemble", counting)
    original = text_payload(200_000)
    data = zstandard.ZstdCompressor(level=1).compress(original)
    pieces = pieces_of(data, 64 * 1024)
    file_id = FileId(os.urandom(16))
    files = tmp_path / "files"
    staging = assembly.staging_path(files, "stream.log", file_id, "tmp")
    for index, piece in enumerate(pieces[:-1]):
        ack = await server.accept_chunk(
            make_chunk(file_id, index, len(pieces), len(data), "stream.log", piece, payload=data)
        )
        assert not ack.complete
    # Every chunk but the last is in: the output is being written already.
    async with asyncio.timeout(10):
        while not (staging.exists() and staging.stat().st_size > len(original) // 2):
            await asyncio.sleep(0.01)
    assert not (files / "stream.log").exists()
    assert server.query(file_id).state is UploadState.UPLOADING
    last = make_chunk(
        file_id, len(pieces) - 1, len(pieces), len(data), "stream.log", pieces[-1], payload=data
    )
    assert (await server.accept_chunk(last)).complete
    await wait_for(files / "stream.log")
    assert (files / "stream.log").read_bytes() == original
    await asyncio.sleep(0.1)
    assert len(calls) == 1
    assert sorted(p.name for p in files.iterdir()) == ["stream.log"]


async def test_a_bad_payload_fails_before_its_last_chunk(server: IngestServer) -> None:
    file_id = FileId(os.urandom(16))
    garbage = b"PK\x03\x04 not zstandard at all"
    await server.accept_chunk(make_chunk(file_id, 0, 2, 2 * len(garbage), "bad.bin", garbage))
    async with asyncio.timeout(10):
        while server.query(file_id).state is not UploadState.FAILED:
            await asyncio.sleep(0.01)
    failed = server.final_event(file_id)
    assert failed is not None
    assert "not a zstd frame" in getattr(failed, "message", "")
    with pytest.raises(AssemblyError, match=r"failed: .*not a zstd frame"):
        await server.accept_chunk(make_chunk(file_id, 1, 2, 2 * len(garbage), "bad.bin", garbage))
    # FAILED goes out first; the chunks are dropped after it, on the worker pool.
    async with asyncio.timeout(10):
        while server.store.info(file_id) is not None:
            await asyncio.sleep(0.01)


async def test_a_stalled_streaming_assembly_gives_up_and_the_last_chunk_restarts_it(
    server: IngestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assembler_module, "STREAM_IDLE_S", 0.3)
    monkeypatch.setattr(assembler_module, "STREAM_POLL_S", 0.05)
    original = text_payload(20_000)
    data = zstandard.ZstdCompressor(level=1).compress(original)
    half = len(data) // 2
    file_id = FileId(os.urandom(16))
    await server.accept_chunk(
        make_chunk(file_id, 0, 2, len(data), "slow.log", data[:half], payload=data)
    )
    assert file_id in server.assembler.running
    async with asyncio.timeout(10):
        while file_id in server.assembler.running:  # the streaming assembly gives up
            await asyncio.sleep(0.02)
    files = tmp_path / "files"
    assert [p.name for p in files.iterdir()] == []  # its staging file went with it
    assert (
        await server.accept_chunk(
            make_chunk(file_id, 1, 2, len(data), "slow.log", data[half:], payload=data)
        )
    ).complete
    await wait_for(files / "slow.log")
    assert (files / "slow.log").read_bytes() == original


async def test_abort_while_streaming_leaves_nothing(server: IngestServer, tmp_path: Path) -> None:
    original = text_payload(100_000)
    data = zstandard.ZstdCompressor(level=1).compress(original)
    pieces = pieces_of(data, 32 * 1024)
    file_id = FileId(os.urandom(16))
    files = tmp_path / "files"
    staging = assembly.staging_path(files, "gone.log", file_id, "tmp")
    for index, piece in enumerate(pieces[:2]):
        await server.accept_chunk(
            make_chunk(file_id, index, len(pieces), len(data), "gone.log", piece, payload=data)
        )
    async with asyncio.timeout(10):
        while not staging.exists():
            await asyncio.sleep(0.01)
    assert await server.abort(file_id)
    async with asyncio.timeout(10):
        while file_id in server.assembler.running:
            await asyncio.sleep(0.02)
    assert list(files.iterdir()) == []
    assert server.query(file_id).state is UploadState.UNKNOWN  # forgotten


async def test_a_one_chunk_upload_is_published_before_its_ack(
    server: IngestServer, tmp_path: Path
) -> None:
    chunk = one_chunk("small.txt", b"four kilobytes or so\n" * 200)
    ack = await server.accept_chunk(chunk)
    assert (ack.complete, ack.committed, ack.total, ack.duplicate) == (True, 1, 1, False)
    # Durable in its published form already: the file and its record, and no patches.
    assert (tmp_path / "files" / "small.txt").read_bytes() == b"four kilobytes or so\n" * 200
    assert server.query(chunk.file_id).state is UploadState.PUBLISHED
    assert list(server.store.patches_dir.iterdir()) == []
    assert [p.name for p in server.store.published_dir.iterdir()] == ["published.log"]
    assert chunk.file_id.hex() in (server.store.published_dir / "published.log").read_text()
    again = await server.accept_chunk(chunk)
    assert again.published


async def test_the_same_one_chunk_upload_sent_twice_at_once_is_published_once(
    server: IngestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_decompressions(monkeypatch, fail_first=False)
    chunk = one_chunk("twice.txt", os.urandom(5000))
    acks = await asyncio.gather(*(server.accept_chunk(chunk) for _ in range(4)))
    assert sum(a.complete for a in acks) == 1
    assert all(a.complete or a.published for a in acks)
    assert len(calls) == 1
    assert server.stats.published == 1


async def test_one_chunk_uploads_of_one_id_with_other_bytes_conflict(server: IngestServer) -> None:
    first = one_chunk("same.txt", b"one version")
    data = zstandard.ZstdCompressor().compress(b"another version")
    other = make_chunk(first.file_id, 0, 1, len(data), "same.txt", data, payload=data)
    results = await asyncio.gather(
        server.accept_chunk(first), server.accept_chunk(other), return_exceptions=True
    )
    assert not isinstance(results[0], BaseException)
    assert results[0].complete
    assert isinstance(results[1], ConflictError)


async def test_a_one_chunk_upload_whose_publish_fails_is_refused_then_published_once(
    server: IngestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_decompressions(monkeypatch, fail_first=True)
    chunk = one_chunk("fallback.txt", b"published on the second try\n" * 50)
    # The second sender waits for the first, whose publish fails: it tries its own.
    results = await asyncio.gather(
        server.accept_chunk(chunk), server.accept_chunk(chunk), return_exceptions=True
    )
    assert isinstance(results[0], IngestStorageError)
    assert "No space left on device" in str(results[0])
    assert isinstance(results[1], Ack)
    assert results[1].complete
    path = tmp_path / "files" / "fallback.txt"
    assert path.read_bytes() == b"published on the second try\n" * 50
    assert len(calls) == 2  # the failed publish, then the second sender's
    assert server.stats.published == 1
    assert server.store.payloads() == []  # never stored as patches


async def test_a_resent_chunk_of_a_complete_upload_starts_its_lost_assembly(
    server: IngestServer, tmp_path: Path
) -> None:
    original = text_payload(5000)
    data = zstandard.ZstdCompressor().compress(original)
    pieces = pieces_of(data, 4096)
    file_id = FileId(os.urandom(16))
    chunks = [
        make_chunk(file_id, i, len(pieces), len(data), "nudged.log", p, payload=data)
        for i, p in enumerate(pieces)
    ]
    # Stored behind the server's back: complete, and no assembly ever started.
    for chunk in chunks:
        await asyncio.to_thread(
            server.store.store_chunk,
            file_id=file_id,
            index=chunk.index,
            total=chunk.total,
            size=chunk.size,
            name=chunk.name,
            payload_digest=chunk.payload_digest,
            digest=chunk.digest,
            data=chunk.data,
            now=0.0,
        )
    assert server.query(file_id).state is UploadState.UPLOADING
    ack = await server.accept_chunk(chunks[-1])
    assert ack.duplicate
    await wait_for(tmp_path / "files" / "nudged.log")
    assert (tmp_path / "files" / "nudged.log").read_bytes() == original


async def test_a_one_chunk_upload_whose_fsync_fails_is_refused_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Among one-chunk uploads published together, the one whose output fsync fails is
    refused with STORAGE and leaves nothing; the others are published before their ACK,
    and the refused one is published when it is sent again."""
    config = IngestConfig(
        sys_base=0, data_base=0, x=1, data_dir=tmp_path, fsync=True, cleanup_interval_s=3600
    )
    srv = IngestServer(config)
    await srv.startup()
    real_sync = assembly.Staged.sync
    failures: list[str] = []

    def sync(self: assembly.Staged) -> None:
        if self.info.name == "sick.txt" and not failures:
            failures.append(self.info.name)
            raise IngestStorageError(f"cannot fsync {self.tmp}: Input/output error")
        real_sync(self)

    monkeypatch.setattr(assembly.Staged, "sync", sync)
    try:
        names = (
            [f"ok{i}.txt" for i in range(10)] + ["sick.txt"] + [f"ok{i}.txt" for i in range(10, 20)]
        )
        chunks = [one_chunk(name, name.encode() * 300) for name in names]
        acks = await asyncio.gather(*(srv.accept_chunk(c) for c in chunks), return_exceptions=True)
        assert srv.singles.batches < len(chunks)  # they went in batches
        for name, chunk, ack in zip(names, chunks, acks, strict=True):
            if name == "sick.txt":
                assert isinstance(ack, IngestStorageError)
                assert srv.query(chunk.file_id).state is UploadState.UNKNOWN
                assert not (tmp_path / "files" / name).exists()
            else:
                assert isinstance(ack, Ack)
                assert ack.complete
                assert srv.query(chunk.file_id).state is UploadState.PUBLISHED
                assert (tmp_path / "files" / name).read_bytes() == name.encode() * 300
        assert failures == ["sick.txt"]
        assert srv.stats.assembly_failures == 1
        assert not [p for p in (tmp_path / "files").iterdir() if p.name.startswith(".")]
        sick = chunks[names.index("sick.txt")]
        again = await srv.accept_chunk(sick)
        assert again.complete
        assert srv.query(sick.file_id).state is UploadState.PUBLISHED
        assert (tmp_path / "files" / "sick.txt").read_bytes() == b"sick.txt" * 300
    finally:
        await srv.shutdown()
