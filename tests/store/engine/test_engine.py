"""Tests of the Store engine: API behaviour, limits, recovery, locking, threads and crashes."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from postoffice.core.errors import ConfigError, LimitExceeded
from postoffice.store.engine import (
    Delete,
    KeySizeError,
    LogCorruptError,
    Put,
    Store,
    StoreClosedError,
    ValueSizeError,
)
from postoffice.store.engine import index as index_module
from postoffice.store.engine.records import HEADER_BYTES


def _open(path: Path, **kw: object) -> Store:
    return Store.open(path, **kw)  # type: ignore[arg-type]


def test_put_get_round_trip(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"k", b"v")
        s.put(b"empty", b"")
        assert s.get(b"k") == b"v"
        assert s.get(b"empty") == b""
        assert s.get(b"missing") is None


def test_overwrite_keeps_last_value(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"k", b"1")
        s.put(b"k", b"2")
        assert s.get(b"k") == b"2"
        assert s.stats().keys == 1


def test_delete_writes_tombstone(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"k", b"v")
        assert s.delete(b"k") is True
        assert s.delete(b"k") is False
        assert s.get(b"k") is None
    with Store.open(tmp_path) as s:
        assert s.get(b"k") is None
        assert s.stats().keys == 0


def test_scan_order_prefix_range_and_limit(tmp_path: Path) -> None:
    with Store.open(tmp_path, flush_entries=3) as s:
        for key in [b"b2", b"a1", b"c3", b"b1", b"a2", b"b3"]:
            s.put(key, key.upper())
        s.delete(b"b2")
        assert [k for k, _ in s.scan()] == [b"a1", b"a2", b"b1", b"b3", b"c3"]
        assert s.scan(prefix=b"b") == [(b"b1", b"B1"), (b"b3", b"B3")]
        assert [k for k, _ in s.scan(start=b"a2", end=b"c3")] == [b"a2", b"b1", b"b3"]
        assert [k for k, _ in s.scan(limit=2)] == [b"a1", b"a2"]
        assert s.scan(limit=0) == []


def test_scan_orders_long_keys(tmp_path: Path) -> None:
    """Keys past LMDB's 511-byte limit share buckets yet still scan in order."""
    base = b"x" * 600
    keys = [base + b"b", base + b"a", base[:448], base + b"c" * 300, b"y"]
    with Store.open(tmp_path, flush_entries=1) as s:
        for key in keys:
            s.put(key, key[-3:])
        assert [k for k, _ in s.scan()] == sorted(keys)
        assert s.get(base + b"a") == (base + b"a")[-3:]
        s.delete(base + b"a")
        assert [k for k, _ in s.scan(prefix=base)] == sorted(keys[:2] + keys[3:4])[1:]


def test_one_flush_of_short_shared_and_deleted_keys_reads_back_from_lmdb(tmp_path: Path) -> None:
    """Short keys (their own bucket), a 448-byte key and longer ones sharing its bucket,
    and tombstones of both kinds, all in one index flush, then read from LMDB alone."""
    bucket = b"b" * 448
    shared = [bucket, bucket + b"1", bucket + b"2" * 200, bucket + b"3"]
    short = [b"s%03d" % i for i in range(50)]
    with Store.open(tmp_path) as s:  # the default flush size: one flush, at close
        for key in short + shared:
            s.put(key, b"first " + key[-4:])
    with Store.open(tmp_path) as s:
        assert s.recovery.replayed_records == 0  # what follows is LMDB's
        for key in short[::2] + shared[1:2]:
            s.put(key, b"second " + key[-4:])
        for key in short[1::10] + shared[2:3] + [b"never-there"]:
            s.delete(key)
    with Store.open(tmp_path) as s:
        assert s.recovery.replayed_records == 0
        assert not s.recovery.index_rebuilt
        gone = set(short[1::10] + shared[2:3])
        second = set(short[::2] + shared[1:2])
        expect = {
            key: (b"second " if key in second else b"first ") + key[-4:]
            for key in short + shared
            if key not in gone
        }
        assert {key: s.get(key) for key in short + shared} == {
            key: expect.get(key) for key in short + shared
        }
        assert s.scan(limit=1000) == sorted(expect.items())
        assert s.scan_keys(prefix=bucket) == sorted(k for k in expect if k.startswith(bucket))
        assert len(s) == len(expect) == s.stats().keys


def test_batch_applies_all(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"gone", b"x")
        s.batch([Put(key=b"a", value=b"1"), Put(key=b"b", value=b"2"), Delete(key=b"gone")])
        assert s.scan() == [(b"a", b"1"), (b"b", b"2")]


