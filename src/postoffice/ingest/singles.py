"""One-chunk uploads of the ingest server, published before their ACK, in batches.

I/O shell on the server's event loop (SinglePublishes) around a blocking batch publish
(publish_batch) that runs on one I/O thread per batch.
"""

# Design
# ------
# A one-chunk upload (most small files) is never stored as a patch: its chunk is
# decompressed from memory and published, and only then acknowledged (intake.py).
# Publishing them one pool job each cost a thread hop, a contended GIL hand-over and a
# chain of 3 fsyncs per file, each file's own. So the loop queues them, and one I/O
# thread publishes a whole batch:
#   1. each chunk: digest check, decompression into its staging file;
#   2. each staging file: fsync (its own: nothing vouches for a file but its fsync);
#      steps 1-2 run on STAGE_THREADS threads at once, each taking every n-th chunk:
#      creating a file (ext4's inode allocation) and its fsync wait on the kernel and
#      the disk, so they overlap;
#   3. each: rename onto its final name, in queue order (the last publish of a name wins);
#   4. one fsync of files/ for the batch (GroupSync: shared with other publishes);
#   5. the batch's records in one append to published.log and one fsync (the commit
#      point, after the files and their entries are durable).
# Then one hop back to the loop settles every chunk of the batch. Nothing is acked before
# step 5 returns, so what is acknowledged is durable, as with a publish of its own.
#
# Failures stay with their chunks. A chunk that fails steps 1-3 (bad digest, bad name,
# not zstd, a disk error on its file) gets its own outcome and leaves nothing behind; the
# others go on. Steps 4 and 5 are shared, so their failure is the failure of every chunk
# that reached them, and each of those files is taken back out of files/ (a file it
# replaced is put back): a publish that is not recorded leaves nothing. A disk error is
# answered STORAGE (the chunk was not stored: the client sends it again), a bad payload
# fails its upload. No chunk is stored as a patch instead: its ACK would say COMPLETE,
# which for a one-chunk upload means published, while its assembly could still fail.
#
# Each chunk's outcome is reported once, when it is settled on the loop (the PUBLISHED
# event and its kin, or FAILED), whoever waits for it; publish() then answers its sender
# with a SingleOutcome or raises. A second sender of the same chunk while it is being
# published waits for that publish and is told what it did (ALREADY_PUBLISHED, or the
# upload's failure); if that chunk was wrong in itself, or met a disk error, it tries a
# publish of its own.
#
# Bounds: a batch takes at most BATCH_FILES chunks, each at most BATCH_CHUNK_BYTES
# compressed (larger ones are published alone, a pool job each, as before), and a batched
# chunk may decompress to at most BATCH_OUTPUT_BYTES: one that goes past it is published
# alone afterwards, under the real limit. So a bomb or a large file costs a batch a few
# milliseconds, not the others' durability. At most BATCHES batches run at once; the
# first chunk after a quiet spell goes at once (a batch of one), and the chunks arriving
# while batches run wait for the next (group commit).

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypeAlias, assert_never, final

from postoffice.core.workers import WorkerPool
from postoffice.ingest.assembly import Staged, assemble, stage
from postoffice.ingest.chunkdigest import verify_chunk
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import (
    AssemblyError,
    ConflictError,
    IngestError,
    IngestStorageError,
    OutputLimitError,
    OutputRatioError,
)
from postoffice.ingest.messages import Chunk, FileId, file_id_hex
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.published import PublishedInfo
from postoffice.ingest.storage import ChunkStore

__all__ = [
    "ALONE",
    "ALREADY_PUBLISHED",
    "BATCHES",
    "BATCH_CHUNK_BYTES",
    "BATCH_FILES",
    "BATCH_OUTPUT_BYTES",
    "AlreadyPublished",
    "BatchLimits",
    "BatchOutcome",
    "SingleOutcome",
    "SinglePublishes",
    "SingleReports",
    "publish_batch",
    "single_info",
]

log = logging.getLogger(__name__)

#: Chunks published together, at most.
BATCH_FILES: Final = 64
#: A one-chunk upload larger than this (compressed) is published alone.
BATCH_CHUNK_BYTES: Final = 256 * 1024
#: A batched chunk that decompresses past this is taken out and published alone.
BATCH_OUTPUT_BYTES: Final = 4 * 1024 * 1024
#: Batches publishing at once.
BATCHES: Final = 2
#: Threads that stage and fsync one batch's files at once (its own thread among them).
STAGE_THREADS: Final = 8


