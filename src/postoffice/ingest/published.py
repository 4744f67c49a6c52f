"""The records of published ingest payloads: published_dir/published.log.

I/O layer, blocking: the ChunkStore owns one PublishedRecords and calls it from worker
threads.
"""

# Design
# ------
# The records are lines of one append-only log, published.log: a JSON object per publish
# ({"file_id": ..., "name": ..., "size": ..., "digest": ..., ...}) and {"forget": id} when
# a record expires. A line is durable once the log is fsynced, and that fsync is a group
# commit: publishes at the same moment share it, and no file is created per publish (a
# file and a directory entry per small file cost an inode allocation and an fsync each).
# The line is the commit point of a publish. `load()` replays the log: the last line for
# an id wins, a forget drops it; a torn or unreadable line (a crash mid-append: never
# acknowledged) is dropped with a warning and the log cut back to the lines before it.
# When dead lines outnumber live ones (and pass COMPACT_MIN_LINES) load() rewrites the
# log atomically with the live records only. Per-id <file id>.json records of earlier
# versions are read as well, and *.tmp leftovers deleted. load() does not touch the
# index, which the owner sets with `reset()`.
#
# Locking: the in-memory index (`get`, `add`, `discard`, `reset`, `oldest_first`, `in`,
# `len`) is guarded by the owning ChunkStore's `_lock`, so "is this id published?" and
# "create its payload" stay one atomic step there; the file methods (`load`, `write`,
# `delete`) run outside that lock, and `_append_lock` orders the appends to the log.

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

from postoffice.core.errors import translate_os_error
from postoffice.ingest.durable import GroupSync, atomic_write, discard, os_errors
from postoffice.ingest.errors import BadNameError, IngestStorageError
from postoffice.ingest.messages import DIGEST_BYTES, FILE_ID_BYTES, FileId, check_name, file_id_hex

__all__ = ["PublishedInfo", "PublishedRecords", "Recorder"]

log = logging.getLogger(__name__)

LOG_NAME: Final = "published.log"
#: load() compacts the log once it holds this many lines and more dead than live ones.
COMPACT_MIN_LINES: Final = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedInfo:
    """The record of a published payload: `size` and `digest` (XXH3-128) describe the
    decompressed file, `payload_digest` (XXH3-128) the compressed payload it came from."""

    file_id: FileId
    name: str
    size: int
    digest: bytes
    payload_digest: bytes
    published_at: float
    replaced: bool


Recorder = Callable[[PublishedInfo], "PublishedInfo | None"]
"""A publish's commit point: records the publish, and returns the PublishedInfo as it
stands (a cluster node knows better than the rename whether the name was taken), or None
for the one given."""