def test_batch_with_bad_op_writes_nothing(tmp_path: Path) -> None:
    with Store.open(tmp_path, max_value_bytes=10) as s:
        with pytest.raises(ValueSizeError, match=r"^value of 11 bytes exceeds limit 10$"):
            s.batch([Put(key=b"a", value=b"1"), Put(key=b"b", value=b"x" * 11)])
        assert s.scan() == []


def test_torn_batch_is_dropped_whole(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"before", b"1")
        s.batch([Put(key=b"a", value=b"1" * 100), Put(key=b"b", value=b"2" * 100)])
    seg = tmp_path / "log" / "00000001.seg"
    seg.write_bytes(seg.read_bytes()[: -(HEADER_BYTES + 4 + 10)])  # cut the end record and more
    with Store.open(tmp_path) as s:
        assert s.scan() == [(b"before", b"1")]
        assert s.recovery.dropped_batches == 1
        assert s.recovery.truncated is not None


def test_value_limit_message(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        with pytest.raises(
            ValueSizeError, match=r"^value of 17000000 bytes exceeds limit 16777216$"
        ):
            s.put(b"k", b"x" * 17_000_000)
        assert isinstance(ValueSizeError("x"), LimitExceeded)


def test_key_limit_messages(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        with pytest.raises(KeySizeError, match=r"^key of 1025 bytes exceeds limit 1024$"):
            s.put(b"k" * 1025, b"v")
        with pytest.raises(KeySizeError, match=r"^key of 0 bytes is empty$"):
            s.get(b"")
        s.put(b"k" * 1024, b"v")
        assert s.get(b"k" * 1024) == b"v"


def test_bad_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^durability must be always, interval or never, not 'x'$"
    ):
        _open(tmp_path, durability="x")
    with pytest.raises(ConfigError, match=r"^segment_bytes must be at least 1, not 0$"):
        _open(tmp_path, segment_bytes=0)


def test_cached_values_follow_every_write(tmp_path: Path) -> None:
    """A get keeps the value in memory; every later write of the key is seen."""
    with _open(tmp_path) as s:
        s.put(b"k", b"1")
        assert s.get(b"k") == b"1"  # read from the log, then cached
        assert s.get(b"k") == b"1"  # from the cache
        s.put(b"k", b"2")
        assert s.get(b"k") == b"2"
        assert s.put_nowait(b"k", b"3") > 0
        assert s.get(b"k") == b"3"
        s.batch([Put(key=b"k", value=b"4"), Put(key=b"j", value=b"x")])
        assert s.get(b"k") == b"4"
        assert s.delete(b"k") is True
        assert s.get(b"k") is None
        s.batch([Put(key=b"k", value=b"5")])
        assert s.get(b"k") == b"5"
        s.batch([Delete(key=b"k")])
        assert s.get(b"k") is None
        assert s.get(b"j") == b"x"
        s.put(b"j", b"y")
        assert s.compact() >= 0  # copies keep their values
        assert s.get(b"j") == b"y"


def test_the_value_cache_is_bounded(tmp_path: Path) -> None:
    with _open(tmp_path, value_cache_bytes=50) as s:
        for i in range(20):
            s.put(b"k%02d" % i, b"v" * 20)
        assert [s.get(b"k%02d" % i) for i in range(20)] == [b"v" * 20] * 20
        assert s._values_bytes <= 50
        s.put(b"big", b"b" * 5000)  # over the per-value bound: never kept
        assert s.get(b"big") == b"b" * 5000
        assert b"big" not in s._values
    with _open(tmp_path, value_cache_bytes=0) as s:
        assert s.get(b"k00") == b"v" * 20
        assert not s._values
    with pytest.raises(ConfigError, match=r"^value_cache_bytes must be at least 0, not -1$"):
        _open(tmp_path, value_cache_bytes=-1)


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    s.close()
    s.close()
    with pytest.raises(StoreClosedError, match=r"is closed$"):
        s.get(b"k")


def test_reopen_keeps_data_across_segments(tmp_path: Path) -> None:
    with Store.open(tmp_path, segment_bytes=200, flush_entries=7) as s:
        for i in range(100):
            s.put(b"k%03d" % i, b"v%d" % i)
        assert s.stats().segments > 10
    with Store.open(tmp_path, segment_bytes=200) as s:
        assert s.get(b"k042") == b"v42"
        assert len(s.scan(limit=1000)) == 100
        assert not s.recovery.index_rebuilt


def test_torn_tail_is_cut_and_reported(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"a", b"1" * 50)
        s.put(b"b", b"2" * 50)
    shutil.rmtree(tmp_path / "index")  # force a replay over the tail
    seg = tmp_path / "log" / "00000001.seg"
    size = seg.stat().st_size
    os.truncate(seg, size - 20)
    with Store.open(tmp_path) as s:
        assert s.get(b"a") == b"1" * 50
        assert s.get(b"b") is None
        rec = s.recovery
        assert rec.truncated is not None
        assert rec.truncated.offset == HEADER_BYTES + 51
        assert s.stats().recovery == rec
        s.put(b"c", b"3")
    with Store.open(tmp_path) as s:
        assert [k for k, _ in s.scan()] == [b"a", b"c"]
        assert s.recovery.truncated is None


def test_torn_tail_after_indexed_position_is_cut(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"a", b"1")
    seg = tmp_path / "log" / "00000001.seg"
    with open(seg, "ab") as f:
        f.write(b"\x4f\x50garbage")
    with Store.open(tmp_path) as s:
        assert s.recovery.truncated is not None
        assert s.recovery.truncated.length == 9
        assert s.get(b"a") == b"1"


def test_flipped_bit_is_reported_never_returned(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        for key in (b"a", b"b", b"c"):
            s.put(key, key * 20)
    seg = tmp_path / "log" / "00000001.seg"
    data = bytearray(seg.read_bytes())
    data[(HEADER_BYTES + 21) + HEADER_BYTES + 10] ^= 0x04  # in b's value
    seg.write_bytes(bytes(data))
    with Store.open(tmp_path) as s:  # index still points at b: the read checks the CRC
        with pytest.raises(LogCorruptError, match=r"^record at segment 1 offset 45 length 45"):
            s.get(b"b")
        assert s.get(b"a") == b"a" * 20
    shutil.rmtree(tmp_path / "index")
    with Store.open(tmp_path) as s:  # a rebuild reports it and skips it
        assert [d.offset for d in s.recovery.corrupt] == [HEADER_BYTES + 21]
        assert s.recovery.index_rebuilt
        assert s.get(b"b") is None
        assert s.scan() == [(b"a", b"a" * 20), (b"c", b"c" * 20)]


def test_lost_index_is_rebuilt(tmp_path: Path) -> None:
    with Store.open(tmp_path, segment_bytes=300) as s:
        for i in range(50):
            s.put(b"k%02d" % i, b"v%d" % i)
        s.delete(b"k07")
    shutil.rmtree(tmp_path / "index")
    with Store.open(tmp_path) as s:
        assert s.recovery.index_rebuilt
        assert s.recovery.reason == "index missing"
        assert s.get(b"k07") is None
        assert s.get(b"k08") == b"v8"
        assert s.stats().keys == 49


def test_damaged_index_is_rebuilt(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put(b"k", b"v")
    (tmp_path / "index" / "data.mdb").write_bytes(b"\x00garbage" * 1000)
    with Store.open(tmp_path) as s:
        assert s.recovery.index_rebuilt
        assert s.recovery.reason is not None
        assert s.recovery.reason.startswith("index damaged")
        assert s.get(b"k") == b"v"


def test_concurrent_puts_under_always(tmp_path: Path) -> None:
    s = Store.open(tmp_path, durability="always", flush_entries=100)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(100):
                s.put(b"t%d-%03d" % (n, i), b"%d" % i)
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    fsyncs = s.stats().fsyncs
    s.close()
    assert fsyncs <= 800
    with Store.open(tmp_path) as again:
        assert again.stats().keys == 800
        assert all(
            again.get(b"t%d-%03d" % (n, i)) == b"%d" % i for n in range(8) for i in range(100)
        )


@pytest.mark.parametrize("durability", ["interval", "never"])
def test_other_durabilities_round_trip(tmp_path: Path, durability: str) -> None:
    with _open(tmp_path, durability=durability, interval_ms=5) as s:
        s.put(b"k", b"v")
    with Store.open(tmp_path) as s:
        assert s.get(b"k") == b"v"


def test_compact_reclaims_space_and_keeps_values(tmp_path: Path) -> None:
    with Store.open(tmp_path, segment_bytes=1000, flush_entries=10) as s:
        for rnd in range(5):
            for i in range(40):
                s.put(b"k%02d" % i, b"%d-%d" % (rnd, i))
        for i in range(0, 40, 4):
            s.delete(b"k%02d" % i)
        before = s.stats().log_bytes
        freed = s.compact()
        after = s.stats()
        assert freed > 0
        assert after.log_bytes < before / 3
        assert after.compactions == 1
        expected = [(b"k%02d" % i, b"4-%d" % i) for i in range(40) if i % 4]
        assert s.scan(limit=100) == expected
        s.put(b"new", b"n")
    with Store.open(tmp_path, segment_bytes=1000) as s:
        assert s.scan(limit=100) == [*expected, (b"new", b"n")]
    shutil.rmtree(tmp_path / "index")
    with Store.open(tmp_path, segment_bytes=1000) as s:
        assert s.recovery.index_rebuilt
        assert s.scan(limit=100) == [*expected, (b"new", b"n")]


def test_compact_under_concurrent_writes(tmp_path: Path) -> None:
    s = Store.open(tmp_path, segment_bytes=2000, flush_entries=50)
    for i in range(200):
        s.put(b"base%03d" % i, b"old")
    stop = threading.Event()
    written: list[bytes] = []

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 2000:
            key = b"w%05d" % i
            s.put(key, key)
            s.put(b"base%03d" % (i % 200), b"new")
            written.append(key)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    for _ in range(3):
        s.compact()
    stop.set()
    t.join()
    s.close()
    with Store.open(tmp_path, segment_bytes=2000) as again:
        assert all(again.get(k) == k for k in written)
        assert again.stats().keys == 200 + len(written)


class StoreMachine(RuleBasedStateMachine):
    """The store against a dict, with reopen; small segments and flushes stress recovery."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="store-sm-"))
        self.model: dict[bytes, bytes] = {}
        self.store = self._open()

    def _open(self) -> Store:
        # A value cache of 100 bytes: gets fill it and empty it all the time.
        return Store.open(
            self.dir, durability="never", segment_bytes=256, flush_entries=4, value_cache_bytes=100
        )

    keys = st.text(alphabet="abc", min_size=1, max_size=3).map(str.encode) | st.binary(
        min_size=1, max_size=2
    )

    @rule(key=keys, value=st.binary(max_size=40))
    def put(self, key: bytes, value: bytes) -> None:
        self.store.put(key, value)
        self.model[key] = value

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        assert self.store.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert self.store.get(key) == self.model.get(key)

    @rule(ops=st.lists(st.tuples(keys, st.none() | st.binary(max_size=10)), max_size=5))
    def batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        self.store.batch([Delete(key=k) if v is None else Put(key=k, value=v) for k, v in ops])
        for k, v in ops:
            if v is None:
                self.model.pop(k, None)
            else:
                self.model[k] = v

    @rule(prefix=st.none() | keys, start=st.none() | keys, limit=st.integers(0, 10))
    def scan(self, prefix: bytes | None, start: bytes | None, limit: int) -> None:
        want = sorted(
            (k, v)
            for k, v in self.model.items()
            if (prefix is None or k.startswith(prefix)) and (start is None or k >= start)
        )[:limit]
        assert self.store.scan(prefix=prefix, start=start, limit=limit) == want

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self._open()

    @rule()
    def compact(self) -> None:
        self.store.compact()

    @rule()
    def lose_index(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir / "index")
        self.store = self._open()
        assert self.store.recovery.index_rebuilt == (self.store.stats().log_bytes > 0)

    @invariant()
    def counts_match(self) -> None:
        assert self.store.stats().keys == len(self.model)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestStoreMachine = StoreMachine.TestCase


class BackgroundFlushMachine(StoreMachine):
    """The same model, with index flushes on a background thread racing every rule."""

    def _open(self) -> Store:
        store = super()._open()
        store.flush_in_background = True
        return store


TestBackgroundFlushMachine = BackgroundFlushMachine.TestCase


class WriteBehindMachine(BackgroundFlushMachine):
    """The same model through the server's calls: *_nowait writes left in memory
    (write-behind) until a `write_pending` or `sync` rule, read back before and after."""

    def _open(self) -> Store:
        store = super()._open()
        store.write_behind = True
        return store

    @rule(key=StoreMachine.keys, value=st.binary(max_size=40))
    def put(self, key: bytes, value: bytes) -> None:
        self.store.put_nowait(key, value)
        self.model[key] = value

    @rule(key=StoreMachine.keys)
    def delete(self, key: bytes) -> None:
        existed, _ = self.store.delete_nowait(key)
        assert existed == (key in self.model)
        self.model.pop(key, None)

    @rule(
        ops=st.lists(st.tuples(StoreMachine.keys, st.none() | st.binary(max_size=10)), max_size=5)
    )
    def batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        self.store.batch_nowait(
            [Delete(key=k) if v is None else Put(key=k, value=v) for k, v in ops]
        )
        for k, v in ops:
            if v is None:
                self.model.pop(k, None)
            else:
                self.model[k] = v

    @rule()
    def write_pending(self) -> None:
        self.store.write_pending()

    @rule()
    def sync(self) -> None:
        self.store.sync(self.store.stats().last_seq)


TestWriteBehindMachine = WriteBehindMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBackgroundFlushMachine.settings = TestStoreMachine.settings
TestWriteBehindMachine.settings = TestStoreMachine.settings


def test_background_flushes_race_readers_and_writers(tmp_path: Path) -> None:
    """Threads write and read while full memory layers move to LMDB on another thread."""
    s = Store.open(tmp_path, durability="never", flush_entries=16)
    s.flush_in_background = True
    models: list[dict[bytes, bytes]] = [{}, {}]
    errors: list[str] = []

    def writer(tid: int) -> None:  # each thread owns its keys, so its model is exact
        model = models[tid]
        for i in range(1500):
            key = b"t%d-k%03d" % (tid, (i * 7) % 150)
            if i % 5 == 4:
                s.delete(key)
                model.pop(key, None)
            else:
                model[key] = b"%d" % i
                s.put(key, model[key])
            other = b"t%d-k%03d" % (tid, (i * 11) % 150)
            if s.get(key) != model.get(key) or s.get(other) != model.get(other):
                errors.append(f"thread {tid} step {i} read a stale value")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = {**models[0], **models[1]}
    assert dict(s.scan(limit=10_000)) == final
    assert s.stats().keys == len(final)
    s.close()
    with Store.open(tmp_path) as again:  # everything reached LMDB or the replayed log
        assert dict(again.scan(limit=10_000)) == final
    shutil.rmtree(tmp_path / "index")
    with Store.open(tmp_path) as rebuilt:
        assert dict(rebuilt.scan(limit=10_000)) == final


def test_rewriting_a_few_keys_under_never_keeps_the_undo_notes_bounded(tmp_path: Path) -> None:
    """Under `never` nothing fsyncs while the same keys are rewritten (no index flush
    either): past a few thousand undo notes a background fsync lets them go, so memory
    levels off instead of growing with every write."""

    with Store.open(tmp_path / "s", durability="never") as s:
        for i in range(20_000):
            s.put(b"k%d" % (i % 5), b"v" * 100)
            if i % 1000 == 999:
                for thread in threading.enumerate():
                    if thread.name == "store-undo-sync":
                        thread.join(10)
        for thread in threading.enumerate():
            if thread.name == "store-undo-sync":
                thread.join(10)
        assert len(s._undo) < 8192
        assert s.get(b"k4") == b"v" * 100


def test_a_background_flush_pauses_between_steps_of_its_packing(tmp_path: Path) -> None:
    """A flush lets go of the GIL every FLUSH_STEP_ENTRIES entries, so an event loop in the
    same process never waits for the packing of a whole layer; every entry still lands."""
    step = index_module.FLUSH_STEP_ENTRIES
    entries = step * 4 + 100
    s = Store.open(tmp_path, durability="never", flush_entries=entries)
    s.flush_in_background = True
    frozen_sizes: list[int] = []
    s.flush_pause = lambda: frozen_sizes.append(len(s._index.frozen or {}))
    for i in range(entries - 100):
        s.put(b"k%06d" % i, b"v%d" % i)
    for i in range(0, 200, 2):
        s.delete(b"k%06d" % i)  # tombstones in the same layer
    for i in range(entries - 100, entries):  # the last one fills the layer: a flush
        s.put(b"k%06d" % i, b"v%d" % i)
    flushers = [t for t in threading.enumerate() if t.name == "store-flush"]
    assert len(flushers) == 1
    flushers[0].join(timeout=60)
    assert not flushers[0].is_alive()
    assert frozen_sizes == [entries] * (entries // step)
    assert s._index.frozen is None
    s.close()
    with Store.open(tmp_path) as again:
        assert not again.recovery.index_rebuilt
        assert again.recovery.replayed_records == 0  # close flushed nothing more
        assert len(again) == entries - 100
        assert again.get(b"k%06d" % 0) is None
        assert again.get(b"k%06d" % 1) == b"v1"
        assert again.get(b"k%06d" % (entries - 1)) == b"v%d" % (entries - 1)
