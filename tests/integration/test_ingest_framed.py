"""FRAMED uploads through Intake.accept in one process, with no sockets: chunks in any
order decompressed on the decompression pool, lying clients refused, a restart resumed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import re
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import xxhash
import zstandard

from postoffice.ingest.chunkdigest import new_chunk
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import AssemblyError, ConflictError, ErrorCode, IngestLimitError
from postoffice.ingest.framed import FramedAssembly
from postoffice.ingest.messages import Chunk, Failed, FileId, UploadState, file_id_hex
from postoffice.ingest.server import IngestServer

pytestmark = pytest.mark.integration

SEED = 20261207


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
    config.files_path.mkdir(parents=True, exist_ok=True)
    srv.intake.open()
    try:
        yield srv
    finally:
        srv.intake.close()
        srv.assembler.drain()
        async with asyncio.timeout(10):
            await asyncio.gather(*srv.assembler.running.values(), return_exceptions=True)
        srv.pool.close()
        srv.singles.close()
        srv.assembler.close()


def text(size: int) -> bytes:
    rng = random.Random(SEED)
    words = [b"INFO", b"WARN", b"GET", b"/api/v1", b"200", b"503", b"ms=12", b"user=ann"]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=9)) + b"\n"
    return bytes(out[:size])


def frames_of(
    content: bytes, piece: int, *, write_content_size: bool = True
) -> tuple[list[bytes], list[int]]:
    """`content` cut into pieces of `piece` bytes, each compressed as a frame of its own
    (with its content size unless told otherwise), and each piece's content offset."""
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=write_content_size)
    at = list(range(0, len(content), piece)) or [0]
    return [compressor.compress(content[i : i + piece]) for i in at], at


def framed_chunks(
    frames: Sequence[bytes],
    offsets: Sequence[int],
    content_size: int,
    *,
    name: str = "framed.log",
    file_id: FileId | None = None,
) -> list[Chunk]:
    payload = b"".join(frames)
    file_id = file_id or FileId(os.urandom(16))
    return [
        new_chunk(
            file_id=file_id,
            index=index,
            total=len(frames),
            size=len(payload),
            name=name,
            payload_digest=xxhash.xxh3_128_digest(payload),
            data=data,
            content_size=content_size,
            content_offset=offsets[index],
        )
        for index, data in enumerate(frames)
    ]


async def wait_state(server: IngestServer, file_id: FileId, state: UploadState) -> None:
    """Wait for `state`; a FAILED upload's chunks are dropped right after it is reported."""
    async with asyncio.timeout(20):
        while server.query(file_id).state is not state or (
            state is UploadState.FAILED and server.store.info(file_id) is not None
        ):
            await asyncio.sleep(0.01)


async def test_chunks_in_any_order_are_decompressed_apart_and_published(tmp_path: Path) -> None:
    content = text(2_000_000)
    frames, offsets = frames_of(content, 64 * 1024)
    chunks = framed_chunks(frames, offsets, len(content))
    random.Random(SEED).shuffle(chunks)
    async with running(tmp_path, min_chunk_bytes=0) as server:
        await asyncio.gather(*(server.accept_chunk(chunk) for chunk in chunks))
        file_id = chunks[0].file_id
        await wait_state(server, file_id, UploadState.PUBLISHED)
        assert (server.config.files_path / "framed.log").read_bytes() == content
        done = server.store.published(file_id)
        assert done is not None
        assert done.digest == xxhash.xxh3_128_digest(content)
        assert server.assembler.decompress_pool.completed == len(frames)
        assert sorted(p.name for p in server.config.files_path.iterdir()) == ["framed.log"]