@final
class _Alone:
    """The outcome of a batched chunk that must be published alone (its output is large)."""

    def __repr__(self) -> str:
        return "ALONE"


ALONE: Final = _Alone()

BatchOutcome: TypeAlias = PublishedInfo | _Alone | Exception
"""What a batch did with one chunk: its durable record, ALONE, or the error it met."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchLimits:
    """Where and under which limits a batch publishes."""

    files_dir: Path
    max_output_bytes: int
    max_window_log: int
    fsync: bool
    max_output_ratio: int = 0


def publish_batch(
    chunks: Sequence[Chunk],
    *,
    limits: BatchLimits,
    store: ChunkStore,
    now: float,
    pool: Executor | None = None,
) -> list[BatchOutcome]:
    """Publish one-chunk uploads together (see the design note); blocking.

    Returns one outcome per chunk, in order: the PublishedInfo of a chunk now durably
    published, ALONE for one whose output passes BATCH_OUTPUT_BYTES (nothing was
    published), or the exception that stopped it (ChecksumError, BadNameError,
    AssemblyError, IngestStorageError, ...). Never raises for a single chunk's failure.
    With a `pool`, the files are staged and fsynced on up to STAGE_THREADS threads at once
    (this one among them): creating a file and its fsync mostly wait on the kernel and
    the disk, so they overlap; one after the other, each waits for the last.
    """
    outcomes: list[BatchOutcome | None] = [None] * len(chunks)
    ways = 1 if pool is None else max(1, min(STAGE_THREADS, len(chunks)))
    work = [range(way, len(chunks), ways) for way in range(ways)]
    staged: list[Staged | None] = [None] * len(chunks)

    def stage_some(indexes: range) -> None:
        for at in indexes:
            staged[at], outcomes[at] = _stage_one(chunks[at], limits=limits, now=now)

    try:
        others = [] if pool is None else [pool.submit(stage_some, part) for part in work[1:]]
        try:
            stage_some(work[0])
        finally:
            for job in others:
                job.result()
        placed: list[tuple[int, Staged, bool]] = []
        for at, item in enumerate(staged):
            if item is None:
                continue
            try:
                placed.append((at, item, item.place()))  # in queue order: the last name wins
            except Exception as exc:
                outcomes[at] = exc
            finally:
                item.discard()
        if not placed:
            return _settled(outcomes)
        records = [item.published(replaced=replaced, now=now) for _, item, replaced in placed]
        try:
            if limits.fsync:
                store.syncer.sync(limits.files_dir)
            store.mark_published_many(records)
        except Exception as exc:
            # Not recorded, so not published: take the files back out, last placed first,
            # so that a name placed twice gets back the file it had before the batch.
            for at, item, _ in reversed(placed):
                item.unplace()
                outcomes[at] = exc
        else:
            for (at, item, _), record in zip(placed, records, strict=True):
                item.settle()
                outcomes[at] = record
    finally:
        for item in staged:
            if item is not None:
                item.discard()
    return _settled(outcomes)


def _stage_one(
    chunk: Chunk, *, limits: BatchLimits, now: float
) -> tuple[Staged | None, BatchOutcome | None]:
    """Check, decompress and fsync one chunk's staging file: (the staged file, None), or
    (None, the outcome that stopped it)."""
    cap = min(limits.max_output_bytes, BATCH_OUTPUT_BYTES)
    try:
        verify_chunk(chunk)
        staged = stage(
            info=single_info(chunk, now),
            patches=[chunk.data],
            files_dir=limits.files_dir,
            max_output_bytes=cap,
            max_window_log=limits.max_window_log,
            max_output_ratio=limits.max_output_ratio,
        )
    except OutputRatioError as exc:
        return None, exc  # a bomb: no larger cap would let it through
    except OutputLimitError as exc:
        return None, ALONE if cap < limits.max_output_bytes else exc
    except Exception as exc:
        return None, exc
    if limits.fsync:
        try:
            staged.sync()
        except Exception as exc:
            staged.discard()
            return None, exc
    return staged, None


def _settled(outcomes: list[BatchOutcome | None]) -> list[BatchOutcome]:
    settled: list[BatchOutcome] = []
    for outcome in outcomes:
        assert outcome is not None, "every chunk of a batch gets an outcome"
        settled.append(outcome)
    return settled


def single_info(chunk: Chunk, now: float) -> PayloadInfo:
    """The PayloadInfo of a one-chunk upload that was never stored."""
    return PayloadInfo(
        file_id=chunk.file_id,
        name=chunk.name,
        total=1,
        size=chunk.size,
        committed=frozenset({0}),
        created=now,
        updated=now,
        payload_digest=chunk.payload_digest,
        content_size=chunk.content_size,
    )


@final
@dataclass(frozen=True, slots=True)
class AlreadyPublished:
    """The same chunk, sent by another sender at the same moment, published the upload."""


ALREADY_PUBLISHED: Final = AlreadyPublished()

SingleOutcome: TypeAlias = PublishedInfo | AlreadyPublished
"""What SinglePublishes.publish did with a chunk: published it (its durable record), or
found it published by another sender of the same chunk."""


class SingleReports(Protocol):
    """What a one-chunk publish reports (reports.Reports), once per chunk."""

    def chunk_stored(self, chunk: Chunk, committed: int, total: int) -> None: ...

    def payload_complete(self, file_id: FileId, name: str) -> None: ...

    def published(
        self, done: PublishedInfo, seconds: float, *, level: int = logging.INFO
    ) -> None: ...

    def assembly_failed(
        self,
        file_id: FileId,
        *,
        name: str,
        total: int,
        size: int,
        payload_digest: bytes | None,
        error: AssemblyError,
    ) -> None: ...

    def publish_failed(self, file_id: FileId, error: BaseException) -> None: ...


@final
class SinglePublishes:
    """The one-chunk publishes of one server: queued on the loop, published in batches on
    `pool`, each outcome reported once through `reports` (see the design note)."""

    def __init__(
        self, *, config: IngestConfig, store: ChunkStore, pool: WorkerPool, reports: SingleReports
    ) -> None:
        self.store = store
        self.pool = pool
        self.reports = reports
        self.limits = BatchLimits(
            files_dir=config.files_path,
            max_output_bytes=config.max_output_bytes,
            max_window_log=config.max_window_log,
            fsync=config.fsync,
            max_output_ratio=config.max_output_ratio,
        )
        # File id -> (chunk digest, outcome) of every publish queued or running.
        self.pending: dict[FileId, tuple[bytes, asyncio.Future[SingleOutcome]]] = {}
        self._queue: list[tuple[Chunk, float]] = []  # (chunk, monotonic time queued)
        self._running = 0
        self._kick_scheduled = False
        self._stage_pool: ThreadPoolExecutor | None = None
        self.batches = 0  # batches run, for tests and status

    def __repr__(self) -> str:
        return (
            f"<SinglePublishes pending={len(self.pending)} queued={len(self._queue)}"
            f" running={self._running} batches={self.batches}>"
        )

    def close(self) -> None:
        """Let the fsync threads go (after the batches running now)."""
        if self._stage_pool is not None:
            self._stage_pool.shutdown(wait=False)

    async def publish(self, chunk: Chunk) -> SingleOutcome:
        """Publish a one-chunk upload before it is acknowledged; see SingleOutcome.

        Cancelling the caller does not stop the publish. Raises ChecksumError and
        BadNameError (the chunk is wrong), ConflictError (the id is being published with
        other bytes), AssemblyError (the payload will never decompress: nothing is stored,
        and the upload fails), IngestStorageError (a disk error: nothing was published or
        stored, and the chunk may be sent again).
        """
        file_id = chunk.file_id
        while (pending := self.pending.get(file_id)) is not None:
            digest, running = pending
            if digest != chunk.digest:
                raise ConflictError(
                    f"chunk 0 of {file_id_hex(file_id)} is being published with other bytes"
                )
            await asyncio.wait([running])
            error = running.exception()
            if error is None:
                match running.result():
                    case PublishedInfo() | AlreadyPublished():
                        return ALREADY_PUBLISHED
                    case never:
                        assert_never(never)
            if isinstance(error, AssemblyError):
                raise AssemblyError(f"upload {file_id_hex(file_id)} failed: {error}")
            # That chunk itself was wrong (its digest, its name), or its publish met a disk
            # error: this one may fare better.
        outcome: asyncio.Future[SingleOutcome] = asyncio.get_running_loop().create_future()
        outcome.add_done_callback(_observe)
        self.pending[file_id] = (chunk.digest, outcome)
        if len(chunk.data) > BATCH_CHUNK_BYTES:
            self._alone(chunk, time.monotonic())
        else:
            self._queue.append((chunk, time.monotonic()))
            if not self._kick_scheduled:
                # Chunks decoded from the same read join this batch.
                self._kick_scheduled = True
                asyncio.get_running_loop().call_soon(self._kick)
        return await asyncio.shield(outcome)

    def _kick(self) -> None:
        self._kick_scheduled = False
        while self._queue and self._running < BATCHES:
            batch, self._queue = self._queue[:BATCH_FILES], self._queue[BATCH_FILES:]
            self._start(batch)

    def _start(self, batch: list[tuple[Chunk, float]]) -> None:
        chunks = [chunk for chunk, _ in batch]
        now = time.time()
        if self._stage_pool is None:
            self._stage_pool = ThreadPoolExecutor(
                BATCHES * (STAGE_THREADS - 1), thread_name_prefix="ingest-stage"
            )
        pool, limits, store = self._stage_pool, self.limits, self.store
        self._running += 1
        self.batches += 1
        job = self.pool.submit(
            lambda: publish_batch(chunks, limits=limits, store=store, now=now, pool=pool)
        )
        job.add_done_callback(lambda done: self._finished(batch, done))

    def _finished(
        self, batch: list[tuple[Chunk, float]], done: asyncio.Future[list[BatchOutcome]]
    ) -> None:
        self._running -= 1
        try:
            outcomes: list[BatchOutcome] = done.result()
        except Exception as exc:  # the pool is closed, or a bug: every chunk gets it
            outcomes = [exc] * len(batch)
        ended = time.monotonic()
        published = 0
        for (chunk, queued), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, _Alone):
                self._alone(chunk, queued)
            else:
                published += isinstance(outcome, PublishedInfo)
                self._settle(chunk, outcome, ended - queued, level=logging.DEBUG)
        if published:
            log.info(
                "published batch files=%d of=%d seconds=%.3f",
                published,
                len(batch),
                ended - batch[0][1],
            )
        self._kick()

    def _alone(self, chunk: Chunk, queued: float) -> None:
        """Publish one chunk in a pool job of its own, under the real output limit."""
        limits, store = self.limits, self.store
        now = time.time()

        def publish() -> PublishedInfo:
            verify_chunk(chunk)
            return assemble(
                info=single_info(chunk, now),
                patches=[chunk.data],
                files_dir=limits.files_dir,
                max_output_bytes=limits.max_output_bytes,
                max_window_log=limits.max_window_log,
                max_output_ratio=limits.max_output_ratio,
                fsync=limits.fsync,
                now=now,
                syncer=store.syncer,
                record=store.mark_published,
            )

        def finished(job: asyncio.Future[PublishedInfo]) -> None:
            try:
                outcome: PublishedInfo | Exception = job.result()
            except Exception as exc:
                outcome = exc
            self._settle(chunk, outcome, time.monotonic() - queued)

        self.pool.submit(publish).add_done_callback(finished)

    def _settle(
        self,
        chunk: Chunk,
        outcome: PublishedInfo | Exception,
        seconds: float,
        *,
        level: int = logging.INFO,
    ) -> None:
        """Report a chunk's outcome, once (its publish's log line at `level`), and answer
        its senders."""
        entry = self.pending.pop(chunk.file_id, None)
        waiter = entry[1] if entry is not None else None
        try:
            answer = self._report(chunk, outcome, seconds, level)
        except BaseException as exc:
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _report(
        self, chunk: Chunk, outcome: PublishedInfo | Exception, seconds: float, level: int
    ) -> SingleOutcome:
        """Report what the publish did; the SingleOutcome for the sender, or raise what the
        chunk is wrong with."""
        reports = self.reports
        file_id = chunk.file_id
        if isinstance(outcome, PublishedInfo):
            reports.chunk_stored(chunk, 1, 1)
            reports.payload_complete(file_id, chunk.name)
            reports.published(outcome, seconds, level=level)
            return outcome
        if isinstance(outcome, AssemblyError):
            reports.assembly_failed(
                file_id,
                name=chunk.name,
                total=chunk.total,
                size=chunk.size,
                payload_digest=chunk.payload_digest,
                error=outcome,
            )
            raise outcome
        if isinstance(outcome, IngestError) and not isinstance(outcome, IngestStorageError):
            raise outcome  # the chunk itself is wrong (checksum, name)
        # A disk error, or a bug: not the payload's fault, and nothing was published.
        reports.publish_failed(file_id, outcome)
        if isinstance(outcome, IngestStorageError):
            raise outcome
        raise IngestStorageError(
            f"chunk 0 of {file_id_hex(file_id)} not published: {outcome!r}"
        ) from outcome


def _observe(future: asyncio.Future[SingleOutcome]) -> None:
    """Retrieve an outcome's exception even when its sender went away."""
    if not future.cancelled():
        future.exception()
