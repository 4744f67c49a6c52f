"""Intake: the way of one chunk through the ingest server, read top to bottom: route,
verify, store durably, acknowledge, assemble (and publish, for a one-chunk upload).

Ingest layer, on the server's event loop; the blocking stages run on its I/O threads.
"""

# Design
# ------
# A data connection has received the chunk (receive.py reads its bytes, connections.py
# decodes it: its data is a view of the frame, never copied) and calls `accept`, which
# is the pipeline. Each stage hands on to the next and none calls back:
#
#   1. route: refuse it (the server drains, another node of a cluster owns its upload:
#      MOVED, see ownership.py; its data is longer than its size or cut too small, its
#      upload failed), or answer at once (its upload is published), or choose
#      a road: a one-chunk upload not stored yet takes the one-chunk road (2a), whether
#      or not the server assembles via .part, any other chunk the patch road (2b);
#   2a. one-chunk road: SinglePublishes verifies the digest, decompresses the chunk into
#      its file in files/ and publishes it, in a batch with others (singles.py), and
#      reports the outcome; its SingleOutcome says what to acknowledge (a disk error is
#      refused with STORAGE: the chunk never goes the patch road, whose ACK COMPLETE
#      would claim a publish that has not happened);
#   2b. patch road, on an I/O thread: verify the digest (chunkdigest.py), then store it
#      durably (ChunkStore.store_chunk: patch_<i>.bin written and fsynced, its line
#      appended to ids.list and fsynced with the directory: the commit point); in
#      cluster mode (`replicate` set) the verified chunk is put into S3 between the two,
#      so its ACK means both copies, and a one-chunk upload takes this road too;
#   3. acknowledge: a new commit is reported once (CHUNK_STORED, chunk_stored) and the
#      ACK built; a duplicate is only counted;
#   4. assemble: the commit goes on to Assemblies.on_committed, which starts or feeds the
#      upload's one assembly; that assembly publishes the file and reports it
#      (assembler.py).
#
# `accept` must run to its end once it has begun: the report of a commit follows the
# store, and a cancelled caller would lose it. Data connections never cancel it.
# While tracing is on, an upload's spans (ingest/tracing.py) start with its first chunk
# here and end with its publish in the assembly; off, `tracing` is None and costs a test.

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, assert_never, final

from postoffice.core.tracing import active as active_tracing
from postoffice.core.workers import WorkerPool
from postoffice.ingest.assembler import Assemblies
from postoffice.ingest.assembly import RATIO_GRACE_BYTES
from postoffice.ingest.chunkdigest import verify_chunk
from postoffice.ingest.config import SMALL_UPLOAD_CHUNKS, IngestConfig
from postoffice.ingest.errors import (
    AssemblyError,
    ConflictError,
    IngestLimitError,
    IngestStorageError,
    MovedError,
    OutOfRangeError,
    ShuttingDownError,
)
from postoffice.ingest.messages import Ack, Chunk, FileId, file_id_hex
from postoffice.ingest.ownership import Ownership, moved_message
from postoffice.ingest.published import PublishedInfo
from postoffice.ingest.reports import FailedUpload
from postoffice.ingest.singles import AlreadyPublished, SinglePublishes
from postoffice.ingest.storage import ChunkStore, StoreResult
from postoffice.ingest.tracing import IngestTracing

__all__ = ["Intake", "IntakeReports"]


class IntakeReports(Protocol):
    """What the intake reports (reports.Reports), and the failures it refuses chunks of."""

    def chunk_stored(self, chunk: Chunk, committed: int, total: int) -> None: ...

    def duplicate(self) -> None: ...

    def payload_complete(self, file_id: FileId, name: str) -> None: ...

    def failure(self, file_id: FileId) -> FailedUpload | None: ...

    def refusing(self, file_id: FileId, payload_digest: bytes) -> FailedUpload | None: ...

    def forget_failure(self, file_id: FileId, failed: FailedUpload) -> None: ...


