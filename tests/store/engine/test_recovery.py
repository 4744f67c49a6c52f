"""Recovery against a log or index that lies: torn carriers of forged records, numbers out
of range, lost or swapped segments, and a damaged index."""

from __future__ import annotations

import logging
import os
import shutil
import struct
from pathlib import Path

import lmdb
import pytest

from postoffice.store.engine import Delete, LogCorruptError, Put, Store, StoreStorageError
from postoffice.store.engine.records import HEADER_BYTES, Kind, encode_record

SRC = str(Path(__file__).resolve().parents[3] / "src")
_U64_MAX = (1 << 64) - 1


def _segment(path: Path, sid: int = 1) -> Path:
    return path / "log" / f"{sid:08d}.seg"


def _snapshot(src: Path, dst: Path) -> None:
    """Copy an open store's files as a crash would leave them (the lock file aside)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("LOCK"))


def _write_carrier(path: Path, embedded_seq: int | None) -> tuple[bytes, int, int]:
    """A store whose last record is a carrier: a PUT whose value holds the bytes of a
    well-formed record of the key b"evil". Returns the carrier's record, its offset and the
    offset of the embedded record in the segment; the index is flushed before the carrier
    (a snapshot taken while the store is open, as kill -9 would leave it)."""
    live = path.parent / f"{path.name}-live"
    with Store.open(live) as s:
        s.put(b"a", b"1" * 30)
        s.batch([Put(key=b"b", value=b"2" * 30), Delete(key=b"a")])
        s.put(b"a", b"3" * 30)
    with Store.open(live) as s:  # the index now covers everything above
        seq = s.stats().last_seq + 1
        forged = encode_record(
            Kind.PUT, seq + 1 if embedded_seq is None else embedded_seq, b"evil", b"invented"
        )
        value = b"x" * 7 + forged + b"y" * 9
        s.put(b"carrier", value)
        _snapshot(live, path)
    data = _segment(path).read_bytes()
    carrier = encode_record(Kind.PUT, seq, b"carrier", value)
    start = len(data) - len(carrier)
    assert data[start:] == carrier
    return carrier, start, start + HEADER_BYTES + len(b"carrier") + 7


@pytest.mark.parametrize("embedded_seq", [None, _U64_MAX], ids=["next-seq", "seq-2^64-1"])
@pytest.mark.parametrize("index", ["kept", "lost"])
def test_a_torn_carrier_never_yields_its_embedded_record(
    tmp_path: Path, embedded_seq: int | None, index: str
) -> None:
    """Cut the carrier record at every byte: the forged record inside its value is never
    applied, every record before the carrier is, and writes go on afterwards."""
    base = tmp_path / "base"
    carrier, start, embedded = _write_carrier(base, embedded_seq)
    assert embedded > start
    for cut in range(start + 1, start + len(carrier)):
        case = tmp_path / f"cut{cut}"
        shutil.copytree(base, case)
        os.truncate(_segment(case), cut)
        if index == "lost":
            shutil.rmtree(case / "index")
        with Store.open(case, durability="never") as s:
            assert s.get(b"evil") is None, f"cut at {cut}"
            assert s.scan(limit=10) == [(b"a", b"3" * 30), (b"b", b"2" * 30)], f"cut at {cut}"
            assert s.get(b"carrier") is None
            truncated = s.recovery.truncated
            assert truncated is not None
            assert (truncated.offset, truncated.length) == (start, cut - start)
            s.put(b"after", b"z")
            s.delete(b"b")
            s.batch([Put(key=b"c", value=b"c")])
        with Store.open(case, durability="never") as s:
            assert [k for k, _ in s.scan()] == [b"a", b"after", b"c"]
        shutil.rmtree(case)


def test_a_carrier_damaged_mid_log_is_skipped_whole(tmp_path: Path) -> None:
    """A bit flipped in a carrier's value, with records after it: the scan steps over the
    carrier by its header's length and never reads the record inside it."""
    path = tmp_path / "s"
    forged = encode_record(Kind.PUT, 3, b"evil", b"invented")
    with Store.open(path) as s:
        s.put(b"a", b"1")
        s.put(b"carrier", b"x" * 5 + forged)
        s.put(b"b", b"2")
    seg = _segment(path)
    data = bytearray(seg.read_bytes())
    first = HEADER_BYTES + 2
    data[first + HEADER_BYTES + len(b"carrier") + 2] ^= 0x01  # before the forged record
    seg.write_bytes(bytes(data))
    shutil.rmtree(path / "index")
    with Store.open(path) as s:
        assert s.get(b"evil") is None
        assert s.scan() == [(b"a", b"1"), (b"b", b"2")]
        carrier_len = HEADER_BYTES + len(b"carrier") + 5 + len(forged)
        assert [(d.offset, d.length) for d in s.recovery.corrupt] == [(first, carrier_len)]
        assert s.recovery.truncated is None