async def test_via_part_takes_the_seeds_path_for_a_framed_upload(tmp_path: Path) -> None:
    content = text(300_000)
    frames, offsets = frames_of(content, 64 * 1024)
    chunks = framed_chunks(frames, offsets, len(content))
    async with running(tmp_path, assemble_via_part=True) as server:
        for chunk in chunks:
            await server.accept_chunk(chunk)
        await wait_state(server, chunks[0].file_id, UploadState.PUBLISHED)
        assert (server.config.files_path / "framed.log").read_bytes() == content
        assert server.assembler.decompress_pool.completed == 0


def _lying_offsets(offsets: list[int]) -> list[int]:
    lied = list(offsets)
    lied[2] -= 10  # chunk 2 overlaps chunk 1 by ten bytes
    return lied


def _no_content_size(content: bytes) -> tuple[list[bytes], list[int]]:
    frames, offsets = frames_of(content, 64 * 1024)
    bare, _ = frames_of(content, 64 * 1024, write_content_size=False)
    frames[1] = bare[1]
    return frames, offsets


def _garbage(content: bytes) -> tuple[list[bytes], list[int]]:
    frames, offsets = frames_of(content, 64 * 1024)
    frames[3] = os.urandom(len(frames[3]))
    return frames, offsets


@pytest.mark.parametrize(
    ("case", "message"),
    [
        # Chunk 2 moved back: it overlaps chunk 1 and leaves a gap before chunk 3; which of
        # the two is seen first depends on which chunks' frames the threads finish first.
        (
            "overlap",
            r"(chunk 2 of [0-9a-f]{32} starts at content offset \d+, chunk 1 ends at \d+"
            r"|chunk 3 of [0-9a-f]{32} starts at content offset \d+, chunk 2 ends at \d+)"
            r": ranges with a gap",
        ),
        ("gap", r"ranges with a gap or an overlap|the last, ends at content offset"),
        ("no content size", r"its zstd frame does not record its content size"),
        ("garbage", r"is not one zstd frame"),
    ],
)
async def test_a_lying_upload_fails_and_nothing_is_published(
    tmp_path: Path, case: str, message: str
) -> None:
    content = text(400_000)
    frames, offsets = frames_of(content, 64 * 1024)
    if case == "overlap":
        offsets = _lying_offsets(offsets)
    elif case == "gap":
        offsets = [0, *(o + 5 for o in offsets[1:])]
    elif case == "no content size":
        frames, offsets = _no_content_size(content)
    else:
        frames, offsets = _garbage(content)
    chunks = framed_chunks(frames, offsets, len(content))
    file_id = chunks[0].file_id
    async with running(tmp_path) as server:
        for chunk in chunks:
            with contextlib.suppress(AssemblyError):  # refused once the upload failed
                await server.accept_chunk(chunk)
        await wait_state(server, file_id, UploadState.FAILED)
        failed = server.final_event(file_id)
        assert isinstance(failed, Failed)
        assert failed.code is ErrorCode.ASSEMBLY
        assert re.search(message, failed.message), failed.message
        assert list(server.config.files_path.iterdir()) == []


async def test_a_declared_content_size_over_the_output_limit_is_refused_at_once(
    tmp_path: Path,
) -> None:
    content = text(200_000)
    frames, offsets = frames_of(content, 64 * 1024)
    chunks = framed_chunks(frames, offsets, len(content))
    async with running(tmp_path, max_output_bytes=100_000) as server:
        with pytest.raises(
            IngestLimitError,
            match=rf"^upload {file_id_hex(chunks[0].file_id)} declares content size 200000, "
            r"over the output limit 100000$",
        ):
            await server.accept_chunk(chunks[0])
        assert server.store.info(chunks[0].file_id) is None


async def test_a_declared_bomb_is_refused_by_the_ratio_limit(tmp_path: Path) -> None:
    """1 GiB of declared content from a few kilobytes of frames: over ratio 100."""
    frames, offsets = frames_of(b"x" * 100_000, 50_000)
    chunks = framed_chunks(frames, offsets, 1 << 30)
    async with running(tmp_path) as server:
        with pytest.raises(
            IngestLimitError,
            match=r"declares content size 1073741824 from \d+ compressed bytes, over the ratio "
            r"limit 100$",
        ):
            await server.accept_chunk(chunks[0])


