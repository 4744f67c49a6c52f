"""Tests of the segment log: framing, reads, rolls, group commit and the recovery scan."""

from __future__ import annotations

import mmap
import threading
from pathlib import Path

import pytest

from postoffice.store.engine.logstore import Durability, LogStore, Position
from postoffice.store.engine.records import (
    FLAG_BATCH,
    HEADER_BYTES,
    Kind,
    Record,
    ScanReport,
    count_value,
    encode_record,
)
from postoffice.store.errors import LogCorruptError


def _open(path: Path, segment_bytes: int = 1 << 20) -> LogStore:
    return LogStore(path, segment_bytes=segment_bytes, durability=Durability.ALWAYS, interval_ms=10)


def _replay(path: Path, segment_bytes: int = 1 << 20) -> tuple[list[Record], LogStore, ScanReport]:
    store = _open(path, segment_bytes)
    seen: list[Record] = []
    report = store.scan(Position(1, 0), seen.append)
    return seen, store, report


def test_encode_record_layout() -> None:
    rec = encode_record(Kind.PUT, 7, b"k", b"vv")
    assert len(rec) == HEADER_BYTES + 3
    assert rec[:2] == b"PO"[::-1]
    assert rec.endswith(b"kvv")


def test_append_read_round_trip(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    locs, ticket = store.append([(Kind.PUT, b"a", b"1", 0), (Kind.PUT, b"b", b"22", 0)])
    store.sync(ticket)
    assert ticket == 2
    rec = store.read(*locs[1], b"b")
    assert (rec.key, rec.value, rec.seq) == (b"b", b"22", 2)
    store.close()


def test_segments_roll_at_size(tmp_path: Path) -> None:
    store = _open(tmp_path, segment_bytes=100)
    store.start(0)
    for i in range(10):
        store.append([(Kind.PUT, b"k%d" % i, b"x" * 40, 0)])
    assert len(store.segments()) == 10
    store.close()
    seen, again, _ = _replay(tmp_path, 100)
    assert [r.key for r in seen] == [b"k%d" % i for i in range(10)]
    again.close()


def test_read_of_flipped_bit_raises(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    locs, _ = store.append([(Kind.PUT, b"key", b"value", 0)])
    store.close()
    seg = tmp_path / "00000001.seg"
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0x10
    seg.write_bytes(bytes(data))
    store = _open(tmp_path)
    with pytest.raises(
        LogCorruptError, match=r"^record at segment 1 offset 0 length 32 is corrupt$"
    ):
        store.read(*locs[0], b"key")
    store.close()


def test_scan_cuts_torn_tail(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    for i in range(5):
        store.append([(Kind.PUT, b"k%d" % i, b"v" * 10, 0)])
    store.close()
    seg = tmp_path / "00000001.seg"
    good = seg.stat().st_size
    seg.write_bytes(seg.read_bytes()[: good - 5])
    seen, again, report = _replay(tmp_path)
    assert [r.key for r in seen] == [b"k0", b"k1", b"k2", b"k3"]
    assert report.truncated is not None
    assert report.truncated.offset == 4 * (HEADER_BYTES + 12)
    assert seg.stat().st_size == report.truncated.offset
    again.close()


def test_scan_skips_corrupt_record_mid_log(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    for i in range(3):
        store.append([(Kind.PUT, b"k%d" % i, b"v" * 10, 0)])
    store.close()
    seg = tmp_path / "00000001.seg"
    data = bytearray(seg.read_bytes())
    data[HEADER_BYTES + 12 + HEADER_BYTES + 5] ^= 0x01  # inside k1's value
    seg.write_bytes(bytes(data))
    seen, again, report = _replay(tmp_path)
    assert [r.key for r in seen] == [b"k0", b"k2"]
    assert len(report.corrupt) == 1
    assert report.corrupt[0].offset == HEADER_BYTES + 12
    assert report.truncated is None
    again.close()


def test_scan_drops_batch_without_end(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    store.append([(Kind.PUT, b"solo", b"1", 0)])
    store.append([(Kind.PUT, b"a", b"1", FLAG_BATCH), (Kind.PUT, b"b", b"2", FLAG_BATCH)])
    store.close()
    seen, again, report = _replay(tmp_path)
    assert [r.key for r in seen] == [b"solo"]
    assert report.dropped_batches == 1
    assert report.truncated is not None
    again.close()


def test_scan_applies_committed_batch(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    store.append(
        [
            (Kind.PUT, b"a", b"1", FLAG_BATCH),
            (Kind.DELETE, b"b", b"", FLAG_BATCH),
            (Kind.BATCH_END, b"", count_value(2), 0),
        ]
    )
    store.close()
    seen, again, _ = _replay(tmp_path)
    assert [(r.kind, r.key) for r in seen] == [(Kind.PUT, b"a"), (Kind.DELETE, b"b")]
    again.close()


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)

    def writer(n: int) -> None:
        for i in range(50):
            _, ticket = store.append([(Kind.PUT, b"%d-%d" % (n, i), b"v", 0)])
            store.sync(ticket)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.last_seq == 400
    assert store.fsyncs <= 400
    store.close()
    seen, again, _ = _replay(tmp_path)
    assert len(seen) == 400
    again.close()


def test_append_one_matches_append(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    seg, off, length, seq = store.append_one(Kind.PUT, b"k", b"value")
    assert (seg, off, length, seq) == (1, 0, HEADER_BYTES + 6, 1)
    (loc,), ticket = store.append([(Kind.PUT, b"k", b"value", 0)])
    assert ticket == 2
    raw = (tmp_path / "00000001.seg").read_bytes()
    assert raw[:length] == encode_record(Kind.PUT, 1, b"k", b"value")
    assert raw[length:] == encode_record(Kind.PUT, 2, b"k", b"value")
    assert store.read_value(*loc, b"k") == b"value"
    store.close()


def test_deferred_appends_are_read_from_memory_until_written(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    seg_file = tmp_path / "00000001.seg"
    first = store.append_one(Kind.PUT, b"a", b"1" * 50, defer=True)
    (second,), ticket = store.append([(Kind.PUT, b"b", b"2" * 50, 0)], defer=True)
    assert seg_file.stat().st_size == 0  # nothing written yet
    assert store.read_value(*first, b"a") == b"1" * 50  # readers see them at once
    assert store.read_value(*second, b"b") == b"2" * 50
    assert store.tail() == Position(1, 2 * (HEADER_BYTES + 51))
    assert store.total_bytes() == 2 * (HEADER_BYTES + 51)
    store.write_pending()
    assert seg_file.stat().st_size == 2 * (HEADER_BYTES + 51)
    assert store.read_value(*first, b"a") == b"1" * 50  # now from the file
    third = store.append_one(Kind.PUT, b"c", b"3", defer=True)
    store.sync(third[3])  # sync writes what is pending before the fsync
    assert ticket == 2
    assert seg_file.stat().st_size == third[1] + third[2]
    store.close()
    seen, again, report = _replay(tmp_path)
    assert [(r.key, r.value) for r in seen] == [(b"a", b"1" * 50), (b"b", b"2" * 50), (b"c", b"3")]
    assert report.truncated is None
    again.close()


def test_deferred_appends_are_written_before_a_roll(tmp_path: Path) -> None:
    store = _open(tmp_path, segment_bytes=200)
    store.start(0)
    locs = [store.append_one(Kind.PUT, b"k%d" % i, b"x" * 60, defer=True) for i in range(6)]
    assert len(store.segments()) == 3  # two records per segment
    assert [loc[0] for loc in locs] == [1, 1, 2, 2, 3, 3]
    store.roll()  # writes the pending records of segment 3, then seals it
    assert (tmp_path / "00000003.seg").stat().st_size == 2 * (HEADER_BYTES + 62)
    assert [store.read_value(*loc, b"k%d" % i) for i, loc in enumerate(locs)] == [b"x" * 60] * 6
    store.close()
    seen, again, _ = _replay(tmp_path, 200)
    assert [r.key for r in seen] == [b"k%d" % i for i in range(6)]
    again.close()


def test_reads_of_a_growing_segment_follow_it(tmp_path: Path) -> None:
    """The current segment's map is made again as it grows; bytes past it are preads."""
    store = _open(tmp_path, segment_bytes=64 << 20)
    store.start(0)
    value = bytes(range(256)) * 16  # 4 KiB
    locs = []
    for i in range(600):  # 2.4 MiB: past the remap step twice
        locs.append(store.append_one(Kind.PUT, b"k%04d" % i, value))
        if i % 7 == 0:  # read the newest and an old one while the file grows
            assert store.read_value(*locs[-1], b"k%04d" % i) == value
            assert store.read_value(*locs[i // 2], b"k%04d" % (i // 2)) == value
    assert all(store.read_value(*loc, b"k%04d" % i) == value for i, loc in enumerate(locs))
    store.close()


def test_mapped_read_of_flipped_bit_raises(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    loc = store.append_one(Kind.PUT, b"key", b"value" * 20)
    store.close()
    seg = tmp_path / "00000001.seg"
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x04
    seg.write_bytes(bytes(data))
    store = _open(tmp_path)
    store.start(1)
    for _ in range(2):  # the first read maps the segment, the second reads the map
        with pytest.raises(LogCorruptError, match=r"^record at segment 1 offset 0 length 127"):
            store.read_value(*loc, b"key")
    with pytest.raises(LogCorruptError, match=r"^segment 9 does not exist$"):
        store.read_value(9, 0, 10, 1, b"key")
    store.close()


def test_removed_segments_are_unmapped(tmp_path: Path) -> None:
    store = _open(tmp_path, segment_bytes=100)
    store.start(0)
    locs = [store.append_one(Kind.PUT, b"k%d" % i, b"x" * 40) for i in range(4)]
    assert [store.read_value(*loc, b"k%d" % i) for i, loc in enumerate(locs)] == [
        b"x" * 40
    ] * 4  # all mapped
    freed = store.remove_segments_before(3)
    assert freed == 2 * (HEADER_BYTES + 42)
    with pytest.raises(LogCorruptError, match=r"^segment 1 does not exist$"):
        store.read_value(*locs[0], b"k0")
    assert store.read_value(*locs[3], b"k3") == b"x" * 40
    store.close()


def test_a_failed_fsync_makes_nothing_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from postoffice.store.errors import StoreStorageError

    store = _open(tmp_path)
    store.start(0)
    _, ticket = store.append([(Kind.PUT, b"a", b"1", 0)], defer=True)
    real_fsync = os.fsync

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StoreStorageError, match=r"^cannot fsync .*00000001\.seg: Input/output"):
        store.sync(ticket)
    assert store.fsyncs == 0
    monkeypatch.setattr(os, "fsync", real_fsync)
    # A failed fsync may have dropped the pages: a second one that succeeds proves nothing,
    # so the failed bytes are never claimed durable; they are cut away instead.
    with pytest.raises(StoreStorageError, match=r"^log .* is being rolled back: cannot fsync"):
        store.sync(ticket)
    assert store.roll_back() == 0
    with pytest.raises(StoreStorageError, match=r"^cannot fsync .*00000001\.seg: Input/output"):
        store.sync(ticket)
    assert (tmp_path / "00000001.seg").stat().st_size == 0
    assert store.fsyncs == 0
    loc = store.append_one(Kind.PUT, b"b", b"2")
    assert loc[1] == 0  # where the rolled-back record was
    assert loc[3] == ticket + 1  # a ticket names one write forever
    assert store.sync(loc[3]) == loc[3]
    store.close()


def test_a_sync_writes_only_what_its_ticket_needs(tmp_path: Path) -> None:
    """A server writes once per loop iteration, then asks for the fsync: records appended
    in between stay in memory for the next write, and the sync reports what it covered."""
    store = _open(tmp_path)
    store.start(0)
    seg_file = tmp_path / "00000001.seg"
    first = store.append_one(Kind.PUT, b"a", b"1", defer=True)
    store.write_pending()
    second = store.append_one(Kind.PUT, b"b", b"2", defer=True)
    assert store.sync(first[3]) == 1  # the fsync covered record 1, not the pending 2
    assert seg_file.stat().st_size == first[2]
    assert store.read_value(*second, b"b") == b"2"  # from memory
    assert store.sync(second[3]) == 2  # needs record 2: written, then fsynced
    assert seg_file.stat().st_size == first[2] + second[2]
    assert store.fsyncs == 2
    store.close()


def test_a_sealed_segment_is_mapped_once_for_every_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of a sealed segment (compaction's) share one map, not one per record."""
    store = _open(tmp_path, segment_bytes=4096)
    store.start(0)
    locs = [store.append_one(Kind.PUT, b"k%02d" % i, b"v" * 40)[:4] for i in range(40)]
    store.roll()
    sealed = [(i, loc) for i, loc in enumerate(locs) if loc[0] == 1]
    assert len(sealed) > 10
    maps: list[int] = []
    real = mmap.mmap

    def counting(fd: int, size: int, **kwargs: int) -> mmap.mmap:
        maps.append(size)
        return real(fd, size, **kwargs)

    monkeypatch.setattr(mmap, "mmap", counting)
    for i, loc in sealed:
        assert store.read(*loc, b"k%02d" % i).value == b"v" * 40
    assert store.read_value(*sealed[0][1], b"k00") == b"v" * 40
    assert len(maps) == 1
    store.close()


def _flip(path: Path, at: int) -> None:
    """Flip one bit of the file at `at`, underneath the store (its maps see it)."""
    with path.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x01]))


def test_a_long_records_crc_is_checked_by_its_first_mapped_read_only(tmp_path: Path) -> None:
    """The cost of checking a long record once per map, shown by a bit flipped after that
    check: it goes unseen until the segment is mapped again; a short one's never does."""
    store = _open(tmp_path)
    store.start(0)
    big = store.append_one(Kind.PUT, b"big", b"b" * 65536)
    small = store.append_one(Kind.PUT, b"small", b"s" * 100)
    store.roll()
    assert store.read_value(*big, b"big") == b"b" * 65536  # maps the segment
    assert store.read_value(*big, b"big") == b"b" * 65536  # checks the CRC, remembers it
    seg = tmp_path / "00000001.seg"
    _flip(seg, big[1] + big[2] - 10)
    for _ in range(3):  # not checked again: the flipped byte is read as it is
        assert store.read_value(*big, b"big") == b"b" * 65526 + b"c" + b"b" * 9
        assert bytes(store.read_value_view(*big, b"big")) == b"b" * 65526 + b"c" + b"b" * 9
    assert store.read_value(*small, b"small") == b"s" * 100
    _flip(seg, small[1] + small[2] - 10)
    for _ in range(2):  # a short one: every read checks
        with pytest.raises(LogCorruptError, match=r" is corrupt$"):
            store.read_value(*small, b"small")
    store.close()


def test_a_long_record_with_a_flipped_bit_fails_every_read(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    loc = store.append_one(Kind.PUT, b"key", b"v" * 65536)
    store.close()
    seg = tmp_path / "00000001.seg"
    data = bytearray(seg.read_bytes())
    data[-100] ^= 0x01
    seg.write_bytes(bytes(data))
    store = _open(tmp_path)
    store.start(1)
    store.roll()
    for _ in range(3):  # never remembered as checked
        with pytest.raises(
            LogCorruptError, match=r"^record at segment 1 offset 0 length 65563 is corrupt$"
        ):
            store.read_value(*loc, b"key")
        with pytest.raises(
            LogCorruptError, match=r"^record at segment 1 offset 0 length 65563 is corrupt$"
        ):
            store.read_value_view(*loc, b"key")
    store.close()


def test_a_segment_cut_back_and_mapped_again_checks_its_long_records_again(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path)
    store.start(0)
    loc = store.append_one(Kind.PUT, b"key", b"v" * 65536)
    assert store.read_value(*loc, b"key") == b"v" * 65536
    assert store.read_value(*loc, b"key") == b"v" * 65536  # remembered for this map
    _flip(tmp_path / "00000001.seg", loc[1] + loc[2] - 10)
    assert store.read_value(*loc, b"key") != b"v" * 65536  # unchecked in this map
    store._unmap(1)  # as a roll back or a remap of the growing segment does
    with pytest.raises(LogCorruptError, match=r" is corrupt$"):  # maps it again: checked
        store.read_value(*loc, b"key")
    store.close()


def test_a_batch_is_written_as_its_records_framed_back_to_back(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.start(0)
    store.append_one(Kind.PUT, b"first", b"1")
    items = [(Kind.PUT, b"k%d" % i, bytes([i]) * (i * 5000), FLAG_BATCH) for i in range(4)]
    items.append((Kind.BATCH_END, b"", count_value(4), 0))
    locs, ticket = store.append(items)
    assert ticket == 6
    recs = [
        encode_record(kind, seq, key, value, flags)
        for seq, (kind, key, value, flags) in enumerate(items, start=2)
    ]
    start = locs[0][1]
    offsets = [start + sum(len(r) for r in recs[:n]) for n in range(len(recs))]
    assert locs == [
        (1, at, len(rec), seq) for seq, (at, rec) in enumerate(zip(offsets, recs, strict=True), 2)
    ]
    expected = b"".join(recs)
    store.close()
    assert (tmp_path / "00000001.seg").read_bytes()[start:] == expected


def test_read_through_a_segments_map_checks_the_record_as_the_first_read_did(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path)
    store.start(0)
    good = store.append_one(Kind.PUT, b"good", b"g" * 300)
    bad = store.append_one(Kind.PUT, b"bad", b"b" * 300)
    store.close()
    seg = tmp_path / "00000001.seg"
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0x02
    seg.write_bytes(bytes(data))
    store = _open(tmp_path)
    store.start(2)
    store.roll()
    for _ in range(2):  # the first read maps the segment, the second reads the map
        rec = store.read(*good, b"good")
        assert (type(rec.key), type(rec.value)) == (bytes, bytes)
        assert (rec.key, rec.value) == (b"good", b"g" * 300)
        with pytest.raises(LogCorruptError, match=rf"^record at segment 1 offset {bad[1]} "):
            store.read(*bad, b"bad")
        with pytest.raises(LogCorruptError, match=r"^record at segment 1 offset 0 length "):
            store.read(good[0], good[1], good[2], good[3] + 1, b"good")  # another seq
    store.close()
