"""Tests of online compaction: reads and writes during it, races, crashes and reclaimed space."""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from postoffice.store.engine import Delete, Put, Store, StoreClosedError

WAIT_S = 10.0  # how long a test waits for another thread before it calls that a hang


def _fill(s: Store, n: int, size: int = 100) -> dict[bytes, bytes]:
    """Put n keys, in batches (cheap under `always`), twice: half the log is dead."""
    model: dict[bytes, bytes] = {}
    for rnd in range(2):
        for lo in range(0, n, 500):
            ops = [
                Put(key=b"k%05d" % i, value=b"%d-%05d" % (rnd, i) * (size // 8))
                for i in range(lo, min(n, lo + 500))
            ]
            s.batch(ops)
            model.update((op.key, op.value) for op in ops)
    return model


def _assert_matches(s: Store, model: dict[bytes, bytes], keys: Sequence[bytes]) -> None:
    assert [k for k in keys if s.get(k) != model.get(k)] == []
    assert s.scan(limit=len(keys) + 1) == sorted(model.items())
    assert len(s) == len(model)


def _assert_survives_reopen(path: Path, model: dict[bytes, bytes], keys: Sequence[bytes]) -> None:
    """The state is the same after a reopen, and after a rebuild from the log alone."""
    with Store.open(path) as s:
        _assert_matches(s, model, keys)
    shutil.rmtree(path / "index")
    with Store.open(path) as s:
        assert s.recovery.index_rebuilt
        _assert_matches(s, model, keys)


def _log_disk_bytes(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in (path / "log").iterdir())


def _run_in_thread(fn: Callable[[], None]) -> None:
    """Run fn on another thread and wait for it; fail (not hang) if it cannot finish."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported to the calling thread below
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT_S)
    assert not t.is_alive(), "the store stayed locked during compaction"
    if errors:
        raise errors[0]


def test_reads_and_writes_complete_mid_compaction(tmp_path: Path) -> None:
    """Another thread's calls finish while the compaction is between two of its steps."""
    s = Store.open(tmp_path, segment_bytes=64 * 1024, flush_entries=100)
    model = _fill(s, 2000)
    steps: list[int] = []

    def other_thread() -> None:
        assert s.stats().compactions == 0  # the compaction is still running
        assert s.get(b"k00000") == model[b"k00000"]
        assert s.get(b"k01999") == model[b"k01999"]  # not copied yet
        assert s.scan(start=b"k01000", limit=2) == [
            (b"k01000", model[b"k01000"]),
            (b"k01001", model[b"k01001"]),
        ]
        s.put(b"k01500", b"mid")
        assert s.delete(b"k01501")
        s.batch([Put(key=b"new", value=b"n"), Delete(key=b"k00001")])
        model.update({b"k01500": b"mid", b"new": b"n"})
        del model[b"k01501"], model[b"k00001"]

    def on_step(keys: Sequence[bytes]) -> None:
        steps.append(len(keys))
        assert " COMPACTING " in repr(s)
        if len(steps) == 2:
            _run_in_thread(other_thread)

    s.compact(on_step=on_step)
    assert len(steps) >= 4
    keys = [*(b"k%05d" % i for i in range(2000)), b"new"]
    _assert_matches(s, model, keys)
    assert s.stats().compactions == 1
    s.close()
    _assert_survives_reopen(tmp_path, model, keys)


def test_key_changed_while_copied_keeps_its_new_state(tmp_path: Path) -> None:
    """A key overwritten or deleted after compaction read it is not reverted by the copy."""
    with Store.open(tmp_path, segment_bytes=4096, flush_entries=10) as s:
        model = _fill(s, 300)
        seen: list[bytes] = []

        def on_step(keys: Sequence[bytes]) -> None:
            if not seen:
                seen.extend(keys[:4])
                s.put(keys[0], b"newer")
                s.delete(keys[1])
                s.batch([Delete(key=keys[2]), Put(key=keys[3], value=b"batched")])
                s.put(keys[2], b"back")  # deleted, then written again: still the newest

        s.compact(on_step=on_step)
        model.update({seen[0]: b"newer", seen[2]: b"back", seen[3]: b"batched"})
        del model[seen[1]]
        keys = [b"k%05d" % i for i in range(300)]
        _assert_matches(s, model, keys)
    _assert_survives_reopen(tmp_path, model, keys)


class _Load:
    """Writers, each owning a slice of the keys, and readers that check every value they see.

    A reader notes the last finished op on a key before its get, so a stale value (older than
    that op) or a deleted key coming back is caught as it happens, not only at the end.
    """

    def __init__(self, s: Store, seed: int, writers: int = 3, keys: int = 90) -> None:
        self.s = s
        self.seed = seed
        self.writers = writers
        self.keys = [b"key%03d" % i for i in range(keys)]
        self.models: list[dict[bytes, bytes]] = [{} for _ in range(writers)]
        self.done: dict[bytes, tuple[int, bool]] = {}  # key -> (op number, was a delete)
        self.deleting: dict[bytes, int] = {}  # key -> number of the newest delete started
        self.ops = 0
        self.progress = threading.Condition()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def value(self, key: bytes, n: int) -> bytes:
        return key + b"|%08d|" % n + b"x" * (n % 200)

    def writer(self, w: int) -> None:
        rng = random.Random(self.seed * 100 + w)
        mine = self.keys[w :: self.writers]
        model = self.models[w]
        n = w
        while not self.stop.is_set():
            n += self.writers  # op numbers grow, and no two writers share one
            pick = rng.sample(mine, 2)
            roll = rng.random()
            if roll < 0.6:
                self.s.put(pick[0], self.value(pick[0], n))
                model[pick[0]] = self.value(pick[0], n)
                self.done[pick[0]] = (n, False)
            elif roll < 0.8:
                self.deleting[pick[0]] = n
                self.s.delete(pick[0])
                model.pop(pick[0], None)
                self.done[pick[0]] = (n, True)
            else:
                self.deleting[pick[1]] = n
                self.s.batch([Put(key=pick[0], value=self.value(pick[0], n)), Delete(key=pick[1])])
                model[pick[0]] = self.value(pick[0], n)
                model.pop(pick[1], None)
                self.done[pick[0]], self.done[pick[1]] = (n, False), (n, True)
            with self.progress:
                self.ops += 1
                self.progress.notify_all()

    def reader(self, r: int) -> None:
        rng = random.Random(self.seed * 100 + 50 + r)
        while not self.stop.is_set():
            key = rng.choice(self.keys)
            floor = self.done.get(key)
            self.check(key, floor, self.s.get(key))
            for k, v in self.s.scan(start=key, limit=3):
                assert v.startswith(k + b"|"), (k, v)

    def check(self, key: bytes, floor: tuple[int, bool] | None, got: bytes | None) -> None:
        if got is None:
            assert floor is None or floor[1] or self.deleting.get(key, -1) > floor[0], (key, floor)
            return
        n = int(got.split(b"|")[1])
        assert got == self.value(key, n), (key, got)
        assert floor is None or n > floor[0] or (n == floor[0] and not floor[1]), (key, n, floor)

    def guarded(self, fn: Callable[[int], None], i: int) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(i)
            except BaseException as exc:  # reported to the main thread
                self.errors.append(exc)
                self.stop.set()

        return run

    def wait_for_ops(self, more: int) -> None:
        """Block the compaction until the writers have done `more` ops: they interleave."""
        with self.progress:
            target = self.ops + more
            assert self.progress.wait_for(lambda: self.ops >= target or self.stop.is_set(), WAIT_S)

    def model(self) -> dict[bytes, bytes]:
        return {k: v for m in self.models for k, v in m.items()}


@pytest.mark.parametrize("seed", [1, 2])
def test_compaction_under_concurrent_load_matches_model(tmp_path: Path, seed: int) -> None:
    s = Store.open(tmp_path, durability="never", segment_bytes=4096, flush_entries=32)
    load = _Load(s, seed)
    threads = [threading.Thread(target=load.guarded(load.writer, w)) for w in range(3)]
    threads += [threading.Thread(target=load.guarded(load.reader, r)) for r in range(2)]
    for t in threads:
        t.start()
    try:
        load.wait_for_ops(100)
        for _ in range(6):
            s.compact(on_step=lambda _keys: load.wait_for_ops(30))
            load.wait_for_ops(10)
    finally:
        load.stop.set()
        for t in threads:
            t.join()
    if load.errors:
        raise load.errors[0]
    model = load.model()
    _assert_matches(s, model, load.keys)
    assert s.stats().compactions == 6
    s.close()
    _assert_survives_reopen(tmp_path, model, load.keys)


def test_compaction_reclaims_disk_space(tmp_path: Path) -> None:
    with Store.open(tmp_path, segment_bytes=32 * 1024, flush_entries=200) as s:
        model: dict[bytes, bytes] = {}
        for rnd in range(6):
            ops = [Put(key=b"k%04d" % i, value=b"%d" % rnd * 200) for i in range(500)]
            s.batch(ops)
            model.update((op.key, op.value) for op in ops)
        s.batch([Delete(key=b"k%04d" % i) for i in range(0, 500, 2)])
        for i in range(0, 500, 2):
            del model[b"k%04d" % i]
        old = set((tmp_path / "log").iterdir())
        before = _log_disk_bytes(tmp_path)
        assert s.compact() > 0
        after = _log_disk_bytes(tmp_path)
        assert after < before / 6
        assert not old & set((tmp_path / "log").iterdir())  # every old segment is gone
        keys = [b"k%04d" % i for i in range(500)]
        _assert_matches(s, model, keys)
    _assert_survives_reopen(tmp_path, model, keys)


def test_second_compaction_waits_for_the_first(tmp_path: Path) -> None:
    s = Store.open(tmp_path, segment_bytes=64 * 1024)
    model = _fill(s, 1500)
    order: list[str] = []
    errors: list[BaseException] = []

    def second() -> None:
        try:
            s.compact(on_step=lambda _keys: order.append("second"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    other = threading.Thread(target=second)

    def first_step(_keys: Sequence[bytes]) -> None:
        if not order:
            other.start()  # it asks to compact while this compaction is running
        order.append("first")

    s.compact(on_step=first_step)
    other.join(WAIT_S)
    assert not other.is_alive()
    assert errors == []
    assert order == sorted(order)  # all of the first's steps, then the second's
    assert order.count("first") >= 4
    assert order.count("second") >= 4
    assert s.stats().compactions == 2
    keys = [b"k%05d" % i for i in range(1500)]
    _assert_matches(s, model, keys)
    s.close()


def test_close_during_compaction_stops_it_and_keeps_data(tmp_path: Path) -> None:
    s = Store.open(tmp_path, segment_bytes=64 * 1024)
    model = _fill(s, 1500)
    closer = threading.Thread(target=s.close)

    def on_step(_keys: Sequence[bytes]) -> None:
        if closer.ident is not None:
            return
        closer.start()  # close() stops this compaction at its next step, then waits for it
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:  # until close() has begun: the store refuses calls
            try:
                s.stats()
            except StoreClosedError:
                return
        pytest.fail("close() did not begin")

    with pytest.raises(StoreClosedError, match=r"is closed$"):
        s.compact(on_step=on_step)
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert repr(s).endswith("CLOSED keys=1500 always>")
    _assert_survives_reopen(tmp_path, model, [b"k%05d" % i for i in range(1500)])


def test_compaction_shrinks_the_index_file_it_emptied(tmp_path: Path) -> None:
    """LMDB never gives freed pages back: after most keys go, compaction copies its file
    without them, and the store reads (and reopens) the same keys."""
    data = tmp_path / "index" / "data.mdb"
    with Store.open(tmp_path, durability="never") as s:
        for i in range(0, 60_000, 1000):
            s.batch([Put(key=b"key-%06d" % j, value=b"v%d" % j) for j in range(i, i + 1000)])
        for i in range(0, 60_000, 1000):
            s.batch([Delete(key=b"key-%06d" % j) for j in range(i, i + 1000) if j % 100])
        before = data.stat().st_size
        s.compact()
        after = data.stat().st_size
        assert after * 4 < before, (before, after)
        kept = {b"key-%06d" % j: b"v%d" % j for j in range(0, 60_000, 100)}
        assert dict(s.scan(limit=1000)) == kept
        s.put(b"key-new", b"n")
    with Store.open(tmp_path, durability="never") as s:
        assert not s.recovery.index_rebuilt
        assert len(s.scan(limit=1000)) == 601
        assert s.get(b"key-059900") == b"v59900"
        assert s.get(b"key-new") == b"n"
    assert not (tmp_path / "index.compact").exists()


def test_compaction_leaves_an_index_file_without_much_free_space_alone(tmp_path: Path) -> None:
    data = tmp_path / "index" / "data.mdb"
    with Store.open(tmp_path, durability="never") as s:
        for i in range(0, 30_000, 1000):
            s.batch([Put(key=b"key-%06d" % j, value=b"v%d" % j) for j in range(i, i + 1000)])
        s.compact()  # the first compaction flushes: LMDB's file then holds every key
        assert data.stat().st_size > 256 * 4096
        inode = data.stat().st_ino
        s.compact()
        assert data.stat().st_ino == inode
