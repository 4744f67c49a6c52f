"""The records of published ingest payloads: published_dir/<file id hex>.json.

I/O layer, blocking: the ChunkStore owns one PublishedRecords and calls it from worker
threads.
"""

# Design
# ------
# A record is written atomically (unique tmp, fsync, rename, fsync the directory): it is
# the commit point of a publish. `load()` reads every record from disk, skipping (with a
# warning) one that is unreadable or whose file name is not its file id, and deleting
# *.tmp leftovers; it does not touch the index, which the owner sets with `reset()`.
#
# Locking: PublishedRecords holds no lock. The in-memory index (`get`, `add`, `discard`,
# `reset`, `oldest_first`, `in`, `len`) is guarded by the owning ChunkStore's `_lock`, so
# "is this id published?" and "create its payload" stay one atomic step there; the file
# methods (`load`, `write`, `delete`) run outside that lock.

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import final

from postoffice.ingest.durable import GroupSync, atomic_write, discard, os_errors
from postoffice.ingest.errors import BadNameError
from postoffice.ingest.protocol import DIGEST_BYTES, FILE_ID_BYTES, FileId, check_name, file_id_hex

__all__ = ["PublishedInfo", "PublishedRecords"]

log = logging.getLogger(__name__)


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


@final
class PublishedRecords:
    """The published records in `folder`, and their index in memory (see the design note)."""

    def __init__(self, folder: Path, *, fsync: bool, syncer: GroupSync | None = None) -> None:
        self.folder = Path(folder)
        self.fsync = fsync
        # Directory fsyncs are shared by the records written at the same time.
        self._syncer = syncer if syncer is not None else GroupSync()
        self._records: dict[bytes, PublishedInfo] = {}

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
        """Read every record in the folder, deleting *.tmp leftovers. Raises IngestStorageError
        when the folder cannot be listed; a bad record is logged and skipped."""
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
        return records

    def write(self, info: PublishedInfo) -> None:
        """Write the record durably. Raises IngestStorageError."""
        atomic_write(
            self.folder / f"{file_id_hex(info.file_id)}.json",
            _format_record(info),
            fsync=self.fsync,
            sync_dir=False,
        )
        if self.fsync:
            self._syncer.sync(self.folder)

    def delete(self, file_id: FileId) -> None:
        """Delete the record's file, if any. Raises IngestStorageError."""
        path = self.folder / f"{file_id_hex(file_id)}.json"
        with os_errors("remove", path):
            path.unlink(missing_ok=True)
        if self.fsync:
            self._syncer.sync(self.folder)


def _format_record(info: PublishedInfo) -> bytes:
    record = {
        **asdict(info),
        "file_id": info.file_id.hex(),
        "digest": info.digest.hex(),
        "payload_digest": info.payload_digest.hex(),
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
