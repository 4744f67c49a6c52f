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
from postoffice.store.engine.records import Damage, Kind, Record
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


def recover(
    root: Path, log_store: LogStore, index: Index, reason: str | None
) -> tuple[int, RecoveryReport]:
    """Bring `index` up to the end of the log; return the live key count and the report.

    The log after the index's last position is replayed; an index that is missing
    (`reason` says why when it was damaged) or ahead of the log is rebuilt from the whole
    log. Raises StoreStorageError.
    """
    meta = index.meta()
    segments = log_store.segments()
    if meta is not None and (
        meta.position.segment not in segments
        or meta.position.offset > log_store.segment_size(meta.position.segment)
    ):
        reason = "index is ahead of the log"
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

    report = log_store.scan(meta.position, apply)
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
    )
    if reason is not None:
        log.warning("index rebuilt from log path=%s reason=%r", root, reason)
    return live, recovery
