"""durable.py: the in-place patch write and the group fsync, on real files."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from postoffice.ingest import durable
from postoffice.ingest.durable import GroupSync, write_file
from postoffice.ingest.errors import IngestStorageError


def test_write_file_writes_and_truncates(tmp_path: Path) -> None:
    path = tmp_path / "patch_0.bin"
    write_file(path, b"x" * 100, fsync=True)
    write_file(path, memoryview(b"abc"), fsync=False)
    assert path.read_bytes() == b"abc"


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    path = tmp_path / "patch_1.bin"
    with pytest.raises(IngestStorageError, match=r"^cannot write .*patch_1\.bin: No space left"):
        write_file(path, b"data", fsync=True)
    assert not path.exists()


class _SlowFsync:
    """Counts fsyncs and makes each take a while, so callers pile up behind one."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.lock = threading.Lock()
        self.fail = False

    def __call__(self, path: Path) -> None:
        with self.lock:
            self.calls.append(time.monotonic())
        time.sleep(0.05)
        if self.fail:
            raise IngestStorageError(f"cannot fsync {path}: Input/output error")


def test_concurrent_syncs_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = _SlowFsync()
    monkeypatch.setattr(durable, "_fsync_path", slow)
    syncer = GroupSync()
    called: dict[int, float] = {}
    returned: dict[int, float] = {}

    def worker(i: int) -> None:
        called[i] = time.monotonic()
        syncer.sync(tmp_path)
        returned[i] = time.monotonic()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(returned) == 16
    assert len(slow.calls) <= 4  # 16 callers, a handful of fsyncs
    # Each caller returned only after an fsync that started after it called.
    for i in range(16):
        assert any(called[i] <= start <= returned[i] for start in slow.calls)


def test_a_sync_called_during_an_fsync_waits_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _SlowFsync()
    monkeypatch.setattr(durable, "_fsync_path", slow)
    syncer = GroupSync()
    first = threading.Thread(target=syncer.sync, args=(tmp_path,))
    first.start()
    while not slow.calls:
        time.sleep(0.001)
    syncer.sync(tmp_path)  # the running fsync may predate our write: a new one is needed
    first.join()
    assert len(slow.calls) == 2


def test_a_failed_fsync_fails_every_caller_counting_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = _SlowFsync()
    slow.fail = True
    monkeypatch.setattr(durable, "_fsync_path", slow)
    syncer = GroupSync()
    errors: list[str] = []

    def worker() -> None:
        try:
            syncer.sync(tmp_path)
        except IngestStorageError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 8
    slow.fail = False
    syncer.sync(tmp_path)  # a later fsync that succeeds serves later callers


def test_real_fsync_of_a_file_and_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "ids.list"
    path.write_bytes(b"0 00\n")
    syncer = GroupSync()
    syncer.sync(path)
    syncer.sync(tmp_path)
    with pytest.raises(IngestStorageError, match=r"^cannot fsync .*missing"):
        syncer.sync(tmp_path / "missing")