@final
class PublishedRecords:
    """The published records in `folder`, and their index in memory (see the design note)."""

    def __init__(self, folder: Path, *, fsync: bool, syncer: GroupSync | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOG_NAME
        self.fsync = fsync
        # The log's fsyncs are shared by the records written at the same time.
        self._syncer = syncer if syncer is not None else GroupSync()
        self._records: dict[bytes, PublishedInfo] = {}
        self._append_lock = threading.Lock()
        self._fd: int | None = None  # the log, open for appending once load() ran
        self._synced_dir = False  # the log's directory entry is durable

    def __repr__(self) -> str:
        return f"<PublishedRecords {self.folder} records={len(self._records)}>"

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, file_id: bytes) -> bool:
        return file_id in self._records

    # -- the index (the owner holds its lock) ----------------------------------------------

    def reset(self, records: dict[bytes, PublishedInfo]) -> None:
        """Make `records` (from `load`) the index."""
        self._records = records

    def get(self, file_id: FileId) -> PublishedInfo | None:
        """The record of `file_id`, or None."""
        return self._records.get(file_id)

    def add(self, info: PublishedInfo) -> None:
        """Index a record that `write` made durable."""
        self._records[info.file_id] = info

    def discard(self, file_id: FileId) -> None:
        """Drop `file_id` from the index, if there."""
        self._records.pop(file_id, None)

    def oldest_first(self) -> list[PublishedInfo]:
        """Every indexed record, oldest first."""
        return sorted(self._records.values(), key=lambda r: r.published_at)

    # -- the files -------------------------------------------------------------------------

    def load(self) -> dict[bytes, PublishedInfo]:
        """Read every record (the log, and per-id files of earlier versions), repairing a
        torn log tail and compacting; see the design note. Raises IngestStorageError when
        the folder cannot be read; a bad record is logged and skipped."""
        records: dict[bytes, PublishedInfo] = {}
        with os_errors("list", self.folder):
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        for entry in entries:
            path = Path(entry.path)
            if entry.name.endswith(".tmp"):
                discard(path)
            elif entry.name.endswith(".json"):
                try:
                    record = _parse_record(path.read_bytes())
                except (OSError, ValueError, KeyError, TypeError, BadNameError) as exc:
                    log.warning("published record skipped path=%s reason=%r", path, exc)
                    continue
                if f"{file_id_hex(record.file_id)}.json" != entry.name:
                    log.warning("published record skipped path=%s reason=file id mismatch", path)
                    continue
                records[record.file_id] = record
        lines, good_bytes = self._replay(records)
        with os_errors("open", self.path):
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if lines >= COMPACT_MIN_LINES and lines > 2 * len(records):
                atomic_write(self.path, _log_bytes(records), fsync=self.fsync)
                log.info("published log compacted lines=%d records=%d", lines, len(records))
            elif good_bytes is not None:
                os.truncate(self.path, good_bytes)  # cut a torn tail: the next line is whole
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        return records

    def _replay(self, records: dict[bytes, PublishedInfo]) -> tuple[int, int | None]:
        """Apply the log's lines to `records`; return the line count and, if the tail is
        torn or bad, the length of the good lines before it."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return 0, None
        except OSError as exc:
            raise translate_os_error(exc, IngestStorageError, f"read {self.path}") from exc
        lines = 0
        at = 0
        while at < len(raw):
            end = raw.find(b"\n", at)
            if end < 0:
                log.warning("published log: torn last line dropped path=%s", self.path)
                return lines, at
            line = raw[at:end]
            try:
                doc = json.loads(line)
                if isinstance(doc, dict) and set(doc) == {"forget"}:
                    records.pop(bytes.fromhex(doc["forget"]), None)
                else:
                    record = _parse_record(line)
                    records[record.file_id] = record
            except (ValueError, KeyError, TypeError, BadNameError) as exc:
                log.warning("published log: bad line dropped path=%s reason=%r", self.path, exc)
                return lines, at
            lines += 1
            at = end + 1
        return lines, None

    def write(self, info: PublishedInfo) -> None:
        """Append the record and make it durable. Raises IngestStorageError."""
        self._append(_format_record(info) + b"\n")

    def write_many(self, infos: Sequence[PublishedInfo]) -> None:
        """Append the records in one write and make them durable with one shared fsync.

        All or none are durable when it returns: an error (IngestStorageError) leaves
        them unacknowledged, and load() drops a torn last line.
        """
        if infos:
            self._append(b"".join(_format_record(info) + b"\n" for info in infos))

    def delete(self, file_id: FileId) -> None:
        """Forget a record durably (and its per-id file of an earlier version, if any).
        Raises IngestStorageError."""
        old = self.folder / f"{file_id_hex(file_id)}.json"
        with os_errors("remove", old):
            old.unlink(missing_ok=True)
        self._append(json.dumps({"forget": file_id_hex(file_id)}).encode() + b"\n")

    def _append(self, line: bytes) -> None:
        with self._append_lock, os_errors("append to", self.path):
            if self._fd is None:
                raise IngestStorageError(f"{self.path} is not open: load() first")
            written = os.write(self._fd, line)  # O_APPEND: one write, whole lines
            if written != len(line):
                raise IngestStorageError(f"short append to {self.path}: {written} bytes")
        if self.fsync:
            self._syncer.sync(self.path)  # the file and, for a new log, its entry
            if not self._synced_dir:
                self._syncer.sync(self.folder)
                self._synced_dir = True

    def close(self) -> None:
        """Close the log."""
        with self._append_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _log_bytes(records: dict[bytes, PublishedInfo]) -> bytes:
    return b"".join(_format_record(r) + b"\n" for r in records.values())


def _format_record(info: PublishedInfo) -> bytes:
    record = {  # every field, in declaration order
        "file_id": info.file_id.hex(),
        "name": info.name,
        "size": info.size,
        "digest": info.digest.hex(),
        "payload_digest": info.payload_digest.hex(),
        "published_at": info.published_at,
        "replaced": info.replaced,
    }
    return json.dumps(record, ensure_ascii=False).encode()


def _parse_record(raw: bytes) -> PublishedInfo:
    """A PublishedInfo from its JSON; raises ValueError, KeyError, TypeError, BadNameError."""
    record = json.loads(raw)
    file_id = bytes.fromhex(record["file_id"])
    digest = bytes.fromhex(record["digest"])
    payload_digest = bytes.fromhex(record["payload_digest"])
    if len(file_id) != FILE_ID_BYTES or {len(digest), len(payload_digest)} != {DIGEST_BYTES}:
        raise ValueError("file id or digest of the wrong length")
    size, published_at, replaced = record["size"], record["published_at"], record["replaced"]
    if not isinstance(size, int) or not isinstance(published_at, int | float):
        raise TypeError("size or published_at is not a number")
    return PublishedInfo(
        file_id=FileId(file_id),
        name=check_name(record["name"]),
        size=size,
        digest=digest,
        payload_digest=payload_digest,
        published_at=float(published_at),
        replaced=bool(replaced),
    )
