"""Opening a store directory: its lock file, and recovery of the index from the log.

Blocking library layer, used by `Store.open` before the Store exists.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postoffice.core.errors import os_errors, translate_os_error
from postoffice.store.engine.index import Index, Meta
from postoffice.store.engine.logstore import LogStore
from postoffice.store.engine.records import MAX_SEQ, Damage, Kind, Record
from postoffice.store.errors import StoreLockedError, StoreStorageError

log = logging.getLogger(__name__)

LOCK_NAME: Final = "LOCK"


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryReport:
    """What `Store.open` found and repaired."""

    index_rebuilt: bool = False
    reason: str | None = None
    replayed_records: int = 0
    truncated: Damage | None = None
    corrupt: tuple[Damage, ...] = ()
    dropped_batches: int = 0
    #: Keys the index had whose record the log no longer holds (a segment deleted, emptied
    #: or cut short): each is now served as the log has it, by an older record or absent.
    lost_keys: int = 0
    #: The segments those records were in, in order.
    lost_segments: tuple[int, ...] = ()


def lock_dir(path: Path) -> int:
    """Take the directory's exclusive lock (a flock on its LOCK file); return its fd.

    The lock is what keeps two processes (a store server, a command server serving the
    same directory in-process) from ever writing one store at once; the OS drops it when
    the process dies, so kill -9 never leaves a stale lock. Raises StoreLockedError when
    another process (or another open Store) holds it, StoreStorageError.
    """
    lock_path = path / LOCK_NAME
    with os_errors(StoreStorageError, f"open {lock_path}"):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StoreLockedError(f"store {path} is already open in another process") from exc
    except OSError as exc:
        os.close(fd)
        raise translate_os_error(exc, StoreStorageError, f"lock {lock_path}") from exc
    return fd


def _check_meta(log_store: LogStore, meta: Meta) -> str | None:
    """Why the index's meta record cannot be trusted against the log, or None.

    Every number in it comes from disk: the replay starts at its position and above its
    sequence number, so a wrong one would skip records or take good ones for damage.
    """
    pos = meta.position
    if not 0 <= meta.last_seq < MAX_SEQ:
        return f"index sequence number {meta.last_seq} is out of range"
    if pos.segment not in log_store.segments() or pos.offset > log_store.segment_size(pos.segment):
        return "index is ahead of the log"
    # The record at the position (or the next segment's first) comes after the meta's
    # last one, and the first record of the position's segment, if before it, does not.
    nxt = log_store.seq_at(pos.segment, pos.offset)
    if nxt is None and pos.offset == log_store.segment_size(pos.segment):
        later = [sid for sid in log_store.segments() if sid > pos.segment]
        nxt = log_store.seq_at(later[0], 0) if later else None
    first = log_store.seq_at(pos.segment, 0) if pos.offset > 0 else None
    if (nxt is not None and nxt <= meta.last_seq) or (first is not None and first > meta.last_seq):
        return f"index sequence number {meta.last_seq} does not match the log"
    return None


def _count_lost(log_store: LogStore, index: Index) -> dict[int, int]:
    """Per segment, how many of the index's keys point at a record the log does not hold."""
    sizes = {sid: log_store.segment_size(sid) for sid in log_store.segments()}
    lost: dict[int, int] = {}
    for _, (segment, offset, length, _) in index.entries():
        if offset + length > sizes.get(segment, -1):
            lost[segment] = lost.get(segment, 0) + 1
    return lost


def recover(
    root: Path, log_store: LogStore, index: Index, reason: str | None
) -> tuple[int, RecoveryReport]:
    """Bring `index` up to the end of the log; return the live key count and the report.

    The log after the index's last position is replayed; an index that is missing
    (`reason` says why when it was damaged), ahead of the log or out of step with it is
    rebuilt from the whole log. Keys whose records the log lost are counted, logged at
    ERROR and reported (`lost_keys`). Raises StoreStorageError.
    """
    meta = index.meta()
    lost: dict[int, int] = {}
    if meta is not None:
        doubt = _check_meta(log_store, meta)
        if doubt is not None:
            lost = _count_lost(log_store, index)
        else:
            # Compaction removes the oldest segments only, so a gap is a segment lost;
            # once the index points into none (a rebuild has run), it is history.
            ids = log_store.segments()
            if ids != list(range(ids[0], ids[-1] + 1)):
                lost = _count_lost(log_store, index)
                if lost:
                    doubt = "a log segment is missing"
        if doubt is not None:
            reason = doubt
            meta = None
    if meta is None and reason is None and log_store.total_bytes() > 0:
        reason = "index missing"
    if meta is None:
        index.reset()
        meta = Meta(position=log_store.first_position(), last_seq=0, live_keys=0)
    live = meta.live_keys

    def apply(rec: Record) -> None:
        nonlocal live
        old = index.get(rec.key)
        if rec.kind is Kind.PUT:
            live += old is None
            index.set(
                rec.key,
                (rec.segment, rec.offset, rec.length, rec.seq),
            )
        elif old is not None:
            live -= 1
            index.set(rec.key, None)

    report = log_store.scan(meta.position, apply, after_seq=meta.last_seq)
    last_seq = max(meta.last_seq, report.last_seq)
    log_store.start(last_seq)
    index.flush(Meta(position=log_store.tail(), last_seq=last_seq, live_keys=live))
    recovery = RecoveryReport(
        index_rebuilt=reason is not None,
        reason=reason,
        replayed_records=report.records,
        truncated=report.truncated,
        corrupt=tuple(report.corrupt),
        dropped_batches=report.dropped_batches,
        lost_keys=sum(lost.values()),
        lost_segments=tuple(sorted(lost)),
    )
    if reason is not None:
        log.warning("index rebuilt from log path=%s reason=%r", root, reason)
    for segment, count in sorted(lost.items()):
        log.error("log segment lost records path=%s segment=%d keys_lost=%d", root, segment, count)
    return live, recovery
