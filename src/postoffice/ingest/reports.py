"""What the ingest server reports of its chunks and uploads: IngestStats (its counters),
Reports (counts, logs, telemetry and ack-port events of each outcome), FailedUpload."""

# Design
# ------
# Every outcome a chunk or an upload can have is reported here, once, by the stage that
# reached it: a newly committed chunk (intake.py), a publish or a failure (assembler.py,
# singles.py), an abort or a cleanup pass (server.py), a refused message (connections.py).
# Each report counts it in IngestStats, logs it, emits its telemetry event and sends its
# ack-port event, in that order. Those stages see Reports through small Protocols of
# their own, so none of them imports the server or the others.
#
# Uploads whose assembly failed are remembered here (`failure`): their chunks are dropped,
# and QUERY and a late SUBSCRIBE still learn of the failure. A record goes when the TTL
# passes (`prune_failures`, from the cleanup pass), when MAX_FAILED_UPLOADS newer ones
# came after it, or when a fresh upload of its id gets a chunk in. The failure refuses
# chunks of its id (`refusing`) only for FAILED_HOLD_S and only those of the content
# that failed: the chunks its sender had in flight. Anyone who knows a file id can make
# its upload fail (garbage chunks under it), so a failure that refused the id for good
# would let a stranger lock its owner out; a chunk of another payload digest, or any
# chunk once the hold is over, starts the upload afresh, as after an ABORT.

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, final

from postoffice.core.framing import FrameError
from postoffice.ingest.errors import AssemblyError, ErrorCode, IngestError, error_code
from postoffice.ingest.events import AckHub, EventHub
from postoffice.ingest.messages import Chunk, ChunkStored, Failed, FileId, Published, file_id_hex
from postoffice.ingest.published import PublishedInfo

__all__ = [
    "FAILED_HOLD_S",
    "MAX_FAILED_UPLOADS",
    "FailedUpload",
    "IngestStats",
    "Reports",
    "published_message",
]

log = logging.getLogger(__name__)

#: How long a failed upload refuses chunks of the content that failed, in seconds: the
#: chunks its sender had in flight arrive within it; after it a chunk starts afresh.
FAILED_HOLD_S: Final = 10.0
#: Failed uploads remembered at most (the oldest goes first): each costs its message.
MAX_FAILED_UPLOADS: Final = 65_536