async def test_a_frame_past_the_declared_content_size_fails_the_upload(tmp_path: Path) -> None:
    """The client declared 100,000 bytes; its first frame alone holds 150,000."""
    content = text(300_000)
    frames, offsets = frames_of(content, 150_000)
    chunks = framed_chunks(frames, offsets, 100_000)
    async with running(tmp_path) as server:
        with contextlib.suppress(AssemblyError):
            await server.accept_chunk(chunks[0])
        await wait_state(server, chunks[0].file_id, UploadState.FAILED)
        failed = server.final_event(chunks[0].file_id)
        assert isinstance(failed, Failed)
        assert "past the upload's content size 100000" in failed.message
        assert list(server.config.files_path.iterdir()) == []


async def test_framed_and_plain_chunks_of_one_upload_conflict(tmp_path: Path) -> None:
    content = text(200_000)
    frames, offsets = frames_of(content, 64 * 1024)
    chunks = framed_chunks(frames, offsets, len(content))
    plain = dataclasses.replace(chunks[1], content_size=None, content_offset=0)
    plain = new_chunk(
        file_id=plain.file_id,
        index=1,
        total=plain.total,
        size=plain.size,
        name=plain.name,
        payload_digest=plain.payload_digest,
        data=plain.data,
    )
    async with running(tmp_path) as server:
        await server.accept_chunk(chunks[0])
        with pytest.raises(
            ConflictError, match=r"has content size None, the payload has content size 200000$"
        ):
            await server.accept_chunk(plain)


async def test_a_restart_mid_upload_decompresses_the_stored_chunks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the chunks, then a new server on the same directory (what a crash leaves,
    staging file included): the rest arrive and the file is whole."""
    content = text(1_000_000)
    frames, offsets = frames_of(content, 64 * 1024)
    chunks = framed_chunks(frames, offsets, len(content))
    half = len(chunks) // 2
    async with running(tmp_path, min_chunk_bytes=0) as server:
        for chunk in chunks[:half]:
            await server.accept_chunk(chunk)
        async with asyncio.timeout(10):
            while server.assembler.decompress_pool.completed < half:
                await asyncio.sleep(0.01)
        tmp_files = [p.name for p in server.config.files_path.iterdir()]
        assert len(tmp_files) == 1
        assert tmp_files[0].endswith(".tmp")
    # What a crash leaves: the staging file, full of what the dead process wrote.
    staging = tmp_path / "files" / f".framed.log.{file_id_hex(chunks[0].file_id)}.tmp"
    staging.write_bytes(b"\xff" * len(content))
    # The staging file is emptied only once every remaining chunk is committed: those
    # commits must wait for it, or what they write is lost.
    created = threading.Event()
    create = FramedAssembly.create

    def held_create(self: FramedAssembly) -> None:
        assert created.wait(10)
        create(self)

    monkeypatch.setattr(FramedAssembly, "create", held_create)
    async with running(tmp_path, min_chunk_bytes=0) as server:
        await asyncio.gather(*(server.accept_chunk(chunk) for chunk in chunks[half:]))
        created.set()
        await wait_state(server, chunks[0].file_id, UploadState.PUBLISHED)
        assert (server.config.files_path / "framed.log").read_bytes() == content
        assert server.assembler.decompress_pool.completed == len(chunks)


async def test_decompress_threads_is_live(tmp_path: Path) -> None:
    async with running(tmp_path, decompress_threads=3) as server:
        assert server.assembler.decompress_pool.size == 3
        await server.reconfigure(dataclasses.replace(server.config, decompress_threads=1))
        assert server.assembler.decompress_pool.size == 1
        await server.reconfigure(dataclasses.replace(server.config, decompress_threads=0))
        assert server.assembler.decompress_pool.size == len(os.sched_getaffinity(0))
