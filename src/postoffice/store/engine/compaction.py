"""Online compaction of a Store: live records rewritten into new segments, old ones deleted.

Blocking library layer; the compaction half of `engine.Store`, which mixes it in.
"""

# Design
# ------
# Compaction runs beside gets and writes (one at a time, `_compacting`), holding the Store's
# lock (`_lock`, see engine.py) only in steps:
#   begin   roll the log; every segment before the new one (the boundary) is to be rewritten,
#           and every write from now on lands at or after the boundary;
#   pick    take the next few index entries that still point before the boundary;
#   read    read their records without the lock: sealed segments never change, only this
#           compaction removes them, and close() waits for it (it sets `_closing` first, which
#           makes the compaction stop at its next step);
#   commit  under the lock, copy each record to the log's tail and re-point its key, but only
#           if the key still points where the record was read: a key written or deleted
#           meanwhile already has a newer record, and a copy after it would bring the old value
#           back on replay. So the log's order stays the truth: a key's last record is its state;
#   end     flush the index (LMDB then points past the old segments, and the copies are on disk),
#           then delete the old segments oldest first, and rewrite LMDB's file without its
#           free pages if they are most of it (`Index.compact_file`).
# A crash at any point leaves either all old segments (nothing was deleted; copies are just
# later records of the same values) or a suffix of the log in which every live key has its last
# record; a tombstone is only deleted together with, or after, every older segment.

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from postoffice.store.engine.index import Index, Location
from postoffice.store.engine.logstore import LogStore
from postoffice.store.engine.records import Kind
from postoffice.store.errors import StoreStorageError

log = logging.getLogger(__name__)

# One compaction step copies at most this many records and bytes (a larger value goes alone):
# it bounds the time the lock is held and the memory the step holds.
_COMPACT_STEP_RECORDS: Final = 256
_COMPACT_STEP_BYTES: Final = 1 << 20

# The live records of one compaction step: key, where its record was read, its value.
_Copies = list[tuple[bytes, Location, bytes]]


class Compaction:
    """`compact` and its steps, over the state `Store` keeps (declared here for them)."""

    _path: Path
    _log: LogStore
    _index: Index
    _lock: threading.RLock
    _compacting: threading.Lock
    _flush_entries: int
    _counts: dict[str, int]

    def _check_open(self) -> None:
        raise NotImplementedError

    def _flush_due(self) -> None:
        raise NotImplementedError

    def _roll_back(self) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _append_locked(
        self,
        items: list[tuple[Kind, bytes, bytes, int]],
        counter: str | None,
        *,
        defer: bool = False,
    ) -> int:
        raise NotImplementedError

    def compact(self, *, on_step: Callable[[Sequence[bytes]], None] | None = None) -> int:
        """Rewrite the live records into new segments, delete the old ones; return bytes freed.

        Reads and writes go on meanwhile (see the design note). One compaction runs at a
        time: a second call waits for the running one, then compacts what is left. `on_step`,
        if given, is called on the compacting thread without the lock, with each step's keys
        after their records were read and before they are re-pointed (progress, tests); it
        must not call `compact` or `close`. A crash at any point loses nothing. Raises
        LogCorruptError if a live record is damaged (nothing is deleted; the store stays
        usable), StoreClosedError (also when `close` is called meanwhile), StoreStorageError.
        """
        with self._compacting:
            boundary = self._compact_begin()
            copied = 0
            lo: bytes | None = b""
            while lo is not None:
                step, lo = self._compact_pick(boundary, lo)
                if not step:
                    continue
                copies = [
                    (key, loc, self._log.read(loc[0], loc[1], loc[2], loc[3], key).value)
                    for key, loc in step
                ]
                if on_step is not None:
                    on_step([key for key, _, _ in copies])
                copied += self._compact_commit(copies)
            freed = self._compact_end(boundary)
        log.info("compacted path=%s copied=%d freed_bytes=%d", self._path, copied, freed)
        return freed

    def _compact_begin(self) -> int:
        """Seal the current segment; return the boundary: segments before it get rewritten."""
        with self._lock:
            self._check_open()
            try:
                self._log.roll()
            except StoreStorageError:
                self._roll_back()
                raise
            return self._log.tail().segment

    def _compact_pick(
        self, boundary: int, lo: bytes
    ) -> tuple[list[tuple[bytes, Location]], bytes | None]:
        """The next entries from key `lo` on still pointing before `boundary`, and where to go on.

        Keys written since the compaction began point at or after the boundary and are skipped.
        """
        with self._lock:
            self._check_open()
            found = self._index.scan(lo, None, b"", _COMPACT_STEP_RECORDS)
        step: list[tuple[bytes, Location]] = []
        size = 0
        for key, loc in found:
            segment, _, length, _ = loc
            if segment >= boundary:
                continue
            if step and size + length > _COMPACT_STEP_BYTES:
                return step, key
            step.append((key, loc))
            size += length
        if len(found) < _COMPACT_STEP_RECORDS:
            return step, None
        return step, found[-1][0] + b"\x00"  # the smallest key after the last one seen

    def _compact_commit(self, copies: _Copies) -> int:
        """Append and re-point the copies whose key is unchanged since the read; return how many."""
        with self._lock:
            self._check_open()
            # A key re-pointed since the read holds a newer record (or a tombstone) already.
            live = [(key, value) for key, loc, value in copies if self._index.get(key) == loc]
            if not live:
                return 0
            self._append_locked([(Kind.PUT, key, value, 0) for key, value in live], None)
            return len(live)

    def _compact_end(self, boundary: int) -> int:
        """Flush the index past the old segments, then delete them; return the bytes freed."""
        with self._lock:
            self._check_open()
            # Before any old segment goes, LMDB must stop pointing into it and its position must
            # pass it (or a reopen would rebuild); the flush also fsyncs the copies.
            self._flush()
            freed = self._log.remove_segments_before(boundary)
            self._counts["compactions"] += 1
            # The index shed as many entries as the log shed records, but LMDB keeps its file
            # at its largest: copy it without the free pages if they are most of it.
            saved = self._index.compact_file()
            if saved:
                log.info("compacted index path=%s freed_bytes=%d", self._path, saved)
            return freed
