"""The log's record format (one PUT, DELETE or BATCH_END, framed and checksummed), and
the replay of one segment's bytes into records: bytes in, records out, no files."""

from __future__ import annotations

import enum
import logging
import mmap
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

# The segment files (logstore.py) are back-to-back records:
#     header "<HBBQIII": magic u16, kind u8, flags u8, seq u64, key_len u32, value_len u32,
#                        crc u32 (CRC-32 of the header's first 20 bytes + key + value)
#     key, value
# The members of a batch carry FLAG_BATCH; their BATCH_END's value is the u32 member
# count. Sequence numbers rise by at least one from each record to the next, across
# segments too.
#
# Replay trusts a record only where the log itself puts one: at the start of a segment,
# or just past a record it read. It never searches the bytes for something that looks
# like a record, because a value may hold the bytes of a well-formed record (a client
# can store anything), and a search after damage would find it and apply a write no
# client made. So a damaged record whose header still reads sensibly (magic, kind,
# flags, lengths that fit the segment) is skipped by the length that header gives,
# and one whose header does not is the end of what can be read of its segment: the rest
# of a sealed segment is reported as damaged, and the last segment is cut there (a torn
# write). Damage at the end of the last segment with no good record after it is a torn
# tail too, and cut. A record whose CRC holds but whose sequence number does not rise,
# or passes MAX_SEQ, is damage as well (a copied segment, a number no writer could
# reach). Replay logs one line for each damaged range it skips.

log = logging.getLogger(__name__)

HEADER: Final = struct.Struct("<HBBQIII")
HEADER_BYTES: Final = HEADER.size
CRC_COVERS: Final = HEADER_BYTES - 4  # the crc field itself is not covered
HEAD_NO_CRC: Final = struct.Struct("<HBBQII")  # the header without its crc
CRC: Final = struct.Struct("<I")
MAGIC: Final = 0x504F
MAGIC_BYTES: Final = struct.pack("<H", MAGIC)
FLAG_BATCH: Final = 0x01
COUNT: Final = struct.Struct("<I")
# A record longer than this is treated as corrupt framing: no legal record comes close
# (keys and values are limited far below it), and it stops a flipped length bit from
# making the scan read gigabytes.
MAX_RECORD_BYTES: Final = 1 << 31
# The highest sequence number a record may carry: the writer refuses to pass it, and
# replay takes a record above it for damage (at a million writes a second, a log takes
# 290,000 years to get there, so only a damaged or forged number ever does).
MAX_SEQ: Final = (1 << 63) - 1


