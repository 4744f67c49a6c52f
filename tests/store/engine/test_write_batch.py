"""Group commit without fsync (durability `interval` and `never`): an event-loop iteration's
writes go to the log in one write(2), and each waiter hears of it only after that write."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from postoffice.store.engine import Durability, GroupCommit, Store


class Waiter:
    """Records each `synced` call with the size of the log's files at that moment."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.heard: list[tuple[int, str | None, int]] = []

    def synced(self, covered: int, error: BaseException | None) -> bool:
        size = sum(p.stat().st_size for p in self.log_dir.iterdir())
        self.heard.append((covered, None if error is None else type(error).__name__, size))
        return False


@pytest.mark.parametrize("durability", [Durability.INTERVAL, Durability.NEVER])
def test_an_iterations_writes_are_written_once_before_their_waiters_hear(
    tmp_path: Path, durability: Durability
) -> None:
    writes: list[int] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        writes.append(len(data))
        return real_pwrite(fd, data, offset)

    async def run(s: Store, first: Waiter, second: Waiter) -> None:
        commit = GroupCommit(s, asyncio.get_running_loop(), fsync=False)
        commit.start()
        try:
            for i in range(10):  # two connections' writes in one loop iteration
                waiter = first if i % 2 else second
                commit.wait(waiter, s.put_nowait(b"k%d" % i, b"v" * 100))
            assert first.heard == second.heard == []  # nothing is answered before the write
            for _ in range(10):
                await asyncio.sleep(0)
        finally:
            await commit.stop()

    with Store.open(tmp_path, durability=durability, interval_ms=600_000) as s:
        s.write_behind = True
        log_dir = tmp_path / "log"
        first, second = Waiter(log_dir), Waiter(log_dir)
        fsyncs = s.stats().fsyncs
        mp = pytest.MonkeyPatch()
        mp.setattr(os, "pwrite", pwrite)
        try:
            asyncio.run(asyncio.wait_for(run(s, first, second), 30))
        finally:
            mp.undo()
        last = s.stats().last_seq
        assert s.stats().fsyncs == fsyncs  # no reply waited for the disk
    assert len(writes) == 1  # ten records, one write(2)
    whole = sum(p.stat().st_size for p in log_dir.iterdir())
    assert first.heard == second.heard == [(last, None, whole)]


def test_a_failed_write_fails_the_writes_that_wait_for_it(tmp_path: Path) -> None:
    def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def run(s: Store, waiter: Waiter) -> None:
        commit = GroupCommit(s, asyncio.get_running_loop(), fsync=False)
        commit.start()
        try:
            commit.wait(waiter, s.put_nowait(b"a", b"1"))
            mp = pytest.MonkeyPatch()
            mp.setattr(os, "pwrite", pwrite)
            try:
                for _ in range(10):
                    await asyncio.sleep(0)
            finally:
                mp.undo()
        finally:
            await commit.stop()

    with Store.open(tmp_path, durability="interval", interval_ms=600_000) as s:
        s.write_behind = True
        waiter = Waiter(tmp_path / "log")
        asyncio.run(asyncio.wait_for(run(s, waiter), 30))
        assert [(covered, error) for covered, error, _ in waiter.heard] == [
            (1, "StoreStorageError")
        ]
        assert s.get(b"a") is None  # rolled back: what failed is not there either
