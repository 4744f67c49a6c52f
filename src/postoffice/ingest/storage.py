"""Durable chunk storage of the ingest service: patch files, ids.list and meta.json.

I/O layer, blocking: the server calls it from worker threads. The records of published
payloads are published.py's; ChunkStore holds them and answers for them.
"""

# Design
# ------
# Layout (docs/protocols/ingest.md): patches_dir/<file id hex>/ holds meta.json (name,
# total, size, created: written once, by the first chunk), patch_<i>.bin (chunk i as
# received) and ids.list ("<index> <digest hex>\n" per committed chunk, the chunk's
# XXH3-128 digest); published_dir/<file id hex>.json records a published payload.
# meta.json and records are written atomically (unique tmp, fsync, rename, fsync the
# directory). A patch is written in place and fsynced, then its ids.list line appended:
# the line is the commit, so a patch torn by a crash has no line and is dropped, and
# needs no tmp name. The chunk is acknowledged once ids.list and the directory are
# fsynced; those two fsyncs are group commits (durable.GroupSync): chunks of one payload
# committing at once share them, so 16 chunks in flight cost about 2 + 2 fsyncs, not
# 2 x 16. "Last update" is ids.list's mtime, set to the chunk's `now` on each append, so
# it survives restarts without rewriting meta.json. (Lines of the first version carried
# a 64-hex SHA-256: open() drops them as unparsable, and their chunks are sent again.)
#
# open() rebuilds the in-memory index, the truth from then on (the disk is not rescanned),
# and repairs what a crash leaves: a patch without an ids.list line (crash between rename
# and append; never acknowledged) is deleted and the client re-sends it; an ids.list line
# that is torn, unparsable, out of range, repeated or without its patch is dropped with a
# warning and ids.list rewritten, so the next append starts on a clean line; *.tmp files
# are deleted, and so is a directory holding nothing else; a directory whose meta.json is
# missing or unreadable is logged, listed in `unreadable` and left for an operator
# (store_chunk refuses its id, remove() deletes it); the patches of a payload that has a
# published record are deleted (crash between the record and the removal).
#
# Locking: `_lock` guards the dicts and the fields snapshots read, and is held across I/O
# only to remove or publish an id with no payload in memory (so no first chunk can create
# one meanwhile): snapshots do not wait for a disk. `_changed` (a Condition on `_lock`)
# is notified whenever a chunk commits or a payload goes, for the streaming assembler.
# Each payload's `op_lock` is held to check and reserve an index, to append its ids.list
# line, and for a whole remove/mark_published; patches (and payloads) are written in
# parallel. Order: op_lock, then _lock. A payload removed while
# a thread waited for its op_lock is flagged `removed`; the waiter looks again.
# One process owns a patches_dir.

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, final

from postoffice.ingest.durable import GroupSync, atomic_write, discard, os_errors, write_file
from postoffice.ingest.errors import (
    BadNameError,
    ConflictError,
    IngestProtocolError,
    IngestStorageError,
    OutOfRangeError,
    UnknownFileError,
)
from postoffice.ingest.messages import (
    DIGEST_BYTES,
    FILE_ID_BYTES,
    MAX_CHUNKS,
    FileId,
    check_name,
    file_id_hex,
    missing_ranges,
)
from postoffice.ingest.published import PublishedInfo, PublishedRecords

log = logging.getLogger(__name__)

META_JSON: Final = "meta.json"
IDS_LIST: Final = "ids.list"