class Kind(enum.IntEnum):
    """What a record does."""

    PUT = 1
    DELETE = 2
    BATCH_END = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One decoded record and where it lies."""

    kind: Kind
    flags: int
    seq: int
    key: bytes
    value: bytes
    segment: int
    offset: int
    length: int


def encode_record(kind: Kind, seq: int, key: bytes, value: bytes, flags: int = 0) -> bytes:
    """Frame one record: header with its CRC-32, then key and value."""
    head = HEAD_NO_CRC.pack(MAGIC, kind, flags, seq, len(key), len(value))
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(head)))
    return b"".join((head, CRC.pack(crc), key, value))


def parse_record(
    buf: bytes | memoryview | mmap.mmap, pos: int, size: int
) -> tuple[Kind, int, int, int, int] | None:
    """Check the record at `pos`; return (kind, flags, seq, key_len, value_len) or None."""
    if size - pos < HEADER_BYTES:
        return None
    magic, kind, flags, seq, key_len, value_len, crc = HEADER.unpack_from(buf, pos)
    end = pos + HEADER_BYTES + key_len + value_len
    if magic != MAGIC or end > size or end - pos > MAX_RECORD_BYTES:
        return None
    if kind not in (Kind.PUT, Kind.DELETE, Kind.BATCH_END) or flags & ~FLAG_BATCH:
        return None
    if zlib.crc32(buf[pos + HEADER_BYTES : end], zlib.crc32(buf[pos : pos + CRC_COVERS])) != crc:
        return None
    return Kind(kind), flags, seq, key_len, value_len


def count_value(count: int) -> bytes:
    """The value of a BATCH_END record: its member count."""
    return COUNT.pack(count)


@dataclass(frozen=True, slots=True, kw_only=True)
class Damage:
    """A byte range the scan could not read as records."""

    segment: int
    offset: int
    length: int


@dataclass(slots=True, kw_only=True)
class ScanReport:
    """What a recovery scan found: applied records, skipped damage and a cut tail."""

    records: int = 0
    last_seq: int = 0
    corrupt: list[Damage] = field(default_factory=list)
    truncated: Damage | None = None
    dropped_batches: int = 0


def _skip_length(buf: bytes | mmap.mmap, pos: int, size: int) -> int | None:
    """The length of the damaged record at `pos` if its header reads sensibly, else None.

    Sensibly: the right magic, a known kind, known flags, and lengths that end inside the
    segment. Only then is the length taken as the way to the next record.
    """
    if size - pos < HEADER_BYTES:
        return None
    magic, kind, flags, _, key_len, value_len, _ = HEADER.unpack_from(buf, pos)
    length: int = HEADER_BYTES + key_len + value_len
    if magic != MAGIC or kind not in _KINDS or flags & ~FLAG_BATCH:
        return None
    if length > MAX_RECORD_BYTES or pos + length > size:
        return None
    return length


_KINDS: Final = frozenset(int(k) for k in Kind)


@dataclass(slots=True)
class _Segment:
    """One segment's replay: the batch being read and the damage not yet reported."""

    sid: int
    report: ScanReport
    pending: list[Record] = field(default_factory=list)
    # Damage seen since the last good record: reported once a good record follows it, or
    # cut away (from `cut` on) as the torn tail of the last segment.
    damage: list[Damage] = field(default_factory=list)
    cut: int | None = None

    def damaged(self, offset: int, length: int) -> None:
        start = offset
        if self.pending:  # the batch being read can no longer be whole
            self.report.dropped_batches += 1
            start = self.pending[0].offset
            self.pending = []
        if self.cut is None:
            self.cut = start
        if self.damage and self.damage[-1].offset + self.damage[-1].length == offset:
            length += self.damage[-1].length
            offset = self.damage.pop().offset
        self.damage.append(Damage(segment=self.sid, offset=offset, length=length))

    def confirm(self) -> None:
        """A good record follows the damage seen: it is damage, not a torn tail."""
        for d in self.damage:
            self.report.corrupt.append(d)
            log.warning(
                "corrupt log range segment=%d offset=%d bytes=%d", d.segment, d.offset, d.length
            )
        self.damage = []
        self.cut = None


def scan_segment(
    sid: int,
    buf: mmap.mmap,
    pos: int,
    size: int,
    last: bool,
    apply: Callable[[Record], None],
    report: ScanReport,
) -> int | None:
    """Replay one segment's committed records into `apply` (a batch only once its
    BATCH_END is read); return the offset to cut a torn last segment at, or None.

    `report.last_seq` is the sequence number the records must rise above (0 at the start
    of the log); see the design note for what counts as damage and what is cut.
    """
    seg = _Segment(sid=sid, report=report)
    while pos < size:
        parsed = parse_record(buf, pos, size)
        if parsed is None or not report.last_seq < parsed[2] <= MAX_SEQ:
            skip = _skip_length(buf, pos, size)
            if skip is None:  # nothing past here can be found without searching
                seg.damaged(pos, size - pos)
                break
            seg.damaged(pos, skip)
            pos += skip
            continue
        kind, flags, seq, key_len, value_len = parsed
        length = HEADER_BYTES + key_len + value_len
        body = pos + HEADER_BYTES
        rec = Record(
            kind=kind,
            flags=flags,
            seq=seq,
            key=buf[body : body + key_len],
            value=buf[body + key_len : body + key_len + value_len],
            segment=sid,
            offset=pos,
            length=length,
        )
        pos += length
        report.last_seq = seq
        seg.confirm()
        if flags & FLAG_BATCH:
            seg.pending.append(rec)
            continue
        if kind is Kind.BATCH_END:
            if len(rec.value) == 4 and COUNT.unpack(rec.value)[0] == len(seg.pending):
                for member in seg.pending:
                    apply(member)
                    report.records += 1
            else:
                report.dropped_batches += 1
            seg.pending = []
            continue
        if seg.pending:  # a batch without its end: it never committed
            report.dropped_batches += 1
            seg.pending = []
        apply(rec)
        report.records += 1
    if seg.pending:  # a batch the segment ends inside of: it never committed
        report.dropped_batches += 1
        if seg.cut is None:
            seg.cut = seg.pending[0].offset
    if last and seg.cut is not None:
        return seg.cut
    seg.confirm()
    return None
