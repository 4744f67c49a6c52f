"""IngestServer in-process (ports picked by the kernel, no fsync): intake and assembly paths."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from postoffice.ingest import assembly
from postoffice.ingest import server as server_module
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.protocol import Chunk, FileId, UploadState
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
    return Chunk(
        file_id=FileId(os.urandom(16)),
        index=0,
        total=1,
        size=len(data),
        name=name,
        sha256=hashlib.sha256(data).digest(),
        data=data,
    )


async def wait_for(path: Path, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await asyncio.to_thread(path.exists):
            await asyncio.sleep(0.02)


async def test_a_crashed_assembly_is_restarted(
    server: IngestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = assembly.assemble

    def flaky(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(**kwargs)

    monkeypatch.setattr(server_module, "assemble", flaky)
    chunk = one_chunk("retry.txt", b"survives a crash\n")
    ack = await server.accept_chunk(chunk)
    assert ack.complete
    await wait_for(tmp_path / "files" / "retry.txt")
    assert (tmp_path / "files" / "retry.txt").read_bytes() == b"survives a crash\n"
    assert len(calls) == 2
    assert server.assembly_failures == 1
    assert server.query(chunk.file_id).state is UploadState.PUBLISHED


async def test_a_bomb_fails_for_good_and_frees_the_upload(tmp_path: Path) -> None:
    config = IngestConfig(
        sys_base=0, data_base=0, x=1, data_dir=tmp_path, fsync=False, max_output_bytes=1000
    )
    srv = IngestServer(config)
    await srv.startup()
    try:
        chunk = one_chunk("bomb.bin", b"\0" * 100_000)
        await srv.accept_chunk(chunk)
        async with asyncio.timeout(10):
            while srv.query(chunk.file_id).state is not UploadState.FAILED:
                await asyncio.sleep(0.02)
        assert srv.store.info(chunk.file_id) is None  # patches dropped
        assert list((tmp_path / "files").iterdir()) == []
        failed = srv.published_message(chunk.file_id)
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

    monkeypatch.setattr(server_module, "assemble", counting)
    data = zstandard.ZstdCompressor().compress(os.urandom(50_000))
    pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    file_id = FileId(os.urandom(16))
    chunks = [
        Chunk(
            file_id=file_id,
            index=i,
            total=len(pieces),
            size=len(data),
            name="race.bin",
            sha256=hashlib.sha256(piece).digest(),
            data=piece,
        )
        for i, piece in enumerate(pieces)
    ]
    # Every chunk at once, twice: duplicates race the completing chunk.
    acks = await asyncio.gather(*(server.accept_chunk(c) for c in chunks + chunks))
    assert sum(a.complete for a in acks) == 1
    await wait_for(tmp_path / "files" / "race.bin")
    await asyncio.sleep(0.1)  # give a second (wrong) assembly the chance to start
    assert len(calls) == 1