_HEX_ID: Final = re.compile(r"[0-9a-f]{32}")
_PATCH: Final = re.compile(r"patch_(0|[1-9][0-9]{0,9})\.bin")
_ID_LINE: Final = re.compile(rb"(0|[1-9][0-9]{0,9}) ([0-9a-f]{32})\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadInfo:
    """A snapshot of one payload being uploaded; `created`/`updated` are wall-clock seconds."""

    file_id: FileId
    name: str
    total: int
    size: int
    committed: frozenset[int]
    created: float
    updated: float

    @property
    def missing(self) -> tuple[tuple[int, int], ...]:
        """Inclusive (first, last) ranges of the indexes not yet committed, in order."""
        return missing_ranges(self.committed, self.total)

    @property
    def complete(self) -> bool:
        """Whether every index 0..total-1 is committed."""
        return len(self.committed) == self.total


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreResult:
    """What store_chunk did.

    `complete` is True for exactly one call per payload: the one that committed its last
    missing chunk, which is the call that should start the assembly. `published` means
    the payload was published already and nothing was stored (a late duplicate).
    """

    committed: int
    total: int
    duplicate: bool
    complete: bool
    published: bool = False


@dataclass(slots=True, eq=False)
class _Payload:
    """The mutable state of one payload.

    Fields that snapshots read change only under the store's `_lock`; `ids_bytes` and
    `ids_dirty` belong to the holder of `op_lock`.
    """

    file_id: FileId
    path: Path
    name: str = ""
    total: int = 0
    size: int = 0
    created: float = 0.0
    updated: float = 0.0
    chunks: dict[int, bytes] = field(default_factory=dict)  # index -> digest of the chunk
    received: int = 0  # bytes in committed patches
    reserved: int = 0  # bytes of patches being written right now
    writing: dict[int, tuple[bytes, threading.Event]] = field(default_factory=dict)
    ids_bytes: int = 0  # length of ids.list's valid content
    ids_dirty: bool = False  # a failed append may have left bytes past ids_bytes
    ids_broken: str = ""  # an ids.list fsync failed: why; no more commits until a restart
    meta_written: bool = False
    removed: bool = False
    op_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def hex_id(self) -> str:
        return file_id_hex(self.file_id)

    def snapshot(self) -> PayloadInfo:
        return PayloadInfo(
            file_id=self.file_id,
            name=self.name,
            total=self.total,
            size=self.size,
            committed=frozenset(self.chunks),
            created=self.created,
            updated=self.updated,
        )


class _Unreadable(Exception):
    """A payload directory open() cannot use; the message says why."""


@final
class ChunkStore:
    """The patches of payloads being uploaded and the records of published ones.

    The constructor only allocates; call `open()` once before anything else. Every
    method is blocking and thread-safe.
    """

    def __init__(self, patches_dir: Path, published_dir: Path, *, fsync: bool = True) -> None:
        self.patches_dir = Path(patches_dir)
        self.published_dir = Path(published_dir)
        self.fsync = fsync
        self.syncer = GroupSync()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._payloads: dict[bytes, _Payload] = {}
        self._published = PublishedRecords(self.published_dir, fsync=fsync, syncer=self.syncer)
        self._unreadable: dict[bytes, Path] = {}

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<ChunkStore {self.patches_dir} payloads={len(self._payloads)}"
                f" published={len(self._published)} unreadable={len(self._unreadable)}>"
            )

    @property
    def unreadable(self) -> tuple[Path, ...]:
        """Payload directories open() found unusable and left alone."""
        with self._lock:
            return tuple(self._unreadable.values())

    # -- start-up ----------------------------------------------------------------------

    def open(self) -> list[PayloadInfo]:
        """Create the directories, rebuild the index from disk and repair crash leftovers.

        Returns the payloads recovered, complete ones included (the caller assembles
        those). See the design note for what is repaired. Raises IngestStorageError when
        a directory cannot be created or listed; a single bad payload is logged and skipped.
        """
        for folder in (self.patches_dir, self.published_dir):
            with os_errors("create", folder):
                folder.mkdir(parents=True, exist_ok=True)
        published = self._published.load()
        payloads: dict[bytes, _Payload] = {}
        unreadable: dict[bytes, Path] = {}
        with os_errors("list", self.patches_dir):
            entries = sorted(os.scandir(self.patches_dir), key=lambda e: e.name)
        for entry in entries:
            path = Path(entry.path)
            if entry.name.endswith(".tmp"):
                discard(path)
                continue
            if not entry.is_dir(follow_symlinks=False) or not _HEX_ID.fullmatch(entry.name):
                log.warning("not a payload directory, left alone path=%s", path)
                continue
            file_id = FileId(bytes.fromhex(entry.name))
            if file_id in published:
                log.info("removing patches of a published payload file_id=%s", entry.name)
                discard(path)
                continue
            try:
                payload = self._recover(file_id, path)
            except (_Unreadable, OSError, IngestStorageError) as exc:
                log.warning("payload skipped file_id=%s path=%s reason=%r", entry.name, path, exc)
                unreadable[file_id] = path
                continue
            if payload is not None:
                payloads[file_id] = payload
        self._sync_dir(self.patches_dir)
        with self._lock:
            self._payloads = payloads
            self._published.reset(published)
            self._unreadable = unreadable
            recovered = [p.snapshot() for p in payloads.values()]
        log.info(
            "chunk store opened payloads=%d published=%d unreadable=%d",
            len(payloads),
            len(published),
            len(unreadable),
        )
        return recovered

    def _recover(self, file_id: FileId, path: Path) -> _Payload | None:
        names = []
        for name in os.listdir(path):
            if name.endswith(".tmp"):
                os.unlink(path / name)
            else:
                names.append(name)
        if not names:
            log.info("removing an empty payload directory path=%s", path)
            os.rmdir(path)
            return None
        if META_JSON not in names:
            raise _Unreadable("meta.json is missing")
        payload = _Payload(file_id, path)
        _read_meta(payload, path / META_JSON)
        patches = {int(m[1]) for n in names if (m := _PATCH.fullmatch(n))}
        ids_path = path / IDS_LIST
        kept: list[bytes] = []
        if IDS_LIST in names:
            payload.updated = mtime = os.stat(ids_path).st_mtime
            with open(ids_path, "rb") as lines:
                dropped = [line for line in lines if not _accept_line(payload, line, patches, kept)]
            if dropped:
                atomic_write(ids_path, b"".join(kept), fsync=self.fsync)
                os.utime(ids_path, (mtime, mtime))
        for index in sorted(patches - payload.chunks.keys()):
            log.info("uncommitted patch removed file_id=%s index=%d", payload.hex_id, index)
            os.unlink(path / f"patch_{index}.bin")
        payload.ids_bytes = sum(len(line) for line in kept)
        payload.meta_written = True
        return payload

    # -- chunks ------------------------------------------------------------------------

    def store_chunk(
        self,
        *,
        file_id: FileId,
        index: int,
        total: int,
        size: int,
        name: str,
        digest: bytes,
        data: bytes | memoryview,
        now: float,
    ) -> StoreResult:
        """Make one chunk durable and commit it; idempotent for identical bytes.

        `digest` must be the chunk digest of `data` (verify_chunk checked it); `now` is
        wall-clock seconds. The first chunk of a payload fixes its name, total and size.
        Raises OutOfRangeError (index >= total, total of 0 or over MAX_CHUNKS),
        BadNameError, ConflictError (the index is committed with other bytes; total, size
        or name differ from the payload's; the chunks would exceed `size`),
        IngestStorageError (the disk failed; nothing is committed) and
        IngestProtocolError (a file id or digest of the wrong length).
        """
        if (len(file_id), len(digest)) != (FILE_ID_BYTES, DIGEST_BYTES):
            raise IngestProtocolError(
                f"file id of {len(file_id)} bytes and digest of {len(digest)}, expected 16 and 16"
            )
        if total < 1:
            raise OutOfRangeError(f"total {total} is below 1")
        if total > MAX_CHUNKS:
            raise OutOfRangeError(f"total {total} exceeds limit {MAX_CHUNKS}")
        if not 0 <= index < total:
            raise OutOfRangeError(f"chunk index {index} is not below total {total}")
        if size < 0:
            raise OutOfRangeError(f"payload size {size} is negative")
        check_name(name)
        while True:
            payload = self._payload_for(file_id)
            if payload is None:
                return StoreResult(
                    committed=total, total=total, duplicate=True, complete=False, published=True
                )
            with payload.op_lock:
                if payload.removed:
                    continue  # removed or published while we waited: look again
                try:
                    plan = self._reserve(payload, index, total, size, name, digest, data, now)
                finally:
                    if not payload.meta_written:
                        self._forget(payload)  # a refused first chunk leaves no placeholder
            if isinstance(plan, StoreResult):
                return plan
            if plan is not None:  # the same bytes are being written by another thread
                plan.wait()
                continue
            return self._write_and_commit(payload, index, total, digest, data, now)

    def _write_and_commit(
        self,
        payload: _Payload,
        index: int,
        total: int,
        digest: bytes,
        data: bytes | memoryview,
        now: float,
    ) -> StoreResult:
        """Write the patch outside the payload's lock, then commit it under the lock.

        Patches of one payload are written (and fsynced) in parallel; only the short
        ids.list append is serialised, and its fsync is shared. The ids.list line is the
        commit point, so a patch written without its line is not committed (open() drops
        it).
        """
        try:
            write_file(payload.path / f"patch_{index}.bin", data, fsync=self.fsync)
            with payload.op_lock:
                if payload.removed:
                    raise IngestStorageError(
                        f"upload {payload.hex_id} was removed while chunk {index} was stored"
                    )
                if payload.ids_broken:
                    raise IngestStorageError(payload.ids_broken)
                self._append_id(payload, index, digest, now)
            if self.fsync:
                try:
                    self.syncer.sync(payload.path / IDS_LIST)
                except IngestStorageError as exc:
                    with payload.op_lock:
                        payload.ids_broken = f"upload {payload.hex_id}: {exc}; restart to recover"
                    raise
                # The directory fsync makes the patch's entry durable, and with the first
                # chunk also meta.json's and ids.list's; the ACK waits for both.
                self.syncer.sync(payload.path)
        except BaseException:
            with payload.op_lock:
                self._release(payload, index, len(data))
            raise
        with payload.op_lock:
            self._release(payload, index, len(data))
            with self._lock:
                payload.chunks[index] = digest
                payload.received += len(data)
                payload.updated = now
                committed = len(payload.chunks)
                self._changed.notify_all()
        return StoreResult(
            committed=committed, total=total, duplicate=False, complete=committed == total
        )

    @staticmethod
    def _release(payload: _Payload, index: int, size: int) -> None:
        """Drop a write's reservation and wake anyone waiting on the same index."""
        pending = payload.writing.pop(index, None)
        payload.reserved -= size
        if pending is not None:
            pending[1].set()

    def _payload_for(self, file_id: FileId) -> _Payload | None:
        with self._lock:
            if file_id in self._published:
                return None
            if file_id in self._unreadable:
                raise IngestStorageError(
                    f"payload {file_id_hex(file_id)} has an unreadable directory "
                    f"{self._unreadable[file_id]}; abort the upload to start over"
                )
            payload = self._payloads.get(file_id)
            if payload is None:
                payload = _Payload(file_id, self.patches_dir / file_id_hex(file_id))
                self._payloads[file_id] = payload
            return payload

    def _reserve(
        self,
        payload: _Payload,
        index: int,
        total: int,
        size: int,
        name: str,
        digest: bytes,
        data: bytes | memoryview,
        now: float,
    ) -> StoreResult | threading.Event | None:
        """Check a chunk against the payload and reserve its index (under op_lock).

        Returns a StoreResult for a duplicate, an Event to wait on when the same bytes are
        being written by another thread, or None: the caller now owns the index.
        """
        hex_id = payload.hex_id
        received = payload.received
        if payload.meta_written:
            for field, ours, theirs in (
                ("total", payload.total, total),
                ("size", payload.size, size),
                ("name", payload.name, name),
            ):
                if ours != theirs:
                    raise ConflictError(
                        f"chunk {index} of {hex_id} has {field} {theirs!r},"
                        f" the payload has {field} {ours!r}"
                    )
            known = payload.chunks.get(index)
            if known is not None:
                if known != digest:
                    raise ConflictError(
                        f"chunk {index} of {hex_id} already committed with other bytes"
                    )
                return StoreResult(
                    committed=len(payload.chunks), total=total, duplicate=True, complete=False
                )
            pending = payload.writing.get(index)
            if pending is not None:
                if pending[0] != digest:
                    raise ConflictError(
                        f"chunk {index} of {hex_id} is being stored with other bytes"
                    )
                return pending[1]
        if received + payload.reserved + len(data) > size:
            raise ConflictError(
                f"chunk {index} of {hex_id} brings the payload to "
                f"{received + payload.reserved + len(data)} bytes, over its size {size}"
            )
        if not payload.meta_written:
            self._create(payload, total=total, size=size, name=name, now=now)
        payload.writing[index] = (digest, threading.Event())
        payload.reserved += len(data)
        return None

    def _create(self, payload: _Payload, *, total: int, size: int, name: str, now: float) -> None:
        """Write a new payload's directory and meta.json."""
        meta = {
            "file_id": payload.hex_id,
            "name": name,
            "total": total,
            "size": size,
            "created": now,
        }
        with os_errors("create", payload.path):
            payload.path.mkdir(exist_ok=True)
        atomic_write(
            payload.path / META_JSON,
            json.dumps(meta, ensure_ascii=False).encode(),
            fsync=self.fsync,
            sync_dir=False,  # the first chunk's commit fsyncs this directory
        )
        self._sync_dir(self.patches_dir)
        with self._lock:
            payload.name, payload.total, payload.size = name, total, size
            payload.created = payload.updated = now
            payload.meta_written = True

    def _append_id(self, payload: _Payload, index: int, digest: bytes, now: float) -> None:
        """Append the commit line (the caller fsyncs it); a failed append is truncated
        away next time."""
        path = payload.path / IDS_LIST
        line = f"{index} {digest.hex()}\n".encode()
        with os_errors("append to", path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if payload.ids_dirty:
                    os.ftruncate(fd, payload.ids_bytes)
                payload.ids_dirty = True
                view = memoryview(line)
                offset = payload.ids_bytes
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
                os.utime(fd, (now, now))  # "last update", read back by open()
            finally:
                os.close(fd)
        payload.ids_dirty = False
        payload.ids_bytes += len(line)

    # -- queries -----------------------------------------------------------------------

    def info(self, file_id: FileId) -> PayloadInfo | None:
        """A snapshot of a payload being uploaded, or None (unknown, removed or published)."""
        with self._lock:
            payload = self._payloads.get(file_id)
            if payload is None or not payload.meta_written or payload.removed:
                return None
            return payload.snapshot()

    def payloads(self) -> list[PayloadInfo]:
        """Snapshots of every payload being uploaded."""
        with self._lock:
            return [
                p.snapshot() for p in self._payloads.values() if p.meta_written and not p.removed
            ]

    def patch_paths(self, file_id: FileId) -> list[Path]:
        """The patch files of a complete payload, in index order.

        Raises UnknownFileError when the payload is unknown or not complete.
        """
        info = self.info(file_id)
        hex_id = file_id_hex(file_id)
        if info is None:
            raise UnknownFileError(f"no upload {hex_id}")
        if not info.complete:
            raise UnknownFileError(
                f"upload {hex_id} is not complete: {len(info.committed)} of {info.total} chunks"
            )
        folder = self.patches_dir / hex_id
        return [folder / f"patch_{index}.bin" for index in range(info.total)]

    # -- removal and publishing --------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, file_id: FileId) -> Iterator[_Payload | None]:
        """Hold the payload's op_lock, or `_lock` when there is no payload to lock.

        Holding `_lock` in the second case stops a first chunk from creating the payload
        while its directory is being deleted.
        """
        while True:
            with self._lock:
                payload = self._payloads.get(file_id)
                if payload is None:
                    yield None
                    return
            with payload.op_lock:
                if payload.removed:
                    continue
                yield payload
                return

    def _forget(self, payload: _Payload | None) -> None:
        if payload is not None:
            with self._lock:
                payload.removed = True
                if self._payloads.get(payload.file_id) is payload:
                    del self._payloads[payload.file_id]
                self._changed.notify_all()

    def wait_chunk(self, file_id: FileId, index: int, timeout_s: float) -> Path | None:
        """Wait until chunk `index` of a payload is committed; return its patch path, or
        None after `timeout_s` with no commit of this payload.

        Raises UnknownFileError when the payload is (or becomes) unknown: aborted,
        expired, published or never started.
        """
        with self._lock:
            while True:
                payload = self._payloads.get(file_id)
                if payload is None or payload.removed or not payload.meta_written:
                    raise UnknownFileError(f"no upload {file_id_hex(file_id)}")
                if index in payload.chunks:
                    return payload.path / f"patch_{index}.bin"
                if not self._changed.wait(timeout_s):
                    return None

    def remove(self, file_id: FileId) -> bool:
        """Delete a payload's patch directory (abort, expiry, failed assembly).

        Returns whether there was anything to remove. Raises IngestStorageError.
        """
        path = self.patches_dir / file_id_hex(file_id)
        with self._exclusive(file_id) as payload:
            existed = payload is not None and payload.meta_written
            with os_errors("remove", path):
                if path.exists():
                    existed = True
                    shutil.rmtree(path)
            self._sync_dir(self.patches_dir)
            self._forget(payload)
            with self._lock:
                self._unreadable.pop(file_id, None)
        if existed:
            log.info("payload removed file_id=%s", file_id_hex(file_id))
        return existed

    def mark_published(self, info: PublishedInfo) -> None:
        """Record the publish durably; the payload is then gone (call remove_patches next).

        The record is the commit point. Raises IngestStorageError when the record cannot
        be written.
        """
        with self._lock:
            stored = info.file_id in self._payloads
        if stored:
            with self._exclusive(info.file_id) as payload:
                self._published.write(info)
                with self._lock:
                    self._published.add(info)
                self._forget(payload)
            return
        # A one-chunk upload, never stored: no lock is held across the record's fsyncs, so
        # concurrent publishes share them. A payload that a conflicting chunk created
        # meanwhile is forgotten like any other.
        self._published.write(info)
        with self._lock:
            self._published.add(info)
            late = self._payloads.get(info.file_id)
        if late is not None:
            with late.op_lock:
                self._forget(late)
            self.remove_patches(info.file_id)

    def remove_patches(self, file_id: FileId) -> None:
        """Delete a published payload's patch directory. A failure is logged, not raised,
        and there is no fsync: open() deletes patches of published payloads it finds."""
        path = self.patches_dir / file_id_hex(file_id)
        try:
            if path.exists():
                shutil.rmtree(path)
        except OSError as exc:
            log.warning(
                "patches not removed after publish file_id=%s error=%r", file_id_hex(file_id), exc
            )

    def published(self, file_id: FileId) -> PublishedInfo | None:
        """The record of a published payload, or None."""
        with self._lock:
            return self._published.get(file_id)

    def published_records(self) -> list[PublishedInfo]:
        """Every published record, oldest first."""
        with self._lock:
            return self._published.oldest_first()

    def forget_published(self, file_id: FileId) -> None:
        """Delete a published record (its TTL passed); the file id may then be reused.

        Raises IngestStorageError.
        """
        self._published.delete(file_id)
        with self._lock:
            self._published.discard(file_id)

    # -- helpers -----------------------------------------------------------------------

    def _sync_dir(self, path: Path) -> None:
        if self.fsync:
            self.syncer.sync(path)


# -- module helpers ------------------------------------------------------------------------


def _accept_line(payload: _Payload, line: bytes, patches: set[int], kept: list[bytes]) -> bool:
    """Commit one ids.list line into `payload` and `kept`, or log why it is dropped."""
    match = _ID_LINE.fullmatch(line)
    index = int(match[1]) if match else -1
    if not line.endswith(b"\n"):
        reason = "torn last line"
    elif match is None:
        reason = "unparsable"
    elif index >= payload.total:
        reason = f"index {index} is not below total {payload.total}"
    elif index in payload.chunks:
        reason = "repeated index"
    elif index not in patches:
        reason = f"patch_{index}.bin is missing"
    else:
        payload.chunks[index] = bytes.fromhex(match[2].decode())
        payload.received += os.stat(payload.path / f"patch_{index}.bin").st_size
        kept.append(line)
        return True
    log.warning(
        "ids.list line dropped file_id=%s line=%r reason=%s", payload.hex_id, line[:80], reason
    )
    return False


def _read_meta(payload: _Payload, path: Path) -> None:
    """Fill `payload` from its meta.json; raise _Unreadable when it does not hold one."""
    try:
        meta = json.loads(path.read_bytes())
        name, total, size, created = (meta[key] for key in ("name", "total", "size", "created"))
        if not (
            meta["file_id"] == payload.hex_id
            and isinstance(name, str)
            and _is_int(total)
            and _is_int(size)
            and 1 <= total <= MAX_CHUNKS
            and size >= 0
            and (_is_int(created) or isinstance(created, float))
        ):
            raise _Unreadable(f"meta.json holds {meta!r}")
        check_name(name)
    except (OSError, ValueError, KeyError, TypeError, BadNameError) as exc:
        raise _Unreadable(f"meta.json unreadable: {exc!r}") from exc
    payload.name, payload.total, payload.size = name, total, size
    payload.created = payload.updated = float(created)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