@final
class Intake:
    """Takes chunks in for one server: `accept(chunk)` is the pipeline of the design note.

    Chunks are refused with SHUTTING_DOWN until `open()` and after `close()`.
    """

    def __init__(
        self,
        *,
        config: IngestConfig,
        store: ChunkStore,
        pool: WorkerPool,
        singles: SinglePublishes,
        assemblies: Assemblies,
        reports: IntakeReports,
        ownership: Ownership | None = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.singles = singles
        self.assemblies = assemblies
        self.reports = reports
        self.min_chunk_bytes = config.min_chunk_bytes
        self.accepting = False
        #: Who owns which upload in a cluster; None on a single node (one test per chunk).
        self.ownership = ownership
        #: In cluster mode (clustered.py), puts a verified chunk into the object store before
        #: its local commit, raising ClusterError (STORAGE) to refuse it; a one-chunk upload
        #: then takes the patch road too. None on a single node: one test per chunk.
        self.replicate: Callable[[Chunk], Awaitable[None]] | None = None
        tracing = active_tracing()
        #: The uploads' spans, shared with the assemblies; None while tracing is off.
        self.tracing = None if tracing is None else IngestTracing(tracing)
        assemblies.tracing = self.tracing

    def __repr__(self) -> str:
        state = "accepting" if self.accepting else "closed"
        return f"<Intake {state}>"

    def open(self) -> None:
        """Take chunks from now on."""
        self.accepting = True

    def close(self) -> None:
        """Refuse chunks from now on (the server drains)."""
        self.accepting = False

    async def accept(self, chunk: Chunk) -> Ack:
        """Take one chunk through the pipeline: its ACK once it is durable (or published).

        Raises ShuttingDownError, ConflictError, AssemblyError (its upload failed, or a
        one-chunk upload's payload will not decompress), ChecksumError, BadNameError,
        OutOfRangeError (also a chunk cut too small), TooManyUploadsError (it would start
        an upload past max_uploads), IngestStorageError (nothing is committed), MovedError
        (another node owns its upload) and what the ownership's claim raises.
        """
        # 1. route
        file_id = chunk.file_id
        if not self.accepting:
            raise ShuttingDownError("server is shutting down, chunk not stored")
        if self.ownership is not None:
            await self._check_owner(chunk)
        if len(chunk.data) > chunk.size:
            # What the store refuses for any chunk, checked here for the one-chunk road,
            # which never reaches the store (the payload would fail its size in assembly).
            raise ConflictError(
                f"chunk {chunk.index} of {file_id_hex(file_id)} brings the payload to "
                f"{len(chunk.data)} bytes, over its size {chunk.size}"
            )
        _check_chunk_length(chunk, self.min_chunk_bytes)
        if chunk.content_size is not None:
            config = self.assemblies.config
            _check_content_size(chunk, config.max_output_bytes, config.max_output_ratio)
        reports = self.reports
        failed = reports.refusing(file_id, chunk.payload_digest)
        if failed is not None:
            raise _failed_upload(failed)
        old = reports.failure(file_id)
        if old is not None and self.store.info(file_id) is None:
            # A fresh start of a failed upload (another content, or past the hold): its
            # old failure is forgotten once it takes a chunk.
            ack = await self._road(chunk)
            reports.forget_failure(file_id, old)
            return ack
        return await self._road(chunk)

    async def _check_owner(self, chunk: Chunk) -> None:
        """Refuse a chunk of an upload another node owns with MovedError; the first chunk
        of an upload this node has not decided waits for the ownership's claim."""
        ownership = self.ownership
        assert ownership is not None
        owner = ownership.owner(chunk.file_id)
        if owner is None:
            owner = await ownership.claim(chunk.file_id)
            if not self.accepting:
                raise ShuttingDownError("server is shutting down, chunk not stored")
        if owner.node != ownership.node:
            raise MovedError(moved_message(owner))

    async def _road(self, chunk: Chunk) -> Ack:
        """Steps 1 (the rest of the route) to 4 of `accept`, for a chunk not refused."""
        file_id = chunk.file_id
        done = self.store.published(file_id)
        if done is not None:
            if (done.payload_digest, done.name) != (chunk.payload_digest, chunk.name):
                raise ConflictError(
                    f"chunk {chunk.index} of {file_id_hex(file_id)} is not of the payload "
                    f"published under that id (another name or payload digest)"
                )
            return _already_published(chunk)
        pending = self.singles.pending.get(file_id)
        if pending is not None and chunk.total != 1:
            # Its one-chunk publish would drop what this chunk stored: another content.
            raise ConflictError(
                f"chunk {chunk.index} of {file_id_hex(file_id)} has total {chunk.total}, "
                "the upload is being published as one chunk"
            )
        if chunk.total == 1 and self.replicate is None and self.store.info(file_id) is None:
            # 2a. the one-chunk road: published before it is acknowledged, however the
            # server assembles larger uploads (its ACK says the file is published)
            if self.tracing is None:
                outcome = await self.singles.publish(chunk)
            else:
                outcome = await self.tracing.single(chunk, self.singles.publish(chunk))
            match outcome:
                case PublishedInfo():
                    return Ack(file_id=file_id, index=0, committed=1, total=1, complete=True)
                case AlreadyPublished():
                    return _already_published(chunk)
                case never:
                    assert_never(never)
        # 2b. the patch road: verify, then store durably, on an I/O thread
        now = time.time()
        store = self.store

        def store_it() -> StoreResult:
            return store.store_chunk(
                file_id=file_id,
                index=chunk.index,
                total=chunk.total,
                size=chunk.size,
                name=chunk.name,
                payload_digest=chunk.payload_digest,
                digest=chunk.digest,
                data=chunk.data,
                now=now,
                content_size=chunk.content_size,
                content_offset=chunk.content_offset,
            )

        def verify_and_store() -> StoreResult:
            verify_chunk(chunk)
            return store_it()

        if self.replicate is None:
            stored = self.pool.submit(verify_and_store)
        else:
            stored = asyncio.ensure_future(self._replicated(chunk, self.replicate, store_it))
        if self.tracing is not None:
            self.tracing.persisting(chunk, stored)
        try:
            result = await stored
        except IngestStorageError:
            # Its assembly may have failed and dropped the upload meanwhile.
            failed = self.reports.refusing(file_id, chunk.payload_digest)
            if failed is not None:
                raise _failed_upload(failed) from None
            raise
        # 3. acknowledge
        reports = self.reports
        if result.duplicate:
            reports.duplicate()
        else:
            reports.chunk_stored(chunk, result.committed, result.total)
        if result.complete:
            reports.payload_complete(file_id, chunk.name)
        # 4. assemble
        if not result.duplicate:
            self.assemblies.on_committed(
                file_id,
                complete=result.complete,
                index=chunk.index,
                framed=chunk.content_size is not None,
            )
        elif result.committed == result.total and not result.published:
            # A re-sent chunk of a complete upload (a resuming client's nudge): make sure
            # its assembly runs, should it have been lost.
            self.assemblies.on_committed(
                file_id, complete=True, framed=chunk.content_size is not None
            )
        return Ack(
            file_id=file_id,
            index=chunk.index,
            committed=result.committed,
            total=result.total,
            duplicate=result.duplicate,
            complete=result.complete,
        )

    async def _replicated(
        self,
        chunk: Chunk,
        replicate: Callable[[Chunk], Awaitable[None]],
        store_it: Callable[[], StoreResult],
    ) -> StoreResult:
        """Step 2b in cluster mode: verify, put into the object store, then commit."""
        await self.pool.submit(lambda: verify_chunk(chunk))
        await replicate(chunk)
        return await self.pool.submit(store_it)


def _check_chunk_length(chunk: Chunk, min_chunk_bytes: int) -> None:
    """Refuse a chunk cut too small for an upload of its total (OutOfRangeError).

    Each chunk stored costs an inode and a line of ids.list whatever it holds, so an
    upload of 2**24 one-byte chunks would cost 16 million inodes for 16 MiB. Past
    SMALL_UPLOAD_CHUNKS chunks, every chunk but the last must carry `min_chunk_bytes`,
    and the total must fit the size at that length: stored chunks then cost at most one
    inode per `min_chunk_bytes` received (S3's multipart rule, part size but the last).
    """
    total = chunk.total
    if not min_chunk_bytes or total <= SMALL_UPLOAD_CHUNKS:
        return
    hex_id = file_id_hex(chunk.file_id)
    if (total - 1) * min_chunk_bytes > chunk.size:
        raise OutOfRangeError(
            f"upload {hex_id} of {chunk.size} bytes cannot have {total} chunks: past "
            f"{SMALL_UPLOAD_CHUNKS}, every chunk but the last holds at least "
            f"{min_chunk_bytes} bytes"
        )
    if chunk.index < total - 1 and len(chunk.data) < min_chunk_bytes:
        raise OutOfRangeError(
            f"chunk {chunk.index} of {hex_id} holds {len(chunk.data)} bytes, below the "
            f"minimum {min_chunk_bytes} for all but the last of more than "
            f"{SMALL_UPLOAD_CHUNKS} chunks"
        )


def _check_content_size(chunk: Chunk, max_output_bytes: int, max_output_ratio: int) -> None:
    """Refuse a FRAMED chunk whose upload declares more content than the output limits
    allow (IngestLimitError): a bomb is refused before anything of it is stored."""
    content_size = chunk.content_size
    assert content_size is not None
    hex_id = file_id_hex(chunk.file_id)
    if content_size > max_output_bytes:
        raise IngestLimitError(
            f"upload {hex_id} declares content size {content_size}, over the output limit "
            f"{max_output_bytes}"
        )
    if (
        max_output_ratio
        and content_size > RATIO_GRACE_BYTES
        and content_size > max_output_ratio * chunk.size
    ):
        raise IngestLimitError(
            f"upload {hex_id} declares content size {content_size} from {chunk.size} "
            f"compressed bytes, over the ratio limit {max_output_ratio}"
        )


def _failed_upload(failed: FailedUpload) -> AssemblyError:
    """The error that refuses a chunk of an upload whose assembly failed."""
    event = failed.event
    return AssemblyError(f"upload {file_id_hex(event.file_id)} failed: {event.message}")


def _already_published(chunk: Chunk) -> Ack:
    """The ACK of a chunk whose upload is published: nothing was stored."""
    return Ack(
        file_id=chunk.file_id,
        index=chunk.index,
        committed=chunk.total,
        total=chunk.total,
        published=True,
    )
