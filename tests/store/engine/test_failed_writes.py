"""A write the disk refuses (a failed write(2) or fsync) changes nothing: not the index,
not the log, not after a later write succeeds, not after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from postoffice.store.engine import Delete, GroupCommit, Put, Store, StoreStorageError


class _Disk:
    """Fails os.fsync or os.pwrite on demand (the engine's only ways to the disk)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fail_fsync = False
        self.fail_write = False
        real_fsync, real_pwrite = os.fsync, os.pwrite

        def fsync(fd: int) -> None:
            if self.fail_fsync:
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)

        def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
            if self.fail_write:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "pwrite", pwrite)

    @contextlib.contextmanager
    def failing(self, what: str) -> Iterator[None]:
        setattr(self, f"fail_{what}", True)
        try:
            yield
        finally:
            setattr(self, f"fail_{what}", False)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> _Disk:
    return _Disk(monkeypatch)


def _segment_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path / "log").iterdir())


_STORAGE = r"^cannot (fsync|write) .*\.seg: (Input/output error|No space left on device)"


@pytest.mark.parametrize("what", ["fsync", "write"])
def test_a_failed_put_delete_or_batch_changes_nothing(
    tmp_path: Path, disk: _Disk, what: str
) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"a", b"1")
        s.put(b"b", b"2")
        size = _segment_bytes(tmp_path)
        with disk.failing(what):
            with pytest.raises(StoreStorageError, match=_STORAGE):
                s.put(b"a", b"changed")
            assert s.get(b"a") == b"1"
            with pytest.raises(StoreStorageError):
                s.put(b"new", b"x")
            assert s.get(b"new") is None
            with pytest.raises(StoreStorageError):
                s.delete(b"b")
            assert s.get(b"b") == b"2"
            with pytest.raises(StoreStorageError):
                s.batch([Put(key=b"c", value=b"3"), Delete(key=b"a")])
            assert (s.get(b"c"), s.get(b"a")) == (None, b"1")
            assert len(s) == 2
            assert _segment_bytes(tmp_path) == size  # cut back: no failed byte is left
        s.put(b"d", b"4")  # a later write that succeeds makes none of them durable
        assert [k for k, _ in s.scan()] == [b"a", b"b", b"d"]
    for _ in range(2):  # the index as it was, then rebuilt from the log alone
        with Store.open(tmp_path) as s:
            assert s.scan() == [(b"a", b"1"), (b"b", b"2"), (b"d", b"4")]
            assert s.recovery.truncated is None
            assert s.recovery.corrupt == ()
        shutil.rmtree(tmp_path / "index")


def test_writes_behind_a_failed_fsync_are_undone_too(tmp_path: Path, disk: _Disk) -> None:
    """Under write-behind several writes wait for one fsync: when it fails, every write it
    covered and every write appended since is undone, and their tickets fail."""
    with Store.open(tmp_path) as s:
        s.write_behind = True
        s.sync(s.put_nowait(b"k", b"durable"))
        first = s.put_nowait(b"k", b"one")
        s.write_pending()
        second = s.put_nowait(b"k", b"two")  # still in memory when the fsync fails
        deleted, third = s.delete_nowait(b"k")
        assert deleted
        with disk.failing("fsync"), pytest.raises(StoreStorageError, match=_STORAGE):
            s.sync(first)
        assert s.get(b"k") == b"durable"
        for ticket in (first, second, third):
            with pytest.raises(StoreStorageError, match=_STORAGE):
                s.sync(ticket)
        assert [(lo, hi) for lo, hi, _ in s.failures(0, third)] == [(first - 1, third)]
        later = s.put_nowait(b"j", b"later")
        assert later > third
        assert s.sync(later) >= later
    with Store.open(tmp_path) as s:
        assert s.scan() == [(b"j", b"later"), (b"k", b"durable")]


def test_the_committer_fails_exactly_the_rolled_back_tickets(tmp_path: Path, disk: _Disk) -> None:
    """Group commit with a failed fsync: the tickets before the roll back are durable
    and answered OK, the rolled-back ones (also one appended after the synced ticket)
    get the error, and later ones are OK again."""
    heard: list[tuple[int, str | None]] = []

    class Waiter:
        def __init__(self, tickets: list[int]) -> None:
            self.tickets = tickets
            self.answered = asyncio.get_running_loop().create_future()

        def synced(self, covered: int, error: BaseException | None) -> bool:
            while self.tickets and self.tickets[0] <= covered:
                name = None if error is None else type(error).__name__
                heard.append((self.tickets.pop(0), name))
            if not self.tickets and not self.answered.done():
                self.answered.set_result(None)
            return bool(self.tickets)

    async def run(s: Store) -> None:
        commit = GroupCommit(s, asyncio.get_running_loop())
        commit.start()
        try:
            ok = s.put_nowait(b"a", b"1")
            waiter = Waiter([ok])
            commit.wait(waiter, ok)
            await waiter.answered
            disk.fail_fsync = True
            bad = [s.put_nowait(b"b%d" % i, b"x") for i in range(2)]
            waiter = Waiter([*bad])
            commit.wait(waiter, bad[-1])
            # Appended before the failure is handled, waited for after: rolled back too.
            late = s.put_nowait(b"b9", b"x")
            waiter.tickets.append(late)
            commit.wait(waiter, late)
            await waiter.answered
            disk.fail_fsync = False
            good = s.put_nowait(b"c", b"3")
            waiter = Waiter([good])
            commit.wait(waiter, good)
            await waiter.answered
        finally:
            await commit.stop()

    with Store.open(tmp_path) as s:
        s.write_behind = True
        asyncio.run(asyncio.wait_for(run(s), 30))
        failed = "StoreStorageError"
        assert [e for _, e in heard] == [None, failed, failed, failed, None]
        assert [k for k, _ in s.scan()] == [b"a", b"c"]
    with Store.open(tmp_path) as s:
        assert [k for k, _ in s.scan()] == [b"a", b"c"]


def test_a_store_closes_and_reopens_right_after_a_failure(tmp_path: Path, disk: _Disk) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"a", b"1")
        with disk.failing("fsync"), pytest.raises(StoreStorageError, match=_STORAGE):
            s.put(b"b", b"2")
    with Store.open(tmp_path) as s:
        assert s.scan() == [(b"a", b"1")]