def test_damage_in_a_sealed_segment_loses_only_the_rest_of_it(tmp_path: Path) -> None:
    """A header that cannot be read says nowhere where the next record starts: the rest of
    its sealed segment is reported as damaged, and the next segment is read as usual."""
    path = tmp_path / "s"
    with Store.open(path, segment_bytes=120) as s:
        for i in range(6):
            s.put(b"k%d" % i, b"v" * 30)  # two records per segment
    seg = _segment(path)
    data = bytearray(seg.read_bytes())
    data[HEADER_BYTES + 32] ^= 0xFF  # the magic of the segment's second record
    seg.write_bytes(bytes(data))
    shutil.rmtree(path / "index")
    with Store.open(path, segment_bytes=120) as s:
        assert [k for k, _ in s.scan()] == [b"k0", b"k2", b"k3", b"k4", b"k5"]
        assert [(d.segment, d.offset) for d in s.recovery.corrupt] == [(1, HEADER_BYTES + 32)]
        assert s.recovery.truncated is None


def test_a_sequence_number_past_the_limit_is_damage(tmp_path: Path) -> None:
    """A record whose CRC holds but whose sequence number no writer could reach is cut,
    and writes of every kind go on, across restarts."""
    path = tmp_path / "s"
    with Store.open(path) as s:
        s.put(b"a", b"1")
    shutil.rmtree(path / "index")
    with _segment(path).open("ab") as f:
        f.write(encode_record(Kind.PUT, _U64_MAX, b"evil", b"x"))
        f.write(encode_record(Kind.PUT, 1 << 63, b"evil2", b"x"))
    for _ in range(2):
        with Store.open(path) as s:
            assert s.get(b"evil") is None
            assert s.get(b"evil2") is None
            s.put(b"b", b"2")
            assert s.delete(b"b") is True
            s.batch([Put(key=b"c", value=b"3")])
            assert s.stats().last_seq < 100
    with Store.open(path) as s:
        assert s.scan() == [(b"a", b"1"), (b"c", b"3")]


def test_a_copied_segment_does_not_bring_old_values_back(tmp_path: Path) -> None:
    """A segment holding records of sequence numbers already passed (a copy of an older
    one) is damage: the keys keep their newest values."""
    path = tmp_path / "s"
    with Store.open(path, segment_bytes=100) as s:
        s.put(b"k", b"old" * 10)
        s.put(b"k", b"new" * 10)
        s.put(b"j", b"j" * 30)
    segments = sorted((path / "log").iterdir())
    assert len(segments) == 3
    shutil.copy(segments[0], _segment(path, 4))
    shutil.rmtree(path / "index")
    with Store.open(path, segment_bytes=100) as s:
        assert s.get(b"k") == b"new" * 10
        assert s.recovery.truncated is not None
        assert s.recovery.truncated.segment == 4


def _meta_key_db(path: Path) -> tuple[lmdb.Environment, lmdb._Database, lmdb._Database]:
    env = lmdb.open(str(path / "index"), max_dbs=2, subdir=True)
    return env, env.open_db(b"keys"), env.open_db(b"meta")


@pytest.mark.parametrize("last_seq", [_U64_MAX, 1 << 40], ids=["out-of-range", "too-high"])
def test_an_index_sequence_number_that_does_not_fit_the_log_is_rebuilt(
    tmp_path: Path, last_seq: int
) -> None:
    """A meta record's last sequence number past the limit, or above records the log has
    after its position, is not trusted: the index is rebuilt and nothing is cut."""
    path = tmp_path / "s"
    with Store.open(path) as s:
        s.put(b"a", b"1")
    with Store.open(path) as s:
        snap = tmp_path / "snap"
        s.put(b"b", b"2")  # after the index's position
        _snapshot(path, snap)
    env, _, meta = _meta_key_db(snap)
    with env.begin(write=True) as txn:
        raw = txn.get(b"position", db=meta)
        assert raw is not None
        seg, off, _, live = struct.unpack("<IQQQ", raw)
        txn.put(b"position", struct.pack("<IQQQ", seg, off, last_seq, live), db=meta)
    env.close()
    with Store.open(snap) as s:
        assert s.recovery.index_rebuilt
        assert s.recovery.reason is not None
        assert "sequence number" in s.recovery.reason
        assert s.recovery.truncated is None
        assert s.scan() == [(b"a", b"1"), (b"b", b"2")]
        s.put(b"c", b"3")
        assert s.stats().last_seq == 3


