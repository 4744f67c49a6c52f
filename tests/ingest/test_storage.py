"""ChunkStore on real files: durable chunks, idempotency, concurrency and crash recovery."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import random
import shutil
import threading
from pathlib import Path

import pytest
import xxhash

from postoffice.ingest import published as published_module
from postoffice.ingest.errors import (
    BadNameError,
    ConflictError,
    IngestStorageError,
    OutOfRangeError,
    UnknownFileError,
)
from postoffice.ingest.messages import MAX_CHUNKS, FileId
from postoffice.ingest.published import PublishedInfo
from postoffice.ingest.storage import ChunkStore, StoreResult

FID = FileId(bytes.fromhex("00112233445566778899aabbccddeeff"))
HEX = FID.hex()
OTHER = FileId(bytes(range(16)))
NOW = 1_700_000_000.5  # exactly representable, so mtimes round-trip exactly


def chunk_data(index: int, length: int = 100) -> bytes:
    return bytes([index % 251]) * length


#: The payload digest the chunks of these tests declare (the store only compares it).
PAYLOAD_DIGEST = xxhash.xxh3_128_digest(b"the whole payload")


def new_store(root: Path, *, fsync: bool = True, resident_bytes: int = 0) -> ChunkStore:
    store = ChunkStore(
        root / "patches", root / "published", fsync=fsync, resident_bytes=resident_bytes
    )
    store.open()
    return store


def put(
    store: ChunkStore,
    index: int,
    *,
    total: int = 4,
    data: bytes | None = None,
    file_id: FileId = FID,
    size: int | None = None,
    name: str = "report.log",
    now: float = NOW,
    payload_digest: bytes = PAYLOAD_DIGEST,
) -> StoreResult:
    data = chunk_data(index) if data is None else data
    return store.store_chunk(
        file_id=file_id,
        index=index,
        total=total,
        size=total * 100 if size is None else size,
        name=name,
        payload_digest=payload_digest,
        digest=xxhash.xxh3_128_digest(data),
        data=data,
        now=now,
    )


def payload_dir(root: Path, file_id: FileId = FID) -> Path:
    return root / "patches" / file_id.hex()


def ids_lines(root: Path) -> list[str]:
    return (payload_dir(root) / "ids.list").read_text().splitlines()


class TestStoreChunk:
    def test_chunk_is_written_with_meta_and_ids_line(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        result = put(store, 2, now=NOW)
        assert result == StoreResult(committed=1, total=4, duplicate=False, complete=False)
        folder = payload_dir(tmp_path)
        assert (folder / "patch_2.bin").read_bytes() == chunk_data(2)
        assert ids_lines(tmp_path) == [f"2 {xxhash.xxh3_128_hexdigest(chunk_data(2))}"]
        meta = json.loads((folder / "meta.json").read_text())
        assert meta == {
            "file_id": HEX,
            "name": "report.log",
            "total": 4,
            "size": 400,
            "payload_digest": PAYLOAD_DIGEST.hex(),
            "created": NOW,
        }
        assert sorted(p.name for p in folder.iterdir()) == ["ids.list", "meta.json", "patch_2.bin"]

    def test_out_of_order_chunks_complete_on_the_last_missing_one(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        results = [put(store, index) for index in (3, 1, 0)]
        assert [r.complete for r in results] == [False, False, False]
        info = store.info(FID)
        assert info is not None
        assert info.missing == ((2, 2),)
        assert not info.complete
        last = put(store, 2)
        assert last == StoreResult(committed=4, total=4, duplicate=False, complete=True)
        info = store.info(FID)
        assert info is not None
        assert info.complete
        assert info.missing == ()

    def test_missing_ranges(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        for index in (0, 3, 4, 9):
            put(store, index, total=10)
        info = store.info(FID)
        assert info is not None
        assert info.missing == ((1, 2), (5, 8))
        assert info.committed == frozenset({0, 3, 4, 9})

    def test_same_bytes_again_is_a_duplicate_and_nothing_is_rewritten(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        put(store, 1)
        patch = payload_dir(tmp_path) / "patch_1.bin"
        before = (patch.stat().st_ino, (payload_dir(tmp_path) / "ids.list").read_bytes())
        again = put(store, 1, now=NOW + 50)
        assert again == StoreResult(committed=1, total=4, duplicate=True, complete=False)
        assert (patch.stat().st_ino, (payload_dir(tmp_path) / "ids.list").read_bytes()) == before

    def test_duplicate_of_the_last_chunk_does_not_complete_again(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        for index in range(4):
            put(store, index)
        again = put(store, 3)
        assert again == StoreResult(committed=4, total=4, duplicate=True, complete=False)

    def test_other_bytes_for_a_committed_index_conflict(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        put(store, 3)
        with pytest.raises(
            ConflictError, match=rf"^chunk 3 of {HEX} already committed with other bytes$"
        ):
            put(store, 3, data=b"x" * 100)
        assert (payload_dir(tmp_path) / "patch_3.bin").read_bytes() == chunk_data(3)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"total": 5, "size": 400}, r"has total 5, the payload has total 4"),
            ({"size": 401}, r"has size 401, the payload has size 400"),
            ({"name": "other.log"}, r"has name 'other.log', the payload has name 'report.log'"),
        ],
    )
    def test_fields_that_differ_from_the_first_chunk_conflict(
        self, tmp_path: Path, change: dict[str, object], message: str
    ) -> None:
        store = new_store(tmp_path, fsync=False)
        put(store, 0)
        with pytest.raises(ConflictError, match=rf"^chunk 1 of {HEX} {message}$"):
            put(store, 1, **change)  # type: ignore[arg-type]  # fields vary per case
        assert not (payload_dir(tmp_path) / "patch_1.bin").exists()

    def test_another_content_conflicts_at_every_index_even_uncommitted_ones(
        self, tmp_path: Path
    ) -> None:
        """One file id, one content: a second sender's chunk is refused at an index the
        first sender has not sent yet, so their chunks never mix, and after a restart."""
        store = new_store(tmp_path, fsync=False)
        other = xxhash.xxh3_128_digest(b"another payload")
        put(store, 0)
        for index in (1, 2, 3, 0):
            with pytest.raises(
                ConflictError,
                match=rf"^chunk {index} of {HEX} has payload digest {other.hex()[:12]}\.\.\.,"
                rf" the payload has payload digest {PAYLOAD_DIGEST.hex()[:12]}\.\.\.$",
            ):
                put(store, index, payload_digest=other)
        assert not (payload_dir(tmp_path) / "patch_1.bin").exists()
        reopened = new_store(tmp_path, fsync=False)
        with pytest.raises(ConflictError, match="payload digest"):
            put(reopened, 1, payload_digest=other)
        assert put(reopened, 1).committed == 2

    def test_chunks_over_the_declared_size_conflict(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        put(store, 0, total=2, size=150)
        with pytest.raises(
            ConflictError,
            match=rf"^chunk 1 of {HEX} brings the payload to 200 bytes, over its size 150$",
        ):
            put(store, 1, total=2, size=150)

    def test_a_first_chunk_over_the_size_leaves_nothing_on_disk(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        with pytest.raises(ConflictError, match=r"over its size 10$"):
            put(store, 0, total=2, size=10)
        assert store.info(FID) is None
        assert not payload_dir(tmp_path).exists()
        assert "payloads=0" in repr(store)  # no placeholder left behind

    @pytest.mark.parametrize(
        ("index", "total", "message"),
        [
            (4, 4, r"^chunk index 4 is not below total 4$"),
            (0, 0, r"^total 0 is below 1$"),
            (0, MAX_CHUNKS + 1, rf"^total {MAX_CHUNKS + 1} exceeds limit {MAX_CHUNKS}$"),
        ],
    )
    def test_out_of_range(self, tmp_path: Path, index: int, total: int, message: str) -> None:
        store = new_store(tmp_path, fsync=False)
        with pytest.raises(OutOfRangeError, match=message):
            put(store, index, total=total, size=100)
        assert list((tmp_path / "patches").iterdir()) == []

    @pytest.mark.parametrize("name", ["../evil", ".hidden", "a/b", "nul\x00", " pad", "..", ""])
    def test_bad_names_are_refused_before_any_write(self, tmp_path: Path, name: str) -> None:
        store = new_store(tmp_path, fsync=False)
        with pytest.raises(BadNameError):
            put(store, 0, name=name)
        assert list((tmp_path / "patches").iterdir()) == []


class TestReopen:
    def test_round_trip_keeps_chunks_metadata_and_last_update(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        put(store, 0, now=NOW)
        put(store, 2, now=NOW + 30)
        put(store, 0, file_id=OTHER, total=1, size=100, name="b.bin", now=NOW + 7)
        before = sorted(store.payloads(), key=lambda p: p.file_id)

        again = ChunkStore(tmp_path / "patches", tmp_path / "published")
        recovered = sorted(again.open(), key=lambda p: p.file_id)
        assert recovered == before
        assert sorted(again.payloads(), key=lambda p: p.file_id) == before
        info = again.info(FID)
        assert info is not None
        assert (info.created, info.updated, info.committed) == (NOW, NOW + 30, frozenset({0, 2}))

    def test_store_continues_after_reopen(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        for index in (0, 1):
            put(store, index)
        again = new_store(tmp_path)
        assert put(again, 1).duplicate
        with pytest.raises(ConflictError):
            put(again, 0, data=b"y" * 100)
        assert not put(again, 2).complete
        assert put(again, 3).complete
        assert len(ids_lines(tmp_path)) == 4

    def test_stray_tmp_files_are_deleted(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        put(store, 0)
        strays = [
            payload_dir(tmp_path) / "patch_1.bin.0a1b2c3d4e5f.tmp",
            payload_dir(tmp_path) / "meta.json.0a1b2c3d4e5f.tmp",
            tmp_path / "published" / f"{HEX}.json.0a1b2c3d4e5f.tmp",
            tmp_path / "patches" / "junk.tmp",
        ]
        for stray in strays:
            stray.write_bytes(b"half")
        again = new_store(tmp_path)
        assert [stray for stray in strays if stray.exists()] == []
        info = again.info(FID)
        assert info is not None
        assert info.committed == frozenset({0})

    @pytest.mark.parametrize("meta", [b"{not json", b"[]", b'{"name": "x"}', None])
    def test_unreadable_meta_is_reported_and_left_alone(
        self, tmp_path: Path, meta: bytes | None, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = new_store(tmp_path)
        put(store, 0)
        meta_path = payload_dir(tmp_path) / "meta.json"
        if meta is None:
            meta_path.unlink()
        else:
            meta_path.write_bytes(meta)
        with caplog.at_level(logging.WARNING, logger="postoffice.ingest.storage"):
            again = new_store(tmp_path)
        assert f"file_id={HEX}" in caplog.text
        assert again.payloads() == []
        assert again.unreadable == (payload_dir(tmp_path),)
        assert (payload_dir(tmp_path) / "patch_0.bin").exists()
        with pytest.raises(
            IngestStorageError, match=rf"^payload {HEX} has an unreadable directory"
        ):
            put(again, 1)
        assert again.remove(FID)
        assert not payload_dir(tmp_path).exists()
        assert not again.unreadable
        assert not put(again, 1).duplicate

    def test_patches_of_a_published_payload_are_deleted(self, tmp_path: Path) -> None:
        """A crash after the published record was written, before the patches went."""
        store = new_store(tmp_path)
        put(store, 0, total=1)
        shutil.copytree(payload_dir(tmp_path), tmp_path / "saved")
        record = published_info()
        store.mark_published(record)
        store.remove_patches(FID)
        shutil.copytree(tmp_path / "saved", payload_dir(tmp_path))  # as if never removed
        again = new_store(tmp_path)
        assert not payload_dir(tmp_path).exists()
        assert again.published(FID) == record


def published_info(
    file_id: FileId = FID, published_at: float = NOW, payload_digest: bytes = PAYLOAD_DIGEST
) -> PublishedInfo:
    return PublishedInfo(
        file_id=file_id,
        name="report.log",
        size=12345,
        digest=xxhash.xxh3_128_digest(b"out"),
        payload_digest=payload_digest,
        published_at=published_at,
        replaced=False,
    )


class TestPublishAndRemove:
    def test_mark_published_then_remove_patches_and_the_record_survives_reopen(
        self, tmp_path: Path
    ) -> None:
        store = new_store(tmp_path)
        for index in range(4):
            put(store, index)
        record = published_info()
        store.mark_published(record)
        # The record is the commit: the payload is gone, its patches wait for removal.
        assert store.info(FID) is None
        assert payload_dir(tmp_path).exists()
        store.remove_patches(FID)
        assert not payload_dir(tmp_path).exists()
        assert store.published(FID) == record
        again = new_store(tmp_path)
        assert again.payloads() == []
        assert again.published(FID) == record
        assert again.published_records() == [record]

    def test_a_chunk_after_publish_stores_nothing(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        put(store, 0, total=1, size=100)
        store.mark_published(published_info())
        store.remove_patches(FID)
        result = put(store, 0, total=1, size=100)
        assert result == StoreResult(
            committed=1, total=1, duplicate=True, complete=False, published=True
        )
        assert not payload_dir(tmp_path).exists()
        assert store.payloads() == []

    def test_a_chunk_of_another_content_after_publish_is_refused(self, tmp_path: Path) -> None:
        """A chunk that passed the intake's look at the records before the upload was
        published, and reaches the store after, is refused, not taken for a duplicate."""
        store = new_store(tmp_path, fsync=False)
        put(store, 0, total=1, size=100)
        store.mark_published(published_info())
        store.remove_patches(FID)
        other = xxhash.xxh3_128_digest(b"another payload")
        with pytest.raises(ConflictError, match="not of the payload published"):
            put(store, 0, total=1, size=100, payload_digest=other)
        with pytest.raises(ConflictError, match="not of the payload published"):
            put(store, 0, total=1, size=100, name="other.log")
        assert not payload_dir(tmp_path).exists()
        assert store.payloads() == []

    def test_forget_published_deletes_the_record(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        store.mark_published(published_info())
        store.forget_published(FID)
        assert store.published(FID) is None
        assert [p.name for p in (tmp_path / "published").iterdir()] == ["published.log"]
        assert new_store(tmp_path).published_records() == []

    def test_published_records_are_oldest_first(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        late, early = published_info(FID, NOW + 10), published_info(OTHER, NOW)
        store.mark_published(late)
        store.mark_published(early)
        assert store.published_records() == [early, late]

    def test_remove(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        put(store, 0)
        assert store.remove(FID)
        assert not payload_dir(tmp_path).exists()
        assert store.info(FID) is None
        assert not store.remove(FID)
        assert not put(store, 0).duplicate  # the file id starts over

    def test_patch_paths_in_index_order(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        for index in (2, 0, 3, 1):
            put(store, index)
        paths = store.patch_paths(FID)
        assert [p.name for p in paths] == [f"patch_{i}.bin" for i in range(4)]
        assert [p.read_bytes() for p in paths] == [chunk_data(i) for i in range(4)]

    def test_patch_paths_of_incomplete_or_unknown_payloads(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        put(store, 0)
        with pytest.raises(UnknownFileError, match=rf"^upload {HEX} is not complete: 1 of 4"):
            store.patch_paths(FID)
        with pytest.raises(UnknownFileError, match=rf"^no upload {OTHER.hex()}$"):
            store.patch_paths(OTHER)


class TestStorageErrors:
    def test_a_failed_patch_write_commits_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = new_store(tmp_path)
        put(store, 0)
        real_write = os.write

        def full_disk(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "write", full_disk)
        with pytest.raises(
            IngestStorageError, match=r"^cannot write .*patch_1\.bin: No space left on device$"
        ):
            put(store, 1)
        monkeypatch.setattr(os, "write", real_write)
        info = store.info(FID)
        assert info is not None
        assert info.committed == frozenset({0})
        assert sorted(p.name for p in payload_dir(tmp_path).iterdir()) == [
            "ids.list",
            "meta.json",
            "patch_0.bin",
        ]
        assert not put(store, 1).duplicate

    def test_a_torn_append_is_cut_off_by_the_next_one(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = new_store(tmp_path)
        put(store, 0)
        real_pwrite = os.pwrite

        def half_then_eio(fd: int, data: bytes, offset: int) -> int:
            real_pwrite(fd, bytes(data)[:20], offset)
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "pwrite", half_then_eio)
        with pytest.raises(
            IngestStorageError, match=r"^cannot append to .*ids\.list: Input/output error$"
        ):
            put(store, 1)
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        put(store, 2)
        put(store, 1)
        assert [line.split()[0] for line in ids_lines(tmp_path)] == ["0", "2", "1"]
        info = new_store(tmp_path).info(FID)
        assert info is not None
        assert info.committed == frozenset({0, 1, 2})

    def test_a_failed_meta_write_forgets_the_payload(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = new_store(tmp_path)

        def broken_fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(IngestStorageError, match=r"meta\.json: Input/output error$"):
            put(store, 0)
        assert store.info(FID) is None
        assert store.payloads() == []
        assert "payloads=0" in repr(store)


class TestConcurrency:
    def test_eight_threads_storing_one_payload_commit_each_chunk_once(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        total, threads = 48, 8
        results: list[list[tuple[int, StoreResult]]] = [[] for _ in range(threads)]
        errors: list[BaseException] = []
        start = threading.Barrier(threads)

        def worker(slot: int) -> None:
            order = list(range(total))
            random.Random(slot).shuffle(order)  # seeded: every run races the same way
            start.wait()
            try:
                for index in order:
                    results[slot].append((index, put(store, index, total=total)))
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(slot,)) for slot in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert errors == []
        flat = [item for per_thread in results for item in per_thread]
        fresh = sorted(index for index, result in flat if not result.duplicate)
        assert fresh == list(range(total))
        assert sum(result.complete for _, result in flat) == 1
        lines = ids_lines(tmp_path)
        assert sorted(int(line.split()[0]) for line in lines) == list(range(total))
        info = new_store(tmp_path).info(FID)
        assert info is not None
        assert info.complete

    def test_threads_storing_different_payloads(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, fsync=False)
        ids = [FileId(bytes([n]) * 16) for n in range(8)]

        def worker(file_id: FileId) -> None:
            for index in range(10):
                put(store, index, total=10, file_id=file_id)

        pool = [threading.Thread(target=worker, args=(fid,)) for fid in ids]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert sorted(info.file_id for info in store.payloads()) == sorted(ids)
        assert all(info.complete for info in store.payloads())


def test_repr_shows_counts(tmp_path: Path) -> None:
    store = new_store(tmp_path, fsync=False)
    put(store, 0)
    assert repr(store) == f"<ChunkStore {tmp_path / 'patches'} payloads=1 published=0 unreadable=0>"


class TestWaitChunk:
    def test_returns_the_patch_once_another_thread_commits_it(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        put(store, 0)
        assert store.wait_chunk(FID, 0, 0.01) == payload_dir(tmp_path) / "patch_0.bin"
        assert store.wait_chunk(FID, 1, 0.05) is None  # not committed: times out
        later = threading.Timer(0.05, lambda: put(store, 1))
        later.start()
        path = store.wait_chunk(FID, 1, 10)
        later.join()
        assert path == payload_dir(tmp_path) / "patch_1.bin"
        assert path.read_bytes() == chunk_data(1)

    def test_a_removed_or_unknown_payload_raises(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        with pytest.raises(UnknownFileError, match=rf"^no upload {FID.hex()}$"):
            store.wait_chunk(FID, 0, 0.01)
        put(store, 0)
        later = threading.Timer(0.05, lambda: store.remove(FID))
        later.start()
        with pytest.raises(UnknownFileError):
            store.wait_chunk(FID, 3, 10)
        later.join()


class TestResidentChunks:
    def test_a_committed_chunk_is_handed_over_once_from_memory(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, resident_bytes=1000)
        put(store, 0)
        assert store.resident_used == 100
        assert store.wait_piece(FID, 0, 0.01) == chunk_data(0)
        assert store.resident_used == 0
        assert store.wait_piece(FID, 0, 0.01) == payload_dir(tmp_path) / "patch_0.bin"
        assert store.wait_piece(FID, 1, 0.05) is None  # not committed: times out
        assert (payload_dir(tmp_path) / "patch_0.bin").read_bytes() == chunk_data(0)

    def test_chunks_past_the_budget_are_read_from_their_patch(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, resident_bytes=250)
        for index in range(4):
            put(store, index)
        assert store.resident_used == 200
        pieces = [store.wait_piece(FID, index, 0.01) for index in range(4)]
        assert pieces[:2] == [chunk_data(0), chunk_data(1)]
        assert pieces[2:] == [payload_dir(tmp_path) / f"patch_{i}.bin" for i in (2, 3)]
        assert store.resident_used == 0

    def test_without_a_budget_every_piece_is_a_patch(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        put(store, 0)
        assert store.resident_used == 0
        assert store.wait_piece(FID, 0, 0.01) == payload_dir(tmp_path) / "patch_0.bin"

    def test_a_removed_or_published_payload_gives_its_bytes_back(self, tmp_path: Path) -> None:
        store = new_store(tmp_path, resident_bytes=10_000)
        put(store, 0)
        put(store, 1)
        put(store, 0, file_id=OTHER, total=1, size=100)
        assert store.resident_used == 300
        store.remove(FID)
        assert store.resident_used == 100
        store.mark_published(published_info(OTHER))
        assert store.resident_used == 0
        with pytest.raises(UnknownFileError):
            store.wait_piece(FID, 0, 0.01)

    def test_a_failed_write_gives_its_claim_back(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = new_store(tmp_path, resident_bytes=10_000)
        put(store, 0)
        real_write = os.write

        def full_disk(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "write", full_disk)
        with pytest.raises(IngestStorageError, match=r"No space left on device$"):
            put(store, 1)
        monkeypatch.setattr(os, "write", real_write)
        assert store.resident_used == 100

    def test_a_large_resident_chunk_is_durable_on_disk_too(self, tmp_path: Path) -> None:
        data = os.urandom(3 * 4096 + 77)
        store = new_store(tmp_path, resident_bytes=1 << 20)
        put(store, 0, total=1, data=data, size=len(data))
        assert store.wait_piece(FID, 0, 0.01) == data
        assert (payload_dir(tmp_path) / "patch_0.bin").read_bytes() == data
        info = new_store(tmp_path).info(FID)  # what a restart finds
        assert info is not None
        assert info.complete


class TestPublishedLog:
    """published/published.log: records appended, forgets replayed, tails repaired."""

    def log_path(self, root: Path) -> Path:
        return root / "published" / "published.log"

    def test_records_and_forgets_replay_in_order(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        first, second = published_info(FID), published_info(OTHER, NOW + 1)
        store.mark_published(first)
        store.mark_published(second)
        store.forget_published(FID)
        store.mark_published(published_info(FID, NOW + 2))  # the id published again
        lines = self.log_path(tmp_path).read_bytes().splitlines()
        assert len(lines) == 4
        assert json.loads(lines[2]) == {"forget": FID.hex()}
        again = new_store(tmp_path)
        assert again.published_records() == [second, published_info(FID, NOW + 2)]

    @pytest.mark.parametrize("tail", [b'{"file_id": "00112233', b"not json at all\n"])
    def test_a_torn_or_bad_tail_is_cut_and_appends_go_on(self, tmp_path: Path, tail: bytes) -> None:
        store = new_store(tmp_path)
        store.mark_published(published_info(FID))
        good = self.log_path(tmp_path).read_bytes()
        with open(self.log_path(tmp_path), "ab") as out:
            out.write(tail)  # a crash mid-append (never acknowledged), or garbage
        again = new_store(tmp_path)
        assert again.published_records() == [published_info(FID)]
        assert self.log_path(tmp_path).read_bytes() == good
        again.mark_published(published_info(OTHER, NOW + 1))
        assert [r.file_id for r in new_store(tmp_path).published_records()] == [FID, OTHER]

    def test_a_log_mostly_dead_is_compacted(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(published_module, "COMPACT_MIN_LINES", 10)
        store = new_store(tmp_path, fsync=False)
        for n in range(8):
            fid = FileId(bytes([n]) * 16)
            store.mark_published(published_info(fid, NOW + n))
            if n < 6:
                store.forget_published(fid)
        assert len(self.log_path(tmp_path).read_bytes().splitlines()) == 14
        again = new_store(tmp_path)
        assert len(self.log_path(tmp_path).read_bytes().splitlines()) == 2
        assert [r.published_at for r in again.published_records()] == [NOW + 6, NOW + 7]
        assert [r.published_at for r in new_store(tmp_path).published_records()] == [
            NOW + 6,
            NOW + 7,
        ]

    def test_per_id_records_of_earlier_versions_are_read_and_forgotten(
        self, tmp_path: Path
    ) -> None:
        record = published_info(FID)
        (tmp_path / "published").mkdir(parents=True)
        legacy = tmp_path / "published" / f"{FID.hex()}.json"
        legacy.write_bytes(published_module._format_record(record))
        store = new_store(tmp_path)
        assert store.published(FID) == record
        store.forget_published(FID)
        assert not legacy.exists()
        assert new_store(tmp_path).published(FID) is None


def test_a_published_record_holds_every_field_and_reads_back() -> None:
    info = PublishedInfo(
        file_id=FID,
        name="report.log",
        size=123,
        digest=bytes(range(16)),
        payload_digest=bytes(range(16, 32)),
        published_at=NOW,
        replaced=True,
    )
    line = published_module._format_record(info)
    assert list(json.loads(line)) == [f.name for f in dataclasses.fields(PublishedInfo)]
    assert published_module._parse_record(line) == info


class TestFramed:
    """A FRAMED upload's content size (meta.json) and offsets (ids.list) survive reopen."""

    def _put(self, store: ChunkStore, index: int, offset: int, content_size: int | None) -> None:
        data = chunk_data(index)
        store.store_chunk(
            file_id=FID,
            index=index,
            total=3,
            size=300,
            name="framed.log",
            payload_digest=PAYLOAD_DIGEST,
            digest=xxhash.xxh3_128_digest(data),
            data=data,
            now=NOW,
            content_size=content_size,
            content_offset=offset,
        )

    def test_offsets_and_content_size_survive_a_restart(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        self._put(store, 2, 7000, 9000)
        self._put(store, 0, 0, 9000)
        assert ids_lines(tmp_path) == [
            f"2 {xxhash.xxh3_128_hexdigest(chunk_data(2))} 7000",
            f"0 {xxhash.xxh3_128_hexdigest(chunk_data(0))} 0",
        ]
        meta = json.loads((payload_dir(tmp_path) / "meta.json").read_text())
        assert meta["content_size"] == 9000
        again = new_store(tmp_path)
        info = again.info(FID)
        assert info is not None
        assert info.content_size == 9000
        assert [again.content_offset(FID, i) for i in range(3)] == [0, None, 7000]

    def test_a_plain_chunk_of_a_framed_upload_conflicts(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        self._put(store, 0, 0, 9000)
        with pytest.raises(
            ConflictError,
            match=rf"^chunk 1 of {HEX} has content size None, the payload has content size 9000$",
        ):
            self._put(store, 1, 0, None)
        with pytest.raises(ConflictError, match=r"has content size 8000, the payload has"):
            self._put(store, 1, 3000, 8000)

    def test_a_framed_line_without_its_offset_is_dropped_on_recovery(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        self._put(store, 0, 0, 9000)
        self._put(store, 1, 3000, 9000)
        lines = ids_lines(tmp_path)
        (payload_dir(tmp_path) / "ids.list").write_text(
            f"{lines[0]}\n{lines[1].rsplit(' ', 1)[0]}\n"
        )
        again = new_store(tmp_path)
        info = again.info(FID)
        assert info is not None
        assert info.committed == frozenset({0})
