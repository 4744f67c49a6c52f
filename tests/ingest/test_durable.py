"""durable.py: the in-place patch write (buffered and O_DIRECT) and the group fsync, on real
files."""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Callable
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


_WAIT_S = 10.0  # upper bound on waits for other threads


class _HeldFsync:
    """Stands in for the fsync: numbers each call on `ticks`, holds the first one until
    `released` is set, and fails every call while `fail` is set."""

    def __init__(self, ticks: Callable[[], int], *, fail: bool = False) -> None:
        self.ticks = ticks
        self.calls: list[int] = []  # the tick at which each fsync started
        self.started = threading.Event()  # the first fsync is running
        self.released = threading.Event()
        self.fail = fail

    def __call__(self, path: Path) -> None:
        self.calls.append(self.ticks())
        if len(self.calls) == 1:
            self.started.set()
            assert self.released.wait(_WAIT_S), "the first fsync was never released"
        if self.fail:
            raise IngestStorageError(f"cannot fsync {path}: Input/output error")


class _WatchedCondition(threading.Condition):
    """GroupSync's condition, counting the waits on it so a test knows who waits."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0
        self._seen = threading.Condition()

    def wait(self, timeout: float | None = None) -> bool:
        with self._seen:
            self.waits += 1
            self._seen.notify_all()
        return super().wait(timeout)

    def until_waits(self, count: int) -> None:
        """Return once `count` waits have begun (bounded)."""
        with self._seen:
            assert self._seen.wait_for(lambda: self.waits >= count, _WAIT_S)


def _watched(
    monkeypatch: pytest.MonkeyPatch, *, fail: bool = False
) -> tuple[GroupSync, _HeldFsync, _WatchedCondition, Callable[[], int]]:
    """A GroupSync over a held fsync, and a logical clock (a counter) both read."""
    counter = itertools.count()
    lock = threading.Lock()

    def ticks() -> int:
        with lock:
            return next(counter)

    held = _HeldFsync(ticks, fail=fail)
    monkeypatch.setattr(durable, "_fsync_path", held)
    syncer = GroupSync()
    condition = _WatchedCondition()
    syncer._cond = condition
    return syncer, held, condition, ticks


def test_concurrent_syncs_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The callers that arrive while an fsync runs share one more: 16 callers, 2 fsyncs."""
    syncer, held, condition, ticks = _watched(monkeypatch)
    called: dict[int, int] = {}
    returned: dict[int, int] = {}

    def worker(i: int) -> None:
        called[i] = ticks()
        syncer.sync(tmp_path)
        returned[i] = ticks()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    threads[0].start()
    assert held.started.wait(_WAIT_S)
    for thread in threads[1:]:
        thread.start()
    condition.until_waits(15)  # every other caller waits behind the running fsync
    held.released.set()
    for thread in threads:
        thread.join(_WAIT_S)
    assert len(returned) == 16
    assert len(held.calls) == 2
    # Each caller returned only after an fsync that started after it called.
    for i in range(16):
        assert any(called[i] < start < returned[i] for start in held.calls)


def test_a_sync_called_during_an_fsync_waits_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncer, held, condition, _ = _watched(monkeypatch)
    first = threading.Thread(target=syncer.sync, args=(tmp_path,))
    first.start()
    assert held.started.wait(_WAIT_S)
    # The running fsync may predate the second caller's write: a new one is needed.
    second = threading.Thread(target=syncer.sync, args=(tmp_path,))
    second.start()
    condition.until_waits(1)
    assert len(held.calls) == 1
    held.released.set()
    first.join(_WAIT_S)
    second.join(_WAIT_S)
    assert not first.is_alive()
    assert not second.is_alive()
    assert len(held.calls) == 2


def test_a_failed_fsync_fails_every_caller_counting_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncer, held, condition, _ = _watched(monkeypatch, fail=True)
    errors: list[str] = []

    def worker() -> None:
        try:
            syncer.sync(tmp_path)
        except IngestStorageError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    threads[0].start()
    assert held.started.wait(_WAIT_S)
    for thread in threads[1:]:
        thread.start()
    condition.until_waits(7)
    held.released.set()  # the first fsync fails its caller; one waiter runs the next
    for thread in threads:
        thread.join(_WAIT_S)
    assert len(held.calls) == 2
    failed = f"cannot fsync {tmp_path}: Input/output error"
    # The two that ran a failing fsync see its error; the six counting on the second, that
    # it failed.
    assert sorted(errors) == sorted(
        [failed] * 2 + [f"cannot fsync {tmp_path}: the fsync failed"] * 6
    )
    held.fail = False
    syncer.sync(tmp_path)  # a later fsync that succeeds serves later callers
    assert len(held.calls) == 3