@dataclass(slots=True, kw_only=True)
class IngestStats:
    """The ingest server's counters since it started: plain ints, bumped on the event loop
    as things happen, read by STATUS, /info and /metrics (the field names are the
    metrics' names)."""

    chunks: int = 0  # newly committed chunks (one-chunk uploads once published)
    duplicates: int = 0  # chunks acknowledged as DUPLICATE
    chunk_bytes: int = 0  # the data bytes of those new chunks (compressed payload bytes)
    published: int = 0  # uploads published
    assembly_failures: int = 0  # failed, crashed and fallen-back assemblies
    protocol_errors: int = 0  # broken frames and refused messages
    cleanup_removed: int = 0  # uploads, files, records and staging files cleanup removed

    def counters(self) -> dict[str, int]:
        """Every counter by name."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedUpload:
    """An upload that will never be published: its FAILED event, and the total, size and
    name QUERY still answers for it (its chunks are gone)."""

    event: Failed
    name: str
    total: int
    size: int
    payload_digest: bytes | None  # the content that failed (None: not known)
    failed_at: float  # wall-clock seconds


def published_message(done: PublishedInfo) -> Published:
    """The PUBLISHED event of a publish record."""
    return Published(
        file_id=FileId(done.file_id),
        name=done.name,
        size=done.size,
        digest=done.digest,
        payload_digest=done.payload_digest,
        replaced=done.replaced,
    )


@final
class Reports:
    """Reports every outcome once (see the design note); owns the failed uploads."""

    def __init__(
        self,
        *,
        stats: IngestStats,
        events: EventHub,
        acks: AckHub,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stats = stats
        self.events = events
        self.acks = acks
        self.wall = wall  # the clock of failed_at and of the cleanup pass's TTL
        self._failed: dict[FileId, FailedUpload] = {}  # oldest first

    def __repr__(self) -> str:
        return f"<Reports failed={len(self._failed)} {self.stats}>"

    # -- chunks ------------------------------------------------------------------------

    def chunk_stored(self, chunk: Chunk, committed: int, total: int) -> None:
        """A chunk is newly committed (durable): count it, tell telemetry and subscribers."""
        stats = self.stats
        stats.chunks += 1
        stats.chunk_bytes += len(chunk.data)
        file_id = chunk.file_id
        self.events.emit(
            "chunk_stored",
            file_id=file_id_hex(file_id),
            index=chunk.index,
            committed=committed,
            total=total,
            bytes=len(chunk.data),
        )
        self.acks.publish(
            file_id,
            ChunkStored(file_id=file_id, index=chunk.index, committed=committed, total=total),
        )

    def duplicate(self) -> None:
        """A chunk was acknowledged as a DUPLICATE: nothing changed, nothing to announce."""
        self.stats.duplicates += 1

    def payload_complete(self, file_id: FileId, name: str) -> None:
        """The upload's last chunk is committed; its assembly runs or starts."""
        self.events.emit("payload_complete", file_id=file_id_hex(file_id), name=name)

    def chunk_refused(self, chunk: Chunk, error: IngestError) -> None:
        """A chunk got an ERROR reply."""
        self.events.emit(
            "chunk_refused",
            file_id=file_id_hex(chunk.file_id),
            index=chunk.index,
            code=error.wire_code,
            error=str(error),
        )

    # -- connections -------------------------------------------------------------------

    def bad_frame(self, peer: str, error: FrameError) -> None:
        """A connection sent a broken frame and is being closed."""
        self.stats.protocol_errors += 1
        log.info("bad frame peer=%s error=%r", peer, str(error))
        self.events.emit("protocol_error", peer=peer, error=str(error))

    def message_refused(self, peer: str, error: IngestError) -> None:
        """A well-framed message did not parse; its connection goes on."""
        self.stats.protocol_errors += 1
        self.events.emit("message_refused", peer=peer, code=error.wire_code, error=str(error))

    # -- uploads -----------------------------------------------------------------------

    def published(self, done: PublishedInfo, seconds: float, *, level: int = logging.INFO) -> None:
        """An upload is published (its record is durable): count it, log it at `level`,
        tell telemetry and subscribers."""
        self.stats.published += 1
        file_id = done.file_id
        hex_id = file_id_hex(file_id)
        if log.isEnabledFor(level):
            log.log(
                level,
                "published file_id=%s name=%s bytes=%d seconds=%.3f replaced=%s",
                hex_id,
                done.name,
                done.size,
                seconds,
                done.replaced,
            )
        self.events.emit(
            "published",
            file_id=hex_id,
            name=done.name,
            size=done.size,
            digest=done.digest.hex(),
            payload_digest=done.payload_digest.hex(),
            replaced=done.replaced,
            seconds=round(seconds, 6),
        )
        self.acks.publish(file_id, published_message(done))

    def assembly_failed(
        self,
        file_id: FileId,
        *,
        name: str,
        total: int,
        size: int,
        payload_digest: bytes | None,
        error: AssemblyError,
    ) -> None:
        """The upload will never decompress: remember it, count it, tell telemetry and
        subscribers. Its chunks are the caller's to drop."""
        self.stats.assembly_failures += 1
        failed = Failed(file_id=file_id, code=error_code(error), message=str(error))
        records = self._failed
        records.pop(file_id, None)  # the newest goes last
        records[file_id] = FailedUpload(
            event=failed,
            name=name,
            total=total,
            size=size,
            payload_digest=payload_digest,
            failed_at=self.wall(),
        )
        while len(records) > MAX_FAILED_UPLOADS:
            del records[next(iter(records))]
        hex_id = file_id_hex(file_id)
        log.warning("assembly failed file_id=%s name=%s error=%r", hex_id, name, str(error))
        self.events.emit(
            "assembly_failed", file_id=hex_id, name=name, code=error.wire_code, error=str(error)
        )
        self.acks.publish(file_id, failed)

    def assembly_crashed(self, file_id: FileId, error: BaseException, retry_in_s: float) -> None:
        """An assembly failed for a reason other than its payload; it runs again later."""
        self.stats.assembly_failures += 1
        hex_id = file_id_hex(file_id)
        log.error(
            "assembly crashed file_id=%s reason=%r restart_in_s=%.2f",
            hex_id,
            error,
            retry_in_s,
            exc_info=error,
        )
        self.events.emit("assembly_retry", file_id=hex_id, error=repr(error), retry_in_s=retry_in_s)

    def publish_failed(self, file_id: FileId, error: BaseException) -> None:
        """A one-chunk publish met a disk error: nothing was published or stored, and its
        chunk is refused with STORAGE."""
        self.stats.assembly_failures += 1
        log.warning(
            "one-chunk publish failed, chunk refused file_id=%s error=%r",
            file_id_hex(file_id),
            error,
        )

    def aborted(self, file_id: FileId) -> None:
        """An operator aborted the upload, which is forgotten: tell its subscribers."""
        self.acks.publish(
            file_id, Failed(file_id=file_id, code=ErrorCode.ABORTED, message="upload aborted")
        )
        self.events.emit("upload_aborted", file_id=file_id_hex(file_id))

    def failure(self, file_id: FileId) -> FailedUpload | None:
        """The failed upload of this id, if its assembly failed."""
        return self._failed.get(file_id)

    def refusing(self, file_id: FileId, payload_digest: bytes) -> FailedUpload | None:
        """The failed upload that refuses a chunk of this id and payload digest: one of
        the same content that failed less than FAILED_HOLD_S ago, else None."""
        failed = self._failed.get(file_id)
        if failed is None or failed.payload_digest not in (None, payload_digest):
            return None
        return failed if self.wall() - failed.failed_at < FAILED_HOLD_S else None

    def forget_failure(self, file_id: FileId, failed: FailedUpload) -> None:
        """A fresh upload of the id took a chunk: its old failure `failed` is no longer
        news (a newer failure of the id is kept)."""
        if self._failed.get(file_id) is failed:
            del self._failed[file_id]

    def prune_failures(self, *, ttl_s: float) -> int:
        """Forget the failures older than `ttl_s`; return how many went."""
        now = self.wall()
        expired = [fid for fid, f in self._failed.items() if now - f.failed_at > ttl_s]
        for file_id in expired:
            del self._failed[file_id]
        return len(expired)

    @property
    def failures(self) -> int:
        """Failed uploads remembered now."""
        return len(self._failed)
