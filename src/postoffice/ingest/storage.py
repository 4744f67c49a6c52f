"""Durable chunk storage of the ingest service: ChunkStore, the live patch directories.

I/O layer, blocking: the server calls it from worker threads. A directory's layout and
recovery are patches.py's; the records of published payloads are published.py's.
"""

# Design
# ------
# Layout and crash repair of one payload's directory: patches.py. Published payloads are
# recorded in published_dir (published.py). The chunk is acknowledged once ids.list and
# the directory are fsynced; those two fsyncs are group commits (durable.GroupSync):
# chunks of one payload committing at once share them, so 16 chunks in flight cost about
# 2 + 2 fsyncs, not 2 x 16.
#
# open() rebuilds the in-memory index, the truth from then on (the disk is not rescanned):
# it recovers each directory (patches.recover), deletes stray *.tmp entries, lists a
# directory recover() cannot read in `unreadable` and leaves it for an operator
# (store_chunk refuses its id, remove() deletes it), and deletes the patches of a payload
# that has a published record (crash between the record and the removal).
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
#
# Resident chunks: with `resident_bytes`, a committed chunk's bytes stay in memory until
# the streaming assembler takes them (`wait_piece`), up to that many bytes for the whole
# store; such a patch is written with O_DIRECT (durable.write_file), so its bytes are not
# copied into the page cache as well, where they would only be read back once. A chunk
# that finds the budget full is written through the page cache as before, and the
# assembler reads its patch file, which is where every other reader (recovery, --via-part,
# a restarted assembly) always reads. A payload that goes (published, removed) gives its
# resident bytes back. This changes no durability: the patch is fsynced either way.

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

from postoffice.ingest.assembly import Piece
from postoffice.ingest.durable import GroupSync, atomic_write, discard, os_errors, write_file
from postoffice.ingest.errors import (
    ConflictError,
    IngestProtocolError,
    IngestStorageError,
    OutOfRangeError,
    TooManyUploadsError,
    UnknownFileError,
)
from postoffice.ingest.messages import (
    DIGEST_BYTES,
    DIGEST_SHOWN,
    FILE_ID_BYTES,
    MAX_CHUNKS,
    FileId,
    check_name,
    file_id_hex,
)
from postoffice.ingest.patches import (
    IDS_LIST,
    META_JSON,
    Payload,
    PayloadInfo,
    append_id,
    encode_meta,
    recover,
)
from postoffice.ingest.published import PublishedInfo, PublishedRecords

__all__ = ["ChunkStore", "StoreResult"]

log = logging.getLogger(__name__)

_HEX_ID: Final = re.compile(r"[0-9a-f]{32}")


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


