"""Append-only segment files of the store engine: record framing, group commit, recovery scan.

Blocking I/O layer: the engine calls it under its own lock (compaction reads sealed segments
without it); nothing here runs on an event loop.
"""

# Design
# ------
# A segment is a file `NNNNNNNN.seg` of back-to-back records (their format: records.py).
# Kinds are PUT, DELETE and BATCH_END. The members of a batch carry FLAG_BATCH and are
# written together with their BATCH_END (whose value is the u32 member count) in one write
# into one segment; the recovery scan applies members only when their BATCH_END arrives, so a
# batch is all or nothing. A segment rolls when the next write would pass `segment_bytes`;
# the old segment is fsynced first, so only the last segment can end in a torn record.
# Group commit: writers append under `_lock` and get their record's sequence number as a
# ticket; `sync(ticket)` lets one thread fsync for everyone whose ticket it covers, while the
# others wait on a condition variable.
# Write-behind: an append with `defer` leaves its bytes in `_pending` (they are already
# placed: offsets and tickets are final) until `write_pending` or a `sync` whose ticket
# needs them, which writes them first. So a server appending many requests in one
# event-loop iteration pays one write(2) for all of them. Readers of pending bytes get
# them from memory under `_lock`. Nothing is acknowledged as durable before `sync`, and a
# server that does not fsync writes them before it answers.
# Failure: a write(2) or an fsync that fails leaves the bytes after the last fsync in an
# unknown state (a failed fsync may have dropped the dirty pages, and a later fsync that
# succeeds would not write them again), so nothing after that point may ever be claimed
# durable. The log is poisoned: it appends and syncs nothing until `roll_back` cuts it
# back to the last durable position (segments made since deleted, the tail truncated
# and fsynced) and records the rolled-back sequence numbers, whose tickets then fail.
# The engine calls `roll_back` under its own lock and undoes those records in its index,
# so an error means nothing changed, in memory or on disk. Sequence numbers are not
# reused after a roll back: a ticket names one write forever. If the cut itself fails
# (the disk refuses every fsync), the log refuses every write, and the next write tries
# the cut again first.
# Reads slice a read-only map of the segment instead of a pread. Sealed segments never
# change; the current one grows, so its map covers what was written when it was made and
# is made again after `_REMAP_BYTES` more (a pread in between).
# Every read checks that the record is the one the index names (magic, kind, seq, key,
# length). The CRC of a record of `_CHECK_ONCE_BYTES` or more is computed by its first
# read through a map only; its offset is then remembered with the map (and forgotten with
# it: a roll back or a compaction unmaps), since hashing 64 KiB cost three times the rest
# of a get. A record that fails is never remembered, so it fails every read. Recovery,
# compaction and `read` check every CRC they pass. Smaller records are checked on every
# read: hashing them costs less than remembering them.

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import mmap
import os
import re
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

from postoffice.core.errors import os_errors, translate_os_error
from postoffice.store.engine.records import (
    CRC,
    CRC_COVERS,
    HEAD_NO_CRC,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    MAX_RECORD_BYTES,
    MAX_SEQ,
    Damage,
    Kind,
    Record,
    ScanReport,
    parse_record,
    scan_segment,
)
from postoffice.store.errors import LogCorruptError, StoreStorageError

log = logging.getLogger(__name__)

_SEGMENT_NAME: Final = re.compile(r"^(\d{8})\.seg$")
# Segment numbers are the 8 digits of the file names (and a u32 in the index).
MAX_SEGMENT: Final = 99_999_999
# The current segment is mapped again for reads once it has grown this much past its map;
# reads of the bytes in between are a pread each.
_REMAP_BYTES: Final = 1 << 20
# Records this long or longer have their CRC checked once per map, not on every read
# (see the design note); remembering one costs under 2 % of its size.
_CHECK_ONCE_BYTES: Final = 4096
# Rolled-back ranges of sequence numbers remembered, for the tickets in them.
_FAILED_RANGES: Final = 64
# Hot-path aliases (a global load instead of an attribute lookup).
_UNPACK: Final = HEADER.unpack_from
_CRC32: Final = zlib.crc32
_PACK_HEAD: Final = HEAD_NO_CRC.pack
_PACK_CRC: Final = CRC.pack
_PUT: Final = int(Kind.PUT)  # an int compares faster than an enum member


