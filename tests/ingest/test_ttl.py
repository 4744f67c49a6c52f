"""TTL cleanup over a real ChunkStore and real files in tmp_path, aged with os.utime."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

import pytest
import xxhash

from postoffice.ingest.errors import IngestStorageError
from postoffice.ingest.messages import FileId, file_id_hex
from postoffice.ingest.published import PublishedInfo
from postoffice.ingest.storage import ChunkStore
from postoffice.ingest.ttl import STRAY_GRACE_S, CleanupReport, cleanup_pass, is_expired

NOW = 1_700_000_000.0
TTL_S = 3600.0
OLD = NOW - TTL_S - 1  # just past the TTL
FRESH = NOW - 10


def fid(n: int) -> FileId:
    return FileId(n.to_bytes(16, "big"))


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    chunk_store = ChunkStore(tmp_path / "patches", tmp_path / "published", fsync=False)
    chunk_store.open()
    return chunk_store


@pytest.fixture
def files_dir(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


def upload(
    store: ChunkStore, file_id: FileId, *, name: str, at: float, indexes: tuple[int, ...] = (0,)
) -> None:
    """Commit some chunks of a 2-chunk payload, the last one at `at`."""
    for index in indexes:
        data = b"chunk %d" % index
        store.store_chunk(
            file_id=file_id,
            index=index,
            total=2,
            size=100,
            name=name,
            payload_digest=xxhash.xxh3_128_digest(name.encode()),
            digest=xxhash.xxh3_128_digest(data),
            data=data,
            now=at,
        )


def publish_record(store: ChunkStore, file_id: FileId, *, name: str, at: float) -> None:
    store.mark_published(
        PublishedInfo(
            file_id=file_id,
            name=name,
            size=1,
            digest=bytes(16),
            payload_digest=bytes(16),
            published_at=at,
            replaced=False,
        )
    )


def put(folder: Path, name: str, *, mtime: float) -> Path:
    path = folder / name
    path.write_bytes(b"data")
    os.utime(path, (mtime, mtime))
    return path


def run(
    store: ChunkStore,
    files_dir: Path,
    *,
    busy: Collection[bytes] = (),
    stray_grace_s: float = STRAY_GRACE_S,
) -> CleanupReport:
    return cleanup_pass(
        store=store,
        files_dir=files_dir,
        ttl_s=TTL_S,
        now=NOW,
        busy=busy,
        stray_grace_s=stray_grace_s,
    )


@pytest.mark.parametrize(
    ("updated", "now", "ttl_s", "expected"),
    [
        (0.0, 100.0, 50.0, True),
        (50.0, 100.0, 50.0, False),  # exactly ttl old: not yet
        (49.9, 100.0, 50.0, True),
        (100.0, 100.0, 50.0, False),
        (200.0, 100.0, 50.0, False),  # in the future: the clock stepped back
    ],
)
def test_is_expired(updated: float, now: float, ttl_s: float, expected: bool) -> None:
    assert is_expired(updated, now, ttl_s) is expected


def test_report_total_counts_every_removal() -> None:
    report = CleanupReport(
        expired_uploads=("a", "b"),
        expired_files=("f",),
        expired_records=3,
        stray_files=("s",),
        errors=("e1", "e2"),
    )
    assert report.total == 7
    assert CleanupReport().total == 0


def test_empty_store_and_files_dir_remove_nothing(store: ChunkStore, files_dir: Path) -> None:
    assert run(store, files_dir) == CleanupReport()


def test_missing_files_dir_is_not_an_error(store: ChunkStore, tmp_path: Path) -> None:
    assert run(store, tmp_path / "nowhere") == CleanupReport()


class TestUploads:
    def test_expired_incomplete_upload_is_removed(self, store: ChunkStore, files_dir: Path) -> None:
        upload(store, fid(1), name="old.bin", at=OLD)
        upload(store, fid(2), name="new.bin", at=FRESH)
        report = run(store, files_dir)
        assert report.expired_uploads == (file_id_hex(fid(1)),)
        assert report.total == 1
        assert store.info(fid(1)) is None
        assert not (store.patches_dir / file_id_hex(fid(1))).exists()
        assert store.info(fid(2)) is not None

    def test_last_update_counts_not_creation(self, store: ChunkStore, files_dir: Path) -> None:
        upload(store, fid(1), name="slow.bin", at=OLD - 1000, indexes=(0,))
        upload(store, fid(1), name="slow.bin", at=FRESH, indexes=(1,))
        assert run(store, files_dir).expired_uploads == ()
        assert store.info(fid(1)) is not None

    def test_busy_upload_is_skipped(self, store: ChunkStore, files_dir: Path) -> None:
        upload(store, fid(1), name="assembling.bin", at=OLD, indexes=(0, 1))
        assert run(store, files_dir, busy={fid(1)}).expired_uploads == ()
        assert store.info(fid(1)) is not None

    def test_complete_upload_left_unassembled_expires_too(
        self, store: ChunkStore, files_dir: Path
    ) -> None:
        """A payload whose assembly failed stays in the store until its TTL passes."""
        upload(store, fid(1), name="broken.zst", at=OLD, indexes=(0, 1))
        assert run(store, files_dir).expired_uploads == (file_id_hex(fid(1)),)

    def test_remove_error_is_reported_and_the_pass_goes_on(
        self,
        store: ChunkStore,
        files_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        upload(store, fid(1), name="a.bin", at=OLD)
        upload(store, fid(2), name="b.bin", at=OLD)
        put(files_dir, "old.txt", mtime=OLD)
        real_remove = store.remove

        def remove(file_id: FileId) -> bool:
            if file_id == fid(1):
                raise IngestStorageError("cannot remove patches: disk on fire")
            return real_remove(file_id)

        monkeypatch.setattr(store, "remove", remove)
        with caplog.at_level(logging.WARNING, logger="postoffice.ingest.ttl"):
            report = run(store, files_dir)
        assert report.expired_uploads == (file_id_hex(fid(2)),)
        assert report.expired_files == ("old.txt",)
        assert report.errors == (
            f"cannot remove upload {file_id_hex(fid(1))}: cannot remove patches: disk on fire",
        )
        assert "disk on fire" in caplog.text


class TestPublishedFiles:
    def test_old_files_go_and_fresh_ones_stay(self, store: ChunkStore, files_dir: Path) -> None:
        put(files_dir, "old.txt", mtime=OLD)
        put(files_dir, "old file with spaces.txt", mtime=OLD)
        put(files_dir, "fresh.txt", mtime=FRESH)
        report = run(store, files_dir)
        assert sorted(report.expired_files) == ["old file with spaces.txt", "old.txt"]
        assert sorted(p.name for p in files_dir.iterdir()) == ["fresh.txt"]

    def test_names_no_upload_could_have_are_left_alone(
        self, store: ChunkStore, files_dir: Path
    ) -> None:
        for name in (".hidden", " leading-space", "trailing-space ", "ctl\x01char"):
            put(files_dir, name, mtime=OLD)
        assert run(store, files_dir) == CleanupReport()
        assert len(list(files_dir.iterdir())) == 4

    def test_symlinks_and_directories_are_never_followed_or_removed(
        self, store: ChunkStore, files_dir: Path, tmp_path: Path
    ) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        target = put(outside, "precious.txt", mtime=OLD)
        link = files_dir / "link.txt"
        link.symlink_to(target)
        os.utime(link, (OLD, OLD), follow_symlinks=False)
        (files_dir / "subdir").mkdir()
        put(files_dir / "subdir", "inner.txt", mtime=OLD)
        os.utime(files_dir / "subdir", (OLD, OLD))
        assert run(store, files_dir) == CleanupReport()
        assert link.is_symlink()
        assert target.exists()
        assert (files_dir / "subdir" / "inner.txt").exists()

    def test_name_a_busy_upload_will_replace_is_kept(
        self, store: ChunkStore, files_dir: Path
    ) -> None:
        upload(store, fid(1), name="report.pdf", at=FRESH, indexes=(0, 1))
        put(files_dir, "report.pdf", mtime=OLD)
        put(files_dir, "other.pdf", mtime=OLD)
        report = run(store, files_dir, busy=[fid(1)])
        assert report.expired_files == ("other.pdf",)
        assert (files_dir / "report.pdf").exists()

    def test_unlink_error_is_reported_and_the_pass_goes_on(
        self, store: ChunkStore, files_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stuck = put(files_dir, "stuck.txt", mtime=OLD)
        put(files_dir, "gone.txt", mtime=OLD)
        real_unlink = Path.unlink

        def unlink(self: Path, missing_ok: bool = False) -> None:
            if self.name == "stuck.txt":
                raise PermissionError(13, "Permission denied", str(self))
            real_unlink(self, missing_ok)

        monkeypatch.setattr(Path, "unlink", unlink)
        report = run(store, files_dir)
        assert report.expired_files == ("gone.txt",)
        assert report.errors == (f"cannot remove {stuck}: [Errno 13] Permission denied: '{stuck}'",)
        assert stuck.exists()

    def test_unlistable_files_dir_is_reported(self, store: ChunkStore, tmp_path: Path) -> None:
        not_a_dir = tmp_path / "files"
        not_a_dir.write_bytes(b"")
        upload(store, fid(1), name="a.bin", at=OLD)
        report = run(store, not_a_dir)
        assert report.expired_uploads == (file_id_hex(fid(1)),)
        assert len(report.errors) == 1
        assert report.errors[0].startswith(f"cannot list {not_a_dir}: [Errno 20] Not a directory")


class TestPublishedRecords:
    def test_old_records_are_forgotten(self, store: ChunkStore, files_dir: Path) -> None:
        publish_record(store, fid(1), name="a.txt", at=OLD)
        publish_record(store, fid(2), name="b.txt", at=FRESH)
        report = run(store, files_dir)
        assert report.expired_records == 1
        assert store.published(fid(1)) is None
        assert store.published(fid(2)) is not None
        reopened = ChunkStore(store.patches_dir, store.published_dir, fsync=False)
        reopened.open()
        assert [r.file_id for r in reopened.published_records()] == [fid(2)]

    def test_forget_error_is_reported(
        self, store: ChunkStore, files_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        publish_record(store, fid(1), name="a.txt", at=OLD)

        def forget(file_id: FileId) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(store, "forget_published", forget)
        report = run(store, files_dir)
        assert report.expired_records == 0
        assert report.errors == (
            f"cannot forget published {file_id_hex(fid(1))}: [Errno 5] Input/output error",
        )


class TestStrayStagingFiles:
    def staging(self, name: str, file_id: FileId, suffix: str = "tmp") -> str:
        return f".{name}.{file_id_hex(file_id)}.{suffix}"

    def test_stray_tmp_and_part_past_the_grace_are_removed(
        self, store: ChunkStore, files_dir: Path
    ) -> None:
        tmp = self.staging("a.txt", fid(1))
        part = self.staging("b.v2.txt", fid(2), "part")
        young = self.staging("c.txt", fid(3))
        put(files_dir, tmp, mtime=NOW - 61)
        put(files_dir, part, mtime=NOW - 61)
        put(files_dir, young, mtime=NOW - 59)
        report = run(store, files_dir)
        assert sorted(report.stray_files) == sorted([tmp, part])
        assert report.expired_files == ()
        assert [p.name for p in files_dir.iterdir()] == [young]

    def test_grace_is_independent_of_the_ttl(self, store: ChunkStore, files_dir: Path) -> None:
        name = self.staging("a.txt", fid(1))
        put(files_dir, name, mtime=NOW - 5)
        assert run(store, files_dir, stray_grace_s=1.0).stray_files == (name,)

    def test_staging_file_of_a_busy_upload_is_kept(
        self, store: ChunkStore, files_dir: Path
    ) -> None:
        name = self.staging("a.txt", fid(1))
        put(files_dir, name, mtime=OLD)
        assert run(store, files_dir, busy=(fid(1),)).stray_files == ()
        assert (files_dir / name).exists()

    @pytest.mark.parametrize(
        "name",
        [
            ".a.txt." + "0" * 31 + ".tmp",  # short id
            ".a.txt." + "A" * 32 + ".tmp",  # upper-case id: never written by us
            ".a.txt." + "0" * 32 + ".bak",
            ".." + "0" * 32 + ".tmp",  # empty name
            ". lead." + "0" * 32 + ".tmp",  # a name no upload could have
            "a.txt." + "0" * 32 + ".tmp",  # not hidden: a published file, judged by the TTL
        ],
    )
    def test_other_names_are_not_stray(self, store: ChunkStore, files_dir: Path, name: str) -> None:
        put(files_dir, name, mtime=NOW - 120)
        assert run(store, files_dir) == CleanupReport()
        assert (files_dir / name).exists()


def test_one_pass_does_everything(store: ChunkStore, files_dir: Path) -> None:
    upload(store, fid(1), name="partial.bin", at=OLD)
    publish_record(store, fid(2), name="done.txt", at=OLD)
    put(files_dir, "done.txt", mtime=OLD)
    stray = f".x.{file_id_hex(fid(3))}.part"
    put(files_dir, stray, mtime=OLD)
    report = run(store, files_dir)
    assert report == CleanupReport(
        expired_uploads=(file_id_hex(fid(1)),),
        expired_files=("done.txt",),
        expired_records=1,
        stray_files=(stray,),
    )
    assert report.total == 4
    assert list(files_dir.iterdir()) == []