@final
class ChunkStore:
    """The patches of payloads being uploaded and the records of published ones.

    The constructor only allocates; call `open()` once before anything else. Every
    method is blocking and thread-safe.
    """

    def __init__(
        self,
        patches_dir: Path,
        published_dir: Path,
        *,
        fsync: bool = True,
        resident_bytes: int = 0,
        max_payloads: int = 0,
    ) -> None:
        self.patches_dir = Path(patches_dir)
        #: Payloads in progress at once (0: no limit); a chunk that would start another is
        #: refused. Read under `_lock`, so it may be changed at any time.
        self.max_payloads = max_payloads
        self.published_dir = Path(published_dir)
        self.fsync = fsync
        self.resident_limit = resident_bytes
        self._resident_used = 0  # bytes claimed for resident chunks (under `_lock`)
        self.syncer = GroupSync()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._payloads: dict[bytes, Payload] = {}
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
        payloads: dict[bytes, Payload] = {}
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
                payload = recover(file_id, path, fsync=self.fsync)
            except (OSError, IngestStorageError) as exc:  # UnreadablePayloadError among them
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

    # -- chunks ------------------------------------------------------------------------

    def store_chunk(
        self,
        *,
        file_id: FileId,
        index: int,
        total: int,
        size: int,
        name: str,
        payload_digest: bytes,
        digest: bytes,
        data: bytes | memoryview,
        now: float,
        content_size: int | None = None,
        content_offset: int = 0,
    ) -> StoreResult:
        """Make one chunk durable and commit it; idempotent for identical bytes.

        `digest` must be the chunk digest of `data` (verify_chunk checked it); `now` is
        wall-clock seconds. The first chunk of a payload fixes its name, total, size,
        payload digest and content size (a FRAMED upload's; None: not FRAMED, and every
        chunk must agree): one file id has one content. A FRAMED chunk's `content_offset`
        is kept with its commit (content_offset()). Raises OutOfRangeError (index >=
        total, total of 0 or over MAX_CHUNKS), BadNameError, ConflictError (the index is
        committed with other bytes; total, size, name or payload digest differ from the
        payload's; the chunks would exceed `size`), TooManyUploadsError (it would start a
        payload past `max_payloads`), IngestStorageError (the disk failed;
        nothing is committed) and IngestProtocolError (a file id or digest of the wrong
        length).
        """
        lengths = (len(file_id), len(payload_digest), len(digest))
        if lengths != (FILE_ID_BYTES, DIGEST_BYTES, DIGEST_BYTES):
            raise IngestProtocolError(
                f"file id, payload digest and digest of {lengths[0]}, {lengths[1]} and "
                f"{lengths[2]} bytes, expected 16, 16 and 16"
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
            payload = self._payload_for(file_id, index, payload_digest, name)
            if payload is None:
                return StoreResult(
                    committed=total, total=total, duplicate=True, complete=False, published=True
                )
            with payload.op_lock:
                if payload.removed:
                    continue  # removed or published while we waited: look again
                try:
                    plan = self._reserve(
                        payload,
                        index,
                        total,
                        size,
                        name,
                        payload_digest,
                        digest,
                        data,
                        now,
                        content_size,
                    )
                finally:
                    if not payload.meta_written:
                        self._forget(payload)  # a refused first chunk leaves no placeholder
            if isinstance(plan, StoreResult):
                return plan
            if plan is not None:  # the same bytes are being written by another thread
                plan.wait()
                continue
            offset = None if content_size is None else content_offset
            return self._write_and_commit(payload, index, total, digest, data, now, offset)

    def _write_and_commit(
        self,
        payload: Payload,
        index: int,
        total: int,
        digest: bytes,
        data: bytes | memoryview,
        now: float,
        offset: int | None = None,
    ) -> StoreResult:
        """Write the patch outside the payload's lock, then commit it under the lock.

        Patches of one payload are written (and fsynced) in parallel; only the short
        ids.list append is serialised, and its fsync is shared. The ids.list line is the
        commit point, so a patch written without its line is not committed (open() drops
        it).
        """
        keep = self._claim_resident(len(data))
        try:
            write_file(
                payload.path / f"patch_{index}.bin",
                data,
                fsync=self.fsync,
                direct=keep and self.fsync,
            )
            with payload.op_lock:
                if payload.removed:
                    raise IngestStorageError(
                        f"upload {payload.hex_id} was removed while chunk {index} was stored"
                    )
                if payload.ids_broken:
                    raise IngestStorageError(payload.ids_broken)
                append_id(payload, index, digest, now, offset)
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
                if keep:
                    self._unclaim_resident(len(data))
            raise
        with payload.op_lock:
            self._release(payload, index, len(data))
            with self._lock:
                if keep and not payload.removed:
                    payload.resident[index] = data
                elif keep:
                    self._unclaim_resident(len(data))
                payload.chunks[index] = digest
                if offset is not None:
                    payload.offsets[index] = offset
                payload.received += len(data)
                payload.updated = now
                committed = len(payload.chunks)
                self._changed.notify_all()
        return StoreResult(
            committed=committed, total=total, duplicate=False, complete=committed == total
        )

    def _claim_resident(self, size: int) -> bool:
        """Reserve `size` bytes of the resident budget; False when it is full (or off)."""
        with self._lock:
            if self._resident_used + size > self.resident_limit:
                return False
            self._resident_used += size
            return True

    def _unclaim_resident(self, size: int) -> None:
        with self._lock:
            self._resident_used -= size

    @property
    def resident_used(self) -> int:
        """Bytes of committed chunks held in memory for the streaming assembler."""
        with self._lock:
            return self._resident_used

    @staticmethod
    def _release(payload: Payload, index: int, size: int) -> None:
        """Drop a write's reservation and wake anyone waiting on the same index."""
        pending = payload.writing.pop(index, None)
        payload.reserved -= size
        if pending is not None:
            pending[1].set()

    def _payload_for(
        self, file_id: FileId, index: int, payload_digest: bytes, name: str
    ) -> Payload | None:
        """The payload a chunk goes to (a placeholder for a new one), or None when the id
        is published with this content. Raises ConflictError when it is published with
        another: the caller checked the records before it came here, and the upload may
        have been published since, so a late chunk of another content must not be taken
        for a duplicate of the published one."""
        with self._lock:
            done = self._published.get(file_id)
            if done is not None:
                if (done.payload_digest, done.name) != (payload_digest, name):
                    raise ConflictError(
                        f"chunk {index} of {file_id_hex(file_id)} is not of the payload "
                        f"published under that id (another name or payload digest)"
                    )
                return None
            if file_id in self._unreadable:
                raise IngestStorageError(
                    f"payload {file_id_hex(file_id)} has an unreadable directory "
                    f"{self._unreadable[file_id]}; abort the upload to start over"
                )
            payload = self._payloads.get(file_id)
            if payload is None:
                # Placeholders of first chunks being checked count too, so threads racing
                # to start uploads cannot pass the limit together.
                limit = self.max_payloads
                if limit and len(self._payloads) >= limit:
                    raise TooManyUploadsError(
                        f"chunk {index} of {file_id_hex(file_id)} would start an upload: "
                        f"{len(self._payloads)} uploads in progress, limit {limit}"
                    )
                payload = Payload(file_id, self.patches_dir / file_id_hex(file_id))
                self._payloads[file_id] = payload
            return payload

    def _reserve(
        self,
        payload: Payload,
        index: int,
        total: int,
        size: int,
        name: str,
        payload_digest: bytes,
        digest: bytes,
        data: bytes | memoryview,
        now: float,
        content_size: int | None = None,
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
                ("content size", payload.content_size, content_size),
            ):
                if ours != theirs:
                    raise ConflictError(
                        f"chunk {index} of {hex_id} has {field} {theirs!r},"
                        f" the payload has {field} {ours!r}"
                    )
            if payload.payload_digest not in (None, payload_digest):
                # Another content under this id: refused whatever its index, so chunks of
                # two senders never mix, even at indexes the first has not sent yet.
                raise ConflictError(
                    f"chunk {index} of {hex_id} has payload digest {_shown(payload_digest)},"
                    f" the payload has payload digest {_shown(payload.payload_digest)}"
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
            self._create(
                payload,
                total=total,
                size=size,
                name=name,
                payload_digest=payload_digest,
                now=now,
                content_size=content_size,
            )
        payload.writing[index] = (digest, threading.Event())
        payload.reserved += len(data)
        return None

    def _create(
        self,
        payload: Payload,
        *,
        total: int,
        size: int,
        name: str,
        payload_digest: bytes,
        now: float,
        content_size: int | None = None,
    ) -> None:
        """Write a new payload's directory and meta.json."""
        meta = encode_meta(
            hex_id=payload.hex_id,
            name=name,
            total=total,
            size=size,
            payload_digest=payload_digest,
            created=now,
            content_size=content_size,
        )
        with os_errors("create", payload.path):
            payload.path.mkdir(exist_ok=True)
        atomic_write(
            payload.path / META_JSON,
            meta,
            fsync=self.fsync,
            sync_dir=False,  # the first chunk's commit fsyncs this directory
        )
        self._sync_dir(self.patches_dir)
        with self._lock:
            payload.name, payload.total, payload.size = name, total, size
            payload.payload_digest = payload_digest
            payload.content_size = content_size
            payload.created = payload.updated = now
            payload.meta_written = True

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

    def content_offset(self, file_id: FileId, index: int) -> int | None:
        """The content offset a committed chunk of a FRAMED upload declared, or None
        (not committed, not FRAMED, or no such upload)."""
        with self._lock:
            payload = self._payloads.get(file_id)
            return None if payload is None else payload.offsets.get(index)

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
    def _exclusive(self, file_id: FileId) -> Iterator[Payload | None]:
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

    def _forget(self, payload: Payload | None) -> None:
        if payload is not None:
            with self._lock:
                payload.removed = True
                self._resident_used -= sum(len(data) for data in payload.resident.values())
                payload.resident.clear()
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

    def wait_piece(self, file_id: FileId, index: int, timeout_s: float) -> Piece | None:
        """wait_chunk for the streaming assembler: the chunk's bytes when they are
        resident (handed over once: they leave the store's memory), else its patch path.
        Raises UnknownFileError as wait_chunk does."""
        with self._lock:
            path = self.wait_chunk(file_id, index, timeout_s)
            if path is None:
                return None
            payload = self._payloads[file_id]
            data = payload.resident.pop(index, None)
            if data is None:
                return path
            self._resident_used -= len(data)
            return data

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

    def mark_published_many(self, infos: Sequence[PublishedInfo]) -> None:
        """mark_published for one-chunk uploads published together: their records share
        one append and one fsync, so they are durable together or not at all.

        Raises IngestStorageError when the records cannot be written (none is then
        published).
        """
        with self._lock:
            stored = [info for info in infos if info.file_id in self._payloads]
        if stored:
            # A payload that a conflicting chunk created meanwhile: the locked road.
            for info in stored:
                self.mark_published(info)
            infos = [info for info in infos if info not in stored]
        self._published.write_many(infos)
        with self._lock:
            late = []
            for info in infos:
                self._published.add(info)
                payload = self._payloads.get(info.file_id)
                if payload is not None:
                    late.append(payload)
        for payload in late:
            with payload.op_lock:
                self._forget(payload)
            self.remove_patches(payload.file_id)

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


def _shown(digest: bytes | None) -> str:
    return "none" if digest is None else f"{digest.hex()[:DIGEST_SHOWN]}..."
