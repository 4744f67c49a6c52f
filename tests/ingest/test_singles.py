"""publish_batch on real files with a real ChunkStore (fsync on): one-chunk uploads
published together, and every way one of them can fail without touching the others."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import xxhash
import zstandard

from postoffice.ingest import assembly
from postoffice.ingest.chunkdigest import new_chunk
from postoffice.ingest.errors import (
    AssemblyError,
    BadNameError,
    ChecksumError,
    IngestStorageError,
    OutputLimitError,
)
from postoffice.ingest.messages import Chunk, FileId
from postoffice.ingest.published import PublishedInfo, PublishedRecords
from postoffice.ingest.singles import (
    ALONE,
    BATCH_OUTPUT_BYTES,
    BatchLimits,
    publish_batch,
)
from postoffice.ingest.storage import ChunkStore

NOW = 1_700_000_000.5


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


def raw_one_chunk(name: str, data: bytes) -> Chunk:
    return new_chunk(
        file_id=FileId(os.urandom(16)),
        index=0,
        total=1,
        size=len(data),
        name=name,
        payload_digest=xxhash.xxh3_128_digest(data),
        data=data,
    )


@pytest.fixture(params=["one thread", "three threads"])
def pool(request: pytest.FixtureRequest) -> Iterator[ThreadPoolExecutor | None]:
    """publish_batch on its own thread, and with a pool that stages beside it."""
    if request.param == "one thread":
        yield None
        return
    with ThreadPoolExecutor(2) as executor:
        yield executor


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    store = ChunkStore(tmp_path / "patches", tmp_path / "published", fsync=True)
    store.open()
    return store


def limits(tmp_path: Path, *, max_output_bytes: int = 1 << 30) -> BatchLimits:
    return BatchLimits(
        files_dir=tmp_path / "files",
        max_output_bytes=max_output_bytes,
        max_window_log=27,
        fsync=True,
    )


def reopened(tmp_path: Path) -> ChunkStore:
    """A fresh store on the same directories: what a restart would find."""
    fresh = ChunkStore(tmp_path / "patches", tmp_path / "published", fsync=True)
    fresh.open()
    return fresh


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_batch_publishes_every_file_with_one_record_append(
    store: ChunkStore, tmp_path: Path, pool: ThreadPoolExecutor | None
) -> None:
    contents = {f"f{i}.log": f"line {i}\n".encode() * (100 + i) for i in range(20)}
    chunks = [one_chunk(name, content) for name, content in contents.items()]
    outcomes = publish_batch(chunks, limits=limits(tmp_path), store=store, now=NOW, pool=pool)
    assert all(isinstance(o, PublishedInfo) for o in outcomes)
    files = tmp_path / "files"
    assert entries(files) == sorted(contents)
    for chunk, outcome in zip(chunks, outcomes, strict=True):
        assert isinstance(outcome, PublishedInfo)
        content = contents[chunk.name]
        assert (files / chunk.name).read_bytes() == content
        assert outcome.size == len(content)
        assert outcome.digest == xxhash.xxh3_128_digest(content)
        assert outcome.payload_digest == xxhash.xxh3_128_digest(bytes(chunk.data))
        assert store.published(chunk.file_id) == outcome
    log = (tmp_path / "published" / "published.log").read_bytes()
    assert log.count(b"\n") == len(chunks)
    fresh = reopened(tmp_path)
    for chunk in chunks:
        assert fresh.published(chunk.file_id) is not None


def test_bad_chunks_fail_alone_and_leave_nothing(
    store: ChunkStore, tmp_path: Path, pool: ThreadPoolExecutor | None
) -> None:
    good = [one_chunk(f"good{i}.txt", b"fine\n" * (i + 1)) for i in range(3)]
    corrupt = dataclasses.replace(one_chunk("corrupt.txt", b"flipped\n"), digest=bytes(16))
    hostile = one_chunk("../escape.txt", b"outside\n")
    garbage = raw_one_chunk("garbage.bin", b"PK\x03\x04 not zstandard")
    truncated_data = zstandard.ZstdCompressor().compress(os.urandom(5000))[:-7]
    truncated = raw_one_chunk("short.bin", truncated_data)
    batch = [good[0], corrupt, hostile, good[1], garbage, truncated, good[2]]
    outcomes = publish_batch(batch, limits=limits(tmp_path), store=store, now=NOW, pool=pool)
    assert isinstance(outcomes[1], ChecksumError)
    assert isinstance(outcomes[2], BadNameError)
    assert isinstance(outcomes[4], AssemblyError)
    assert "not a zstd frame" in str(outcomes[4])
    assert isinstance(outcomes[5], AssemblyError)
    assert "truncated" in str(outcomes[5])
    for at in (0, 3, 6):
        assert isinstance(outcomes[at], PublishedInfo)
    # Only the good files, no staging leftovers, nothing outside files/.
    assert entries(tmp_path / "files") == ["good0.txt", "good1.txt", "good2.txt"]
    assert not (tmp_path / "escape.txt").exists()
    fresh = reopened(tmp_path)
    assert [fresh.published(c.file_id) is not None for c in batch] == [
        True,
        False,
        False,
        True,
        False,
        False,
        True,
    ]


def test_a_large_output_is_handed_back_to_be_published_alone(
    store: ChunkStore, tmp_path: Path, pool: ThreadPoolExecutor | None
) -> None:
    small = one_chunk("small.txt", b"small\n")
    large = one_chunk("zeros.bin", b"\0" * (BATCH_OUTPUT_BYTES + 1))
    outcomes = publish_batch(
        [large, small], limits=limits(tmp_path), store=store, now=NOW, pool=pool
    )
    assert outcomes[0] is ALONE
    assert isinstance(outcomes[1], PublishedInfo)
    assert entries(tmp_path / "files") == ["small.txt"]
    assert store.published(large.file_id) is None


def test_an_output_over_the_real_limit_fails(
    store: ChunkStore, tmp_path: Path, pool: ThreadPoolExecutor | None
) -> None:
    bomb = one_chunk("bomb.bin", b"\0" * 100_000)
    fine = one_chunk("fine.txt", b"fine\n")
    outcomes = publish_batch(
        [bomb, fine],
        limits=limits(tmp_path, max_output_bytes=1000),
        store=store,
        now=NOW,
        pool=pool,
    )
    assert isinstance(outcomes[0], OutputLimitError)
    assert "exceeds limit 1000" in str(outcomes[0])
    assert isinstance(outcomes[1], PublishedInfo)
    assert entries(tmp_path / "files") == ["fine.txt"]


def test_a_failing_fsync_fails_only_its_file(
    store: ChunkStore,
    tmp_path: Path,
    pool: ThreadPoolExecutor | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_sync = assembly.Staged.sync

    def sync(self: assembly.Staged) -> None:
        if self.info.name == "sick.txt":
            raise IngestStorageError(f"cannot fsync {self.tmp}: Input/output error")
        real_sync(self)

    monkeypatch.setattr(assembly.Staged, "sync", sync)
    batch = [one_chunk(name, name.encode() * 50) for name in ("a.txt", "sick.txt", "b.txt")]
    outcomes = publish_batch(batch, limits=limits(tmp_path), store=store, now=NOW, pool=pool)
    assert isinstance(outcomes[1], IngestStorageError)
    assert "cannot fsync" in str(outcomes[1])
    assert ".sick.txt." in str(outcomes[1])
    assert isinstance(outcomes[0], PublishedInfo)
    assert isinstance(outcomes[2], PublishedInfo)
    assert entries(tmp_path / "files") == ["a.txt", "b.txt"]
    assert store.published(batch[1].file_id) is None


def test_a_failing_record_append_fails_every_file_that_reached_it(
    store: ChunkStore,
    tmp_path: Path,
    pool: ThreadPoolExecutor | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: PublishedRecords, infos: object) -> None:
        raise IngestStorageError(f"cannot append to {self.path}: No space left on device")

    monkeypatch.setattr(PublishedRecords, "write_many", broken)
    corrupt = dataclasses.replace(one_chunk("corrupt.txt", b"x"), digest=bytes(16))
    batch = [one_chunk("a.txt", b"a"), corrupt, one_chunk("b.txt", b"b")]
    outcomes = publish_batch(batch, limits=limits(tmp_path), store=store, now=NOW, pool=pool)
    assert isinstance(outcomes[1], ChecksumError)
    for at in (0, 2):
        assert isinstance(outcomes[at], IngestStorageError)
        assert "No space left" in str(outcomes[at])
        assert store.published(batch[at].file_id) is None


def test_two_uploads_of_one_name_in_a_batch_the_last_wins(
    store: ChunkStore, tmp_path: Path, pool: ThreadPoolExecutor | None
) -> None:
    first = one_chunk("same.txt", b"first\n")
    second = one_chunk("same.txt", b"second\n")
    outcomes = publish_batch(
        [first, second], limits=limits(tmp_path), store=store, now=NOW, pool=pool
    )
    assert isinstance(outcomes[0], PublishedInfo)
    assert isinstance(outcomes[1], PublishedInfo)
    assert (outcomes[0].replaced, outcomes[1].replaced) == (False, True)
    assert (tmp_path / "files" / "same.txt").read_bytes() == b"second\n"


def test_a_failing_record_append_takes_its_files_back_out(
    store: ChunkStore,
    tmp_path: Path,
    pool: ThreadPoolExecutor | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A publish that is not recorded was not acknowledged, so it leaves nothing in files/:
    a new name is gone again, and a replaced file is back."""
    first = publish_batch(
        [one_chunk("kept.txt", b"the published version\n")],
        limits=limits(tmp_path),
        store=store,
        now=NOW,
        pool=pool,
    )
    assert isinstance(first[0], PublishedInfo)

    def broken(self: PublishedRecords, infos: object) -> None:
        raise IngestStorageError(f"cannot append to {self.path}: No space left on device")

    monkeypatch.setattr(PublishedRecords, "write_many", broken)
    batch = [
        one_chunk("kept.txt", b"a newer version\n"),
        one_chunk("fresh.txt", b"never published\n"),
        one_chunk("kept.txt", b"the newest version\n"),
    ]
    outcomes = publish_batch(batch, limits=limits(tmp_path), store=store, now=NOW, pool=pool)
    assert all(isinstance(o, IngestStorageError) for o in outcomes)
    assert entries(tmp_path / "files") == ["kept.txt"]
    assert (tmp_path / "files" / "kept.txt").read_bytes() == b"the published version\n"
    assert all(store.published(chunk.file_id) is None for chunk in batch)
