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
# count. Replay logs one line for each damaged range it skips.

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
    buf: bytes | mmap.mmap, pos: int, size: int
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
    BATCH_END is read); return the offset to cut a torn last segment at, or None."""
    pending: list[Record] = []
    while pos < size:
        parsed = parse_record(buf, pos, size)
        if parsed is None:
            nxt = resync(buf, pos + 1, size)
            if pending:
                report.dropped_batches += 1
            if nxt is None and last:
                return pending[0].offset if pending else pos
            end = size if nxt is None else nxt
            report.corrupt.append(Damage(segment=sid, offset=pos, length=end - pos))
            log.warning("corrupt log range segment=%d offset=%d bytes=%d", sid, pos, end - pos)
            pending = []
            if nxt is None:
                return None
            pos = nxt
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
        report.last_seq = max(report.last_seq, seq)
        if flags & FLAG_BATCH:
            pending.append(rec)
            continue
        if kind is Kind.BATCH_END:
            if len(rec.value) == 4 and COUNT.unpack(rec.value)[0] == len(pending):
                for member in pending:
                    apply(member)
                    report.records += 1
            else:
                report.dropped_batches += 1
            pending = []
            continue
        if pending:  # a batch without its end: it never committed
            report.dropped_batches += 1
            pending = []
        apply(rec)
        report.records += 1
    if pending:
        report.dropped_batches += 1
        if last:
            return pending[0].offset
    return None


def resync(buf: mmap.mmap, pos: int, size: int) -> int | None:
    """Find the next offset holding a valid record, or None."""
    while True:
        pos = buf.find(MAGIC_BYTES, pos, size)
        if pos < 0:
            return None
        if parse_record(buf, pos, size) is not None:
            return pos
        pos += 1