def test_a_damaged_index_bucket_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with Store.open(path) as s:
        s.put(b"k", b"v")
    env, keys, _ = _meta_key_db(path)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"\x09\x00k", db=keys)  # claims a 9-byte key, holds 1 and no location
    env.close()
    with (
        Store.open(path) as s,
        pytest.raises(StoreStorageError, match=r"^index bucket .* is damaged$"),
    ):
        s.get(b"k")


@pytest.mark.parametrize("how", ["emptied", "deleted", "cut short"])
def test_a_lost_newest_segment_is_reported_loudly(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s"
    with Store.open(path, segment_bytes=100) as s:
        for i in range(6):
            s.put(b"k%d" % i, b"v" * 40)  # one record per segment
        s.put(b"k0", b"w" * 40)  # k0's newest record is in segment 7
    newest = _segment(path, 7)
    if how == "emptied":
        os.truncate(newest, 0)
    elif how == "deleted":
        newest.unlink()
    else:
        os.truncate(newest, 30)
    with caplog.at_level(logging.ERROR), Store.open(path, segment_bytes=100) as s:
        rec = s.recovery
        assert (rec.lost_keys, rec.lost_segments) == (1, (7,))
        assert s.stats().recovery.lost_keys == 1
        assert s.get(b"k0") == b"v" * 40  # as the log has it: its older record
        assert len(s) == 6
        s.put(b"k9", b"9")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"log segment lost records path={path} segment=7 keys_lost=1"
    ]
    with Store.open(path, segment_bytes=100) as s:  # reported once, not on every open
        assert (s.recovery.lost_keys, s.recovery.index_rebuilt) == (0, False)
        assert s.get(b"k9") == b"9"


def test_a_lost_middle_segment_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with Store.open(path, segment_bytes=100) as s:
        for i in range(5):
            s.put(b"k%d" % i, b"v" * 40)
    _segment(path, 3).unlink()
    with Store.open(path, segment_bytes=100) as s:
        assert (s.recovery.lost_keys, s.recovery.lost_segments) == (1, (3,))
        assert s.get(b"k2") is None
        assert [k for k, _ in s.scan()] == [b"k0", b"k1", b"k3", b"k4"]
    with Store.open(path, segment_bytes=100) as s:
        assert (s.recovery.lost_keys, s.recovery.index_rebuilt) == (0, False)


def test_a_get_never_returns_another_records_bytes(tmp_path: Path) -> None:
    """A segment rewritten with other well-formed records of the same length: the index's
    position now holds another record, and a get says so instead of returning it."""
    path = tmp_path / "s"
    with Store.open(path) as s:
        s.put(b"j", b"old")
        s.put(b"k", b"new")
    forged = encode_record(Kind.PUT, 1, b"j", b"old") + encode_record(Kind.PUT, 2, b"k", b"bad")
    seg = _segment(path)
    assert len(forged) == seg.stat().st_size
    seg.write_bytes(forged[: HEADER_BYTES + 4] + encode_record(Kind.PUT, 9, b"k", b"bad"))
    with Store.open(path) as s:
        assert not s.recovery.index_rebuilt
        with pytest.raises(LogCorruptError, match=r"^record at segment 1 offset 28 length 28"):
            s.get(b"k")
        with pytest.raises(LogCorruptError):
            s.scan()


def test_a_location_past_a_segments_end_is_an_error(tmp_path: Path) -> None:
    """An index location whose length passes the segment's end (a damaged index) is
    refused before anything of that length is read or allocated."""
    with Store.open(tmp_path) as s:
        s.put(b"k", b"v")
        for length in ((1 << 32) - 1, 200):
            s._index.set(b"k", (1, 0, length, 1))
            with pytest.raises(
                LogCorruptError, match=rf"^record at segment 1 offset 0 length {length}"
            ):
                s.get(b"k")
        s._index.set(b"k", (1, 0, HEADER_BYTES + 2, 1))
        assert s.get(b"k") == b"v"