def test_callers_sharing_an_fsync_return_when_many_paths_are_tracked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past 1024 tracked paths an idle path is forgotten: every caller that counted on
    its fsyncs returns, not only the first to forget it (the others found it gone)."""
    syncer, held, condition, _ = _watched(monkeypatch)
    # idle paths synced earlier, as many uploads' directories leave them on a busy server
    for i in range(1100):
        syncer._state[tmp_path / f"other-{i}"] = [1, 1, 0, -1]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            syncer.sync(tmp_path)
        except BaseException as exc:  # any error a caller meets fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    threads[0].start()
    assert held.started.wait(_WAIT_S)
    for thread in threads[1:]:
        thread.start()
    condition.until_waits(3)
    held.released.set()
    for thread in threads:
        thread.join(_WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(held.calls) == 2


def test_real_fsync_of_a_file_and_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "ids.list"
    path.write_bytes(b"0 00\n")
    syncer = GroupSync()
    syncer.sync(path)
    syncer.sync(tmp_path)
    with pytest.raises(IngestStorageError, match=r"^cannot fsync .*missing"):
        syncer.sync(tmp_path / "missing")


class _OpenFlags:
    """Wraps os.open, recording the flags of every call; refuses O_DIRECT if told to."""

    def __init__(self, refuse_direct: bool = False) -> None:
        self.flags: list[int] = []
        self.refuse_direct = refuse_direct
        self.real = os.open

    def __call__(self, path: object, flags: int, mode: int = 0o777) -> int:
        self.flags.append(flags)
        if self.refuse_direct and flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return self.real(path, flags, mode)  # type: ignore[arg-type]


def _has_o_direct(folder: Path) -> bool:
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    os.unlink(folder / "probe")
    return True


@pytest.mark.parametrize(
    "size",
    [
        durable.DIRECT_ALIGN_BYTES,
        3 * durable.DIRECT_ALIGN_BYTES + 17,  # an unaligned tail, written buffered
        2 * durable.DIRECT_BUFFER_BYTES + 5000,  # more than one pass through the buffer
    ],
)
def test_a_direct_write_holds_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    if not _has_o_direct(tmp_path):
        pytest.skip("the temp dir's file system has no O_DIRECT")
    opened = _OpenFlags()
    monkeypatch.setattr(os, "open", opened)
    data = os.urandom(size)
    path = tmp_path / "patch_0.bin"
    write_file(path, b"old bytes, longer than nothing" * 1000, fsync=False)
    write_file(path, data, fsync=True, direct=True)
    assert opened.flags[-1] & os.O_DIRECT
    assert path.read_bytes() == data


def test_a_write_shorter_than_a_block_is_never_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = _OpenFlags()
    monkeypatch.setattr(os, "open", opened)
    path = tmp_path / "patch_0.bin"
    write_file(path, b"y" * 100, fsync=True, direct=True)
    assert not opened.flags[-1] & os.O_DIRECT
    assert path.read_bytes() == b"y" * 100


def test_a_file_system_without_o_direct_gets_a_buffered_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = _OpenFlags(refuse_direct=True)
    monkeypatch.setattr(os, "open", opened)
    data = os.urandom(5 * durable.DIRECT_ALIGN_BYTES)
    path = tmp_path / "patch_0.bin"
    write_file(path, data, fsync=True, direct=True)
    assert [bool(flags & os.O_DIRECT) for flags in opened.flags] == [True, False]
    assert path.read_bytes() == data


def test_a_refused_direct_write_goes_on_buffered_from_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite
    calls: list[int] = []

    def refuse_the_second(fd: int, data: memoryview, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_pwrite(fd, data, offset)

    if not _has_o_direct(tmp_path):
        pytest.skip("the temp dir's file system has no O_DIRECT")
    monkeypatch.setattr(os, "pwrite", refuse_the_second)
    data = os.urandom(3 * durable.DIRECT_BUFFER_BYTES + 123)
    path = tmp_path / "patch_0.bin"
    write_file(path, data, fsync=True, direct=True)
    assert calls == [0, durable.DIRECT_BUFFER_BYTES]
    assert path.read_bytes() == data


def test_a_failed_direct_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if not _has_o_direct(tmp_path):
        pytest.skip("the temp dir's file system has no O_DIRECT")
    monkeypatch.setattr(os, "pwrite", full)
    path = tmp_path / "patch_2.bin"
    with pytest.raises(IngestStorageError, match=r"^cannot write .*patch_2\.bin: No space left"):
        write_file(path, os.urandom(8 * durable.DIRECT_ALIGN_BYTES), fsync=True, direct=True)
    assert not path.exists()