class Durability(enum.StrEnum):
    """When an appended record reaches the disk."""

    ALWAYS = "always"  # fsync before the write is acknowledged (group commit)
    INTERVAL = "interval"  # a background thread fsyncs every `interval_ms`
    NEVER = "never"  # the OS decides; close still fsyncs


DEFAULT_DURABILITY: Final = Durability.ALWAYS
"""What a server opens the engine with unless told: no acknowledged write is lost."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A byte position in the log: segment id and offset inside it."""

    segment: int
    offset: int


def _fsync_dir(path: Path) -> None:
    with os_errors(StoreStorageError, f"fsync {path}"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@final
class LogStore:
    """The segment files of one store: append, read by position, fsync, recovery scan.

    Thread-safe. Raises StoreStorageError on OS errors and LogCorruptError on bad records.
    """

    def __init__(
        self, directory: Path, *, segment_bytes: int, durability: Durability, interval_ms: int
    ) -> None:
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._durability = durability
        self._interval_s = interval_ms / 1000
        self._lock = threading.Lock()
        self._sync_cond = threading.Condition()
        self._syncing = False
        self._synced_seq = 0
        self._written_seq = 0
        self._fds: dict[int, int] = {}
        self._closed = False
        # The failure being handled (see the design note) and the one that broke the log.
        self._poisoned: StoreStorageError | None = None
        self._broken: StoreStorageError | None = None
        #: A write or fsync failed and `roll_back` has not yet cut the log back.
        self.needs_roll_back = False
        # Sequence numbers rolled back, (after, through], with the error that did it: the
        # tickets in them fail. The newest few are kept: a waiter asks within moments.
        self._failed: collections.deque[tuple[int, int, StoreStorageError]] = collections.deque(
            maxlen=_FAILED_RANGES
        )
        #: Called (on the fsync thread, no lock held) when an interval fsync fails.
        self.on_sync_failure: Callable[[], None] | None = None
        self.fsyncs = 0
        with os_errors(StoreStorageError, f"create {directory}"):
            directory.mkdir(parents=True, exist_ok=True)
        ids = sorted(
            int(m.group(1)) for p in directory.iterdir() if (m := _SEGMENT_NAME.match(p.name))
        )
        for sid in ids:
            with os_errors(StoreStorageError, f"open {self._path(sid)}"):
                self._fds[sid] = os.open(self._path(sid), os.O_RDWR | os.O_CLOEXEC)
        if not ids:
            self._create_segment(1)
        self._current = max(self._fds)
        with os_errors(StoreStorageError, f"stat {self._path(self._current)}"):
            self._tail = os.fstat(self._fds[self._current]).st_size
        # Write-behind (see the design note): records appended to the current segment but
        # not written yet, and the file offset they start at (the written tail).
        self._pending = bytearray()
        self._written_tail = self._tail
        self._file_seq = 0  # the last record written to a file (pending ones come after it)
        # The last position an fsync covered, and the last sequence number before it.
        self._durable = (self._current, self._tail, 0)
        # Read-only maps of the segments, for reads without a syscall; the current
        # segment's map covers what was written when it was made (see `read_value`).
        # Reads go through a memoryview of each map (slices of it copy nothing); it is
        # released before its map is closed.
        self._maps: dict[int, mmap.mmap] = {}
        self._views: dict[int, memoryview] = {}
        # The offsets, per mapped segment, of the records whose CRC a read checked.
        self._checked: dict[int, set[int]] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def __repr__(self) -> str:
        return (
            f"<LogStore {self._dir} segment={self._current} tail={self._tail} "
            f"seq={self._written_seq} {self._durability.value}>"
        )

    def _path(self, sid: int) -> Path:
        return self._dir / f"{sid:08d}.seg"

    def _create_segment(self, sid: int) -> None:
        path = self._path(sid)
        with os_errors(StoreStorageError, f"create {path}"):
            self._fds[sid] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        if self._durability is not Durability.NEVER:
            _fsync_dir(self._dir)

    # -- positions -------------------------------------------------------------------------

    def segments(self) -> list[int]:
        """Segment ids, oldest first."""
        return sorted(self._fds)

    def first_position(self) -> Position:
        """The start of the oldest segment."""
        return Position(min(self._fds), 0)

    def tail(self) -> Position:
        """The position just past the last appended record."""
        return Position(self._current, self._tail)

    def segment_size(self, sid: int) -> int:
        """The size in bytes of segment `sid`."""
        with os_errors(StoreStorageError, f"stat {self._path(sid)}"):
            return os.fstat(self._fds[sid]).st_size

    def total_bytes(self) -> int:
        """The size of all segments together, records not written yet included."""
        return sum(self.segment_size(sid) for sid in self._fds) + len(self._pending)

    @property
    def last_seq(self) -> int:
        """The sequence number of the last appended record."""
        return self._written_seq

    @property
    def live_seq(self) -> int:
        """The sequence number of the last appended record that was not rolled back: what
        a sync of everything asks for."""
        with self._lock:
            for lo, hi, _ in self._failed:
                if lo < self._written_seq <= hi:
                    return lo
            return self._written_seq

    @property
    def durable_seq(self) -> int:
        """The sequence number of the last record an fsync covered: no roll back goes below."""
        return self._durable[2]

    def _check_writable(self) -> None:
        # The caller holds `_lock`.
        if self._broken is not None:
            raise StoreStorageError(f"log {self._dir} cannot be cut back: {self._broken}")
        if self._poisoned is not None:
            raise StoreStorageError(f"log {self._dir} is being rolled back: {self._poisoned}")

    def _poison(self, exc: StoreStorageError) -> StoreStorageError:
        # The caller holds `_lock`.
        if self._poisoned is None:
            self._poisoned = exc
            self.needs_roll_back = True
        return exc

    def failures(self, after: int, through: int) -> list[tuple[int, int, StoreStorageError]]:
        """The rolled-back ranges of sequence numbers, (lo, hi] and their error, that meet
        (after, through], oldest first."""
        with self._lock:
            return [f for f in self._failed if f[1] > after and f[0] < through]

    def _failure_of(self, ticket: int) -> StoreStorageError | None:
        for lo, hi, exc in self._failed:
            if lo < ticket <= hi:
                return exc
        return None

    def roll_back(self) -> int | None:
        """Cut the log back to its last durable position after a failed write or fsync.

        Waits for a running sync. Returns the last sequence number the log still holds
        (every later one is rolled back and its ticket fails), or None if nothing failed.
        Raises StoreStorageError if the cut itself fails: the log then refuses writes until
        a later call succeeds.
        """
        with self._sync_cond:
            while self._syncing:
                self._sync_cond.wait()
            self._syncing = True
        try:
            with self._lock:
                failure = self._poisoned
                if failure is None:
                    return None
                sid, offset, seq = self._durable
                if not self._failed or self._failed[-1][2] is not failure:
                    self._failed.append((seq, self._written_seq, failure))
                self._pending.clear()
                try:
                    self._cut_back(sid, offset)
                except StoreStorageError as exc:
                    self._broken = exc
                    log.error("log roll back failed dir=%s error=%s", self._dir, exc)
                    raise
                log.error(
                    "log rolled back after a failed write dir=%s segment=%d offset=%d"
                    " records=%d error=%s",
                    self._dir,
                    sid,
                    offset,
                    self._written_seq - seq,
                    failure,
                )
                self._poisoned = self._broken = None
                self.needs_roll_back = False
                return seq
        finally:
            with self._sync_cond:
                self._syncing = False
                self._sync_cond.notify_all()

    def _cut_back(self, sid: int, offset: int) -> None:
        """Delete the segments after `sid`, truncate it at `offset` and fsync; the caller
        holds `_lock` and has stopped syncs."""
        removed = False
        for later in sorted((s for s in self._fds if s > sid), reverse=True):
            path = self._path(later)
            with os_errors(StoreStorageError, f"remove {path}"):
                self._unmap(later)
                os.close(self._fds.pop(later))
                path.unlink()
                removed = True
        path = self._path(sid)
        self._unmap(sid)  # a map past the new end would fault on a read
        with os_errors(StoreStorageError, f"truncate {path}"):
            os.ftruncate(self._fds[sid], offset)
            os.fsync(self._fds[sid])
        if removed:
            _fsync_dir(self._dir)
        self._current = sid
        self._tail = self._written_tail = offset
        self._file_seq = self._synced_seq = self._durable[2]

    # -- writing ---------------------------------------------------------------------------

    def start(self, last_seq: int) -> None:
        """Begin appending after recovery: sequence numbers continue after `last_seq`.

        Raises StoreStorageError if `last_seq` leaves no room below MAX_SEQ.
        """
        if not 0 <= last_seq < MAX_SEQ:
            raise StoreStorageError(f"sequence number {last_seq} is out of range 0..{MAX_SEQ - 1}")
        self._written_seq = self._synced_seq = self._file_seq = last_seq
        self._durable = (self._current, self._tail, last_seq)
        if self._durability is Durability.INTERVAL:
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"logstore-fsync {self._dir}", daemon=True
            )
            self._flusher.start()

    def append(
        self, items: Sequence[tuple[Kind, bytes, bytes, int]], *, defer: bool = False
    ) -> tuple[list[tuple[int, int, int, int]], int]:
        """Append records (kind, key, value, flags) together, into one segment.

        Returns each record's (segment, offset, length, seq) and the ticket for `sync`.
        With `defer` the bytes stay in memory until `write_pending` or `sync` (readers see
        them at once). Raises StoreStorageError.
        """
        with self._lock:
            if self._poisoned is not None or self._broken is not None:
                self._check_writable()
            # Headers first (nothing changes if one cannot be packed), then each record
            # straight into `_pending` once the batch is placed: the value's one copy before
            # the write (a record of its own and a join of them took two more).
            heads: list[bytes] = []
            spans: list[tuple[int, int, int]] = []  # offset within the batch, length, seq
            at = 0
            seq = self._written_seq
            for kind, key, value, flags in items:
                seq += 1
                head = _PACK_HEAD(MAGIC, kind, flags, seq, len(key), len(value))
                heads.append(head + _PACK_CRC(_CRC32(value, _CRC32(key, _CRC32(head)))))
                length = HEADER_BYTES + len(key) + len(value)
                spans.append((at, length, seq))
                at += length
            base = self._place(at)
            pending = self._pending
            for head, (_, key, value, _) in zip(heads, items, strict=True):
                pending += head
                pending += key
                pending += value
            self._written_seq = seq
            if not defer:
                self._write_pending()
            sid = self._current
            return [(sid, base + off, n, s) for off, n, s in spans], seq

    def append_one(
        self, kind: int, key: bytes, value: bytes, defer: bool = False
    ) -> tuple[int, int, int, int]:
        """`append` of one record without a batch flag: (segment, offset, length, seq).

        The hot path of every put (`kind` a plain int there: an IntEnum packs slower). Raises
        StoreStorageError.
        """
        with self._lock:
            if self._poisoned is not None or self._broken is not None:
                self._check_writable()
            seq = self._written_seq + 1
            key_len = len(key)
            value_len = len(value)
            head = _PACK_HEAD(MAGIC, kind, 0, seq, key_len, value_len)
            length = HEADER_BYTES + key_len + value_len
            base = self._tail
            if base > 0 and base + length > self._segment_bytes:
                base = self._place(length)  # rolls to a new segment first
            else:
                self._tail = base + length
            pending = self._pending
            pending += head
            pending += _PACK_CRC(_CRC32(value, _CRC32(key, _CRC32(head))))
            pending += key
            pending += value
            self._written_seq = seq
            if not defer:
                self._write_pending()
            return self._current, base, length, seq

    def _place(self, size: int) -> int:
        """The offset `size` appended bytes start at, rolling first if they do not fit."""
        if self._tail > 0 and self._tail + size > self._segment_bytes:
            self._write_pending()
            self._roll()
        base = self._tail
        self._tail = base + size
        return base

    def write_pending(self) -> None:
        """Write the records appended with `defer` (still not fsynced). Raises StoreStorageError."""
        if self._pending:
            with self._lock:
                self._write_pending()

    def _write_pending(self) -> None:
        # The caller holds `_lock`.
        pending = self._pending
        if not pending:
            return
        fd = self._fds[self._current]
        at = self._written_tail
        try:
            done = os.pwrite(fd, pending, at)
            if done < len(pending):
                with memoryview(pending) as view:
                    while done < len(pending):
                        done += os.pwrite(fd, view[done:], at + done)
        except OSError as exc:
            path = self._path(self._current)
            err = translate_os_error(exc, StoreStorageError, f"write {path}")
            raise self._poison(err) from exc
        # Only now are the bytes the file's: a reader of a pending record (read_value) takes
        # `_lock` and finds them either here or in the file.
        self._written_tail = at + len(pending)
        self._file_seq = self._written_seq
        pending.clear()

    def roll(self) -> None:
        """Seal the current segment, if it holds anything, and start a new one."""
        with self._lock:
            self._check_writable()
            self._write_pending()
            if self._tail > 0:
                self._roll()

    def remove_segments_before(self, sid: int) -> int:
        """Delete every segment older than `sid`, oldest first; return the bytes freed.

        Oldest first keeps the remaining log a suffix, so a crash midway still replays to the
        same state. Raises StoreStorageError.
        """
        freed = 0
        with self._lock:
            for old in sorted(s for s in self._fds if s < sid):
                path = self._path(old)
                with os_errors(StoreStorageError, f"remove {path}"):
                    freed += os.fstat(self._fds[old]).st_size
                    path.unlink()
                    self._unmap(old)
                    os.close(self._fds.pop(old))
        if freed and self._durability is not Durability.NEVER:
            _fsync_dir(self._dir)
        return freed

    def _roll(self) -> None:
        """Start a new segment; the old one is fsynced first so it can never be torn.

        The caller holds `_lock` and has written the pending records."""
        if self._current >= MAX_SEGMENT:
            raise StoreStorageError(
                f"segment number {self._current + 1} exceeds limit {MAX_SEGMENT}"
            )
        if self._durability is not Durability.NEVER:
            try:
                os.fsync(self._fds[self._current])
            except OSError as exc:
                what = f"fsync {self._path(self._current)}"
                err = translate_os_error(exc, StoreStorageError, what)
                raise self._poison(err) from exc
            self.fsyncs += 1
            self._durable = (self._current, self._written_tail, self._file_seq)
            self._synced_seq = max(self._synced_seq, self._file_seq)
        try:
            self._create_segment(self._current + 1)
        except StoreStorageError as exc:
            raise self._poison(exc) from exc
        self._current += 1
        self._tail = self._written_tail = 0

    def sync(self, ticket: int) -> int:
        """Return once every record up to sequence `ticket` is on disk (group commit).

        One caller fsyncs on behalf of all waiting callers. Returns the sequence number
        now known durable (at least `ticket`): everything appended before the fsync
        began. Raises StoreStorageError.
        """
        with self._sync_cond:
            while True:
                failed = self._failure_of(ticket)
                if failed is not None:  # rolled back: it never reaches the disk
                    raise failed
                if self._synced_seq >= ticket:
                    return self._synced_seq
                if not self._syncing:
                    self._syncing = True
                    break
                self._sync_cond.wait()
        covered = 0
        durable = self._durable
        try:
            with self._lock:
                self._check_writable()
                # Written already (a server writes once per loop iteration, then asks for
                # the fsync): then leave what was appended since for the next write.
                if self._file_seq < ticket:
                    self._write_pending()
                sid = self._current
                seq = self._file_seq
                durable = (sid, self._written_tail, seq)
                # A duplicate: once the lock is released the segment may roll and a compaction
                # may remove it, closing its fd (or reusing the number) before this fsync.
                try:
                    fd = os.dup(self._fds[sid])
                except OSError as exc:
                    what = f"dup {self._path(sid)}"
                    raise translate_os_error(exc, StoreStorageError, what) from exc
            try:
                os.fsync(fd)
            except OSError as exc:
                what = f"fsync {self._path(sid)}"
                err = translate_os_error(exc, StoreStorageError, what)
                with self._lock:
                    self._poison(err)
                raise err from exc
            finally:
                os.close(fd)
            covered = seq  # only a successful fsync makes anything durable
            self.fsyncs += 1
            with self._lock:
                if seq > self._durable[2]:
                    self._durable = durable
        finally:
            with self._sync_cond:
                self._syncing = False
                self._synced_seq = max(self._synced_seq, covered)
                self._sync_cond.notify_all()
        return max(covered, ticket)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.sync(self.live_seq)
            except StoreStorageError as exc:
                log.error("interval fsync failed dir=%s error=%s", self._dir, exc)
                if self.on_sync_failure is not None:
                    self.on_sync_failure()

    # -- reading ---------------------------------------------------------------------------

    def read_value(self, segment: int, offset: int, length: int, seq: int, key: bytes) -> bytes:
        """The value of the PUT record of `key` with sequence number `seq` at a position.

        The hot path of every get: the header unpacked and the CRC computed straight from
        the segment's map (a pread for bytes past it; a long record's CRC once per map,
        see the design note), and one copy, of the value. The
        record must be whole, intact, and the very one the index names (its seq and key):
        a position the log no longer holds, or holds another record at, is an error,
        never bytes. Raises LogCorruptError, StoreStorageError.
        """
        view = self._views.get(segment)
        end = offset + length
        if view is None or end > len(view) or length < HEADER_BYTES:
            return self._read_value_slow(segment, offset, length, seq, key)
        magic, kind, _, found_seq, key_len, value_len, crc = _UNPACK(view, offset)
        start = offset + HEADER_BYTES + key_len
        if (
            magic == MAGIC
            and kind == _PUT
            and found_seq == seq
            and start + value_len == end
            and view[offset + HEADER_BYTES : start] == key
            and (
                _CRC32(
                    view[offset + HEADER_BYTES : end], _CRC32(view[offset : offset + CRC_COVERS])
                )
                == crc
                if length < _CHECK_ONCE_BYTES
                else self._crc_holds_once(view, segment, offset, end, crc)
            )
        ):
            return view[start:end].tobytes()
        raise _corrupt(segment, offset, length)

    def read_value_view(
        self, segment: int, offset: int, length: int, seq: int, key: bytes
    ) -> bytes | memoryview:
        """`read_value`, with no copy of a value in a segment before the durable one: a
        read-only view of the segment's map, checked alike. A roll back after a failed
        write or fsync cuts only from the durable position on, so such a segment never
        shrinks; one that compaction removes stays mapped until the last such view is gone
        (`_unmap`). Values of the later segments come as bytes.
        Raises LogCorruptError, StoreStorageError.
        """
        view = self._views.get(segment)
        end = offset + length
        if segment >= self._durable[0] or length < HEADER_BYTES:
            return self.read_value(segment, offset, length, seq, key)
        if view is None or end > len(view):  # read (and checked) once, mapping it
            value = self.read_value(segment, offset, length, seq, key)
            view = self._views.get(segment)
            return value if view is None or end > len(view) else view[end - len(value) : end]
        magic, kind, _, found_seq, key_len, value_len, crc = _UNPACK(view, offset)
        start = offset + HEADER_BYTES + key_len
        if (
            magic == MAGIC
            and kind == _PUT
            and found_seq == seq
            and start + value_len == end
            and view[offset + HEADER_BYTES : start] == key
            and (
                _CRC32(
                    view[offset + HEADER_BYTES : end], _CRC32(view[offset : offset + CRC_COVERS])
                )
                == crc
                if length < _CHECK_ONCE_BYTES
                else self._crc_holds_once(view, segment, offset, end, crc)
            )
        ):
            return view[start:end]
        raise _corrupt(segment, offset, length)

    def _crc_holds_once(
        self, view: memoryview, segment: int, offset: int, end: int, crc: int
    ) -> bool:
        """Whether the CRC of the long record at `offset` in a segment's map holds: checked
        by an earlier read through this map, or now (see the design note)."""
        checked = self._checked.get(segment)
        if checked is not None and offset in checked:
            return True
        if (
            _CRC32(view[offset + HEADER_BYTES : end], _CRC32(view[offset : offset + CRC_COVERS]))
            != crc
        ):
            return False
        if checked is not None:
            checked.add(offset)
        return True

    def _read_value_slow(
        self, segment: int, offset: int, length: int, seq: int, key: bytes
    ) -> bytes:
        rec = self.read(segment, offset, length, seq, key)
        if rec.kind is not Kind.PUT:
            raise _corrupt(segment, offset, length)
        return rec.value

    def _read_unmapped(self, segment: int, offset: int, length: int) -> bytes:
        """Bytes past a segment's map: from the pending records, or the file (re)mapped."""
        with self._lock:
            if segment == self._current and offset >= self._written_tail:
                at = offset - self._written_tail
                return bytes(self._pending[at : at + length])  # short if past the end
            fd = self._fds.get(segment)
            if fd is None:
                raise LogCorruptError(f"segment {segment} does not exist")
            try:
                size = os.fstat(fd).st_size
                mapped = self._maps.get(segment)
                # The current segment grows: map it again once it has grown by _REMAP_BYTES,
                # and pread what lies past the map in between.
                if offset + length > size:  # never bytes from past a segment's end
                    raise _corrupt(segment, offset, length)
                if mapped is not None and offset + length <= len(mapped):
                    return mapped[offset : offset + length]
                # A sealed segment is mapped once, whole (it was still growing if its map is
                # short); the current one once it has grown by _REMAP_BYTES past its map.
                if mapped is None or size - len(mapped) >= _REMAP_BYTES or segment != self._current:
                    self._unmap(segment)
                    mapped = self._maps[segment] = mmap.mmap(fd, size, prot=mmap.PROT_READ)
                    self._views[segment] = memoryview(mapped)
                    self._checked[segment] = set()
                    return mapped[offset : offset + length]
                return os.pread(fd, length, offset)
            except OSError as exc:
                path = self._path(segment)
                raise translate_os_error(exc, StoreStorageError, f"read {path}") from exc

    def _unmap(self, segment: int) -> None:
        self._checked.pop(segment, None)
        view = self._views.pop(segment, None)
        if view is not None:
            view.release()
        mapped = self._maps.pop(segment, None)
        if mapped is not None:
            # A value view (read_value_view) still being sent keeps the map: it is then
            # unmapped when the last view goes, not here.
            with contextlib.suppress(BufferError):
                mapped.close()

    def read(self, segment: int, offset: int, length: int, seq: int, key: bytes) -> Record:
        """Read and verify the record of `key` with sequence number `seq` at a position.

        Raises LogCorruptError (no such record there), StoreStorageError.
        """
        if segment not in self._fds:
            raise LogCorruptError(f"segment {segment} does not exist")
        if length < HEADER_BYTES or length > MAX_RECORD_BYTES or offset < 0:
            raise _corrupt(segment, offset, length)
        buf: bytes | memoryview | None = None
        # Mapped already: a slice, no syscall. Under `_lock`, since a reader without the
        # engine's lock (compaction) could otherwise find the view released by a remap
        # in between; the slice itself outlives that (it keeps the map, see `_unmap`).
        with self._lock:
            view = self._views.get(segment)
            if view is not None and offset + length <= len(view):
                buf = view[offset : offset + length]
        if buf is None:
            buf = self._read_unmapped(segment, offset, length)
        parsed = parse_record(buf, 0, len(buf))
        if (
            parsed is None
            or HEADER_BYTES + parsed[3] + parsed[4] != length
            or parsed[2] != seq
            or buf[HEADER_BYTES : HEADER_BYTES + parsed[3]] != key
        ):
            raise _corrupt(segment, offset, length)
        kind, flags, _, key_len, _ = parsed
        return Record(
            kind=kind,
            flags=flags,
            seq=seq,
            key=bytes(buf[HEADER_BYTES : HEADER_BYTES + key_len]),
            value=bytes(buf[HEADER_BYTES + key_len :]),
            segment=segment,
            offset=offset,
            length=length,
        )

    def seq_at(self, segment: int, offset: int) -> int | None:
        """The sequence number of the intact record at a position, or None if there is none.

        Raises StoreStorageError.
        """
        fd = self._fds.get(segment)
        if fd is None:
            return None
        with os_errors(StoreStorageError, f"read {self._path(segment)}"):
            head = os.pread(fd, HEADER_BYTES, offset)
            if len(head) < HEADER_BYTES:
                return None
            length = HEADER_BYTES + sum(HEADER.unpack(head)[4:6])
            if length > MAX_RECORD_BYTES or offset + length > os.fstat(fd).st_size:
                return None
            buf = os.pread(fd, length, offset)
        parsed = parse_record(buf, 0, len(buf))
        return None if parsed is None else parsed[2]

    def scan(
        self, start: Position, apply: Callable[[Record], None], *, after_seq: int = 0
    ) -> ScanReport:
        """Replay committed records from `start` in log order into `apply`.

        Every record must carry a sequence number above `after_seq` and above the one
        before it. Damaged records are skipped and reported (a batch touching one is dropped
        whole) where the log says where the next record starts; the rest of a sealed
        segment that it does not is reported, and a torn or damaged tail of the last
        segment is cut after the last good record (records.py explains why). Call before
        `start()`. Raises StoreStorageError.
        """
        report = ScanReport(last_seq=after_seq)
        ids = [sid for sid in self.segments() if sid >= start.segment]
        for sid in ids:
            last = sid == ids[-1]
            size = self.segment_size(sid)
            pos = start.offset if sid == start.segment else 0
            if size == 0 or pos >= size:
                continue
            with os_errors(StoreStorageError, f"map {self._path(sid)}"):
                buf = mmap.mmap(self._fds[sid], size, prot=mmap.PROT_READ)
            try:
                cut = scan_segment(sid, buf, pos, size, last, apply, report)
            finally:
                buf.close()
            if cut is not None:
                report.truncated = Damage(segment=sid, offset=cut, length=size - cut)
                log.warning(
                    "cutting torn log tail segment=%d offset=%d bytes=%d", sid, cut, size - cut
                )
                with os_errors(StoreStorageError, f"truncate {self._path(sid)}"):
                    os.ftruncate(self._fds[sid], cut)
                    os.fsync(self._fds[sid])
        self._tail = self._written_tail = self.segment_size(self._current)
        return report

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the fsync thread, fsync the last segment and close every file."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        try:
            self.sync(self.live_seq)
            with os_errors(StoreStorageError, f"fsync {self._path(self._current)}"):
                os.fsync(self._fds[self._current])
        finally:
            for segment in list(self._maps):
                self._unmap(segment)
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _corrupt(segment: int, offset: int, length: int) -> LogCorruptError:
    return LogCorruptError(
        f"record at segment {segment} offset {offset} length {length} is corrupt"
    )
