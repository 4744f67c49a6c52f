"""Assemblies: the ingest server's assemblies of stored uploads (which run, on which
threads) and the reports of how each ended.

I/O shell on the server's event loop around assembly.py; the decompression runs on threads.
"""

# Design
# ------
# Exactly one assembly runs per payload, guarded by `running` (file id -> task), which
# only the event loop touches. The intake hands each newly committed chunk on with
# `on_committed`:
#   - an upload's first committed chunk starts a *streaming* assembly (on threads of its
#     own, at most `stream_assemblies` at once), which asks the store for each next index
#     and waits until it is committed, so the decompression runs while the upload does;
#   - the chunk that completes the set starts one if none runs, and so does recovery for
#     payloads found complete at startup (these never wait, and run on the I/O pool);
#   - a streaming assembly that waits STREAM_IDLE_S for its next chunk (or whose server
#     drains) gives up without a trace (its staging file goes), and if the upload is
#     complete by then, a fresh one starts at once.
# One-chunk uploads never come here (singles.py), unless the server assembles via .part.
#
# A FRAMED upload (its chunks are independent zstd frames, framed.py) is assembled by a
# task that starts with its first committed chunk, like a streaming one but on no stream
# thread and with no cap: each chunk committed (or already committed, after a restart or
# a restart of the task) is decompressed on `decompress_pool`, in any order, and when all
# are done the task publishes on the I/O pool. It gives up as a streaming one does: no
# commit and nothing decompressing for STREAM_IDLE_S, or the server drains; its staging
# file goes, and the next commit starts it again from the patches. With --via-part a
# FRAMED upload takes the seed's path like any other.
#
# Outcomes, each reported once through AssemblyReports: PUBLISHED (the record is
# durable: PUBLISHED goes out, then the patches are removed), FAILED (the payload is bad
# for good: dropped, FAILED goes out, and chunks of that id are refused for a while), RETRY (a
# disk error or a bug: restarted after a backoff), GAVE_UP, GONE (aborted or expired
# meanwhile).

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Protocol, final

from postoffice.core.runtime import Backoff
from postoffice.core.workers import WorkerPool
from postoffice.ingest.assembly import Piece, assemble
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import AssemblyError, UnknownFileError
from postoffice.ingest.framed import FramedAssembly
from postoffice.ingest.messages import FileId, file_id_hex
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.published import PublishedInfo, Recorder
from postoffice.ingest.storage import ChunkStore
from postoffice.ingest.tracing import IngestTracing

log = logging.getLogger(__name__)

#: A streaming assembly waits this long for its next chunk, then gives up (the upload
#: stalled: its completing chunk starts a fresh assembly).
STREAM_IDLE_S: Final = 10.0
#: How often a waiting streaming assembly looks whether the server is draining.
STREAM_POLL_S: Final = 0.5

__all__ = ["STREAM_IDLE_S", "STREAM_POLL_S", "Assemblies", "AssemblyOutputs", "AssemblyReports"]


class AssemblyReports(Protocol):
    """What an assembly reports of its end (reports.Reports), once per assembly."""

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

    def assembly_crashed(
        self, file_id: FileId, error: BaseException, retry_in_s: float
    ) -> None: ...


class AssemblyOutputs(Protocol):
    """A second destination of the output of assemblies that write it in order (not
    FRAMED ones): a cluster node's uploads to S3 (clustered.py)."""

    async def open(self, info: PayloadInfo) -> Callable[[memoryview], None]:
        """The tee of one assembly of `info`: called with each output block, in order, on
        a worker thread. Raises what makes the assembly retry."""
        ...

    async def close(self, file_id: FileId) -> None:
        """The assembly of `file_id` ended: drop what `open` began unless its publish was
        recorded. Never raises."""
        ...


class _Outcome(enum.Enum):
    PUBLISHED = "published"
    FAILED = "failed"
    RETRY = "retry"
    GAVE_UP = "gave up"
    GONE = "gone"


class _StreamStalled(Exception):
    """A streaming assembly stopped waiting for its next chunk."""


@final
class Assemblies:
    """The assemblies of one server's stored uploads (see the design note).

    Blocking work runs on `pool` (and on threads of its own for streaming assemblies);
    what happens is told to `reports`. `drain()` stops new starts and makes waiting
    streaming assemblies give up.
    """

    def __init__(
        self,
        *,
        config: IngestConfig,
        store: ChunkStore,
        pool: WorkerPool,
        reports: AssemblyReports,
    ) -> None:
        self.config = config
        self.store = store
        self.pool = pool
        self.reports = reports
        self.running: dict[FileId, asyncio.Task[_Outcome]] = {}
        self.draining = False
        self._streaming = 0
        self._stream_pool: ThreadPoolExecutor | None = None
        self._backoff: dict[FileId, Backoff] = {}
        #: The uploads' spans (the intake sets it when tracing is on), else None.
        self.tracing: IngestTracing | None = None
        #: Decompresses the chunks of FRAMED uploads, sized by decompress_threads
        #: (resize() follows a reload); its threads start with the first FRAMED chunk.
        self.decompress_pool = WorkerPool(config.decompress_pool_size, name="ingest-zstd")
        self._framed: dict[FileId, _FramedRun] = {}
        #: Records a publish, on the thread that assembled it: the store's, or in cluster
        #: mode one that puts the file into the object store first (clustered.py).
        self.record: Recorder = store.mark_published
        #: In cluster mode, where the output of an in-order assembly also goes; else None.
        self.outputs: AssemblyOutputs | None = None

    def __repr__(self) -> str:
        return (
            f"<Assemblies running={len(self.running)} streaming={self._streaming}"
            f" framed={len(self._framed)}>"
        )

    def resize(self, config: IngestConfig) -> None:
        """Take new settings: the decompression pool follows decompress_threads."""
        self.config = config
        if config.decompress_pool_size != self.decompress_pool.size:
            self.decompress_pool.resize(config.decompress_pool_size)

    def drain(self) -> None:
        """Start no more assemblies; streaming ones waiting for chunks give up."""
        self.draining = True

    def close(self) -> None:
        """Let the streaming threads go (they end within STREAM_POLL_S of the drain), and
        the decompression threads."""
        if self._stream_pool is not None:
            self._stream_pool.shutdown(wait=False)
        self.decompress_pool.close()

    # -- starting ----------------------------------------------------------------------

    def on_committed(
        self, file_id: FileId, *, complete: bool, index: int | None = None, framed: bool = False
    ) -> None:
        """A chunk of `file_id` (`index`, when known) is committed: make sure an assembly
        follows it. `framed`: the upload is FRAMED."""
        run = self._framed.get(file_id)
        if run is not None:
            if index is not None:
                self._submit(run, index)
            return
        if file_id in self.running:
            return
        config = self.config
        if complete or (framed and not config.assemble_via_part):
            self.start(file_id)
        elif self._streaming < config.stream_assemblies and not config.assemble_via_part:
            self.start(file_id, streaming=True)

    def start(self, file_id: FileId, *, streaming: bool = False) -> None:
        """Start the upload's assembly unless one runs."""
        if file_id in self.running:
            return
        if streaming:
            self._streaming += 1
        task = asyncio.ensure_future(self._assemble(file_id, streaming))
        self.running[file_id] = task

        def done(task: asyncio.Task[_Outcome]) -> None:
            if self.running.get(file_id) is task:
                del self.running[file_id]
            if streaming:
                self._streaming -= 1
            outcome = None if task.cancelled() else task.result()
            if outcome is _Outcome.GAVE_UP and not self.draining:
                info = self.store.info(file_id)
                if info is not None and info.complete:
                    self.start(file_id)  # completed while we were giving up

        task.add_done_callback(done)

    def _retry(self, file_id: FileId) -> None:
        if not self.draining and self.store.info(file_id) is not None:
            self.start(file_id)

    # -- the assembly ------------------------------------------------------------------

    def _run_streaming(self, fn: Callable[[], PublishedInfo]) -> asyncio.Future[PublishedInfo]:
        """Run a streaming assembly on its own threads: it may wait for chunks, and must
        not hold an I/O thread meanwhile."""
        if self._stream_pool is None:
            self._stream_pool = ThreadPoolExecutor(
                max(1, self.config.stream_assemblies), thread_name_prefix="ingest-stream"
            )
        return asyncio.get_running_loop().run_in_executor(self._stream_pool, fn)

    def _piece_waiter(self, file_id: FileId) -> Callable[[int], Piece]:
        """next_piece for a streaming assembly: the chunk once committed (its bytes if the
        store kept them, else its patch), or give up."""
        store = self.store

        def next_piece(index: int) -> Piece:
            idle = 0.0
            while True:
                piece = store.wait_piece(file_id, index, STREAM_POLL_S)
                if piece is not None:
                    return piece
                idle += STREAM_POLL_S
                if idle >= STREAM_IDLE_S or self.draining:
                    raise _StreamStalled(f"chunk {index} not committed within {idle:.1f} s")

        return next_piece

    async def _assemble(self, file_id: FileId, streaming: bool) -> _Outcome:
        store = self.store
        info = store.info(file_id)
        if info is None:
            return _Outcome.GONE
        config = self.config
        began = time.monotonic()
        tracing = self.tracing
        record = self.record
        began_ns = 0
        if tracing is not None:
            began_ns = time.time_ns()
            record = tracing.timed_record(file_id, record)
        outputs = self.outputs
        tee = None
        try:
            if info.content_size is not None and not config.assemble_via_part:
                done = await self._assemble_framed(info, record)
            elif streaming:
                waiter = self._piece_waiter(file_id)
                if outputs is not None:
                    tee = await outputs.open(info)
                done = await self._run_streaming(
                    lambda: assemble(
                        info=info,
                        next_piece=waiter,
                        files_dir=config.files_path,
                        max_output_bytes=config.max_output_bytes,
                        max_window_log=config.max_window_log,
                        max_output_ratio=config.max_output_ratio,
                        fsync=config.fsync,
                        syncer=store.syncer,
                        record=record,
                        tee=tee,
                    )
                )
            else:
                patches = store.patch_paths(file_id)
                if outputs is not None:
                    tee = await outputs.open(info)
                done = await self.pool.submit(
                    lambda: assemble(
                        info=info,
                        patches=patches,
                        files_dir=config.files_path,
                        max_output_bytes=config.max_output_bytes,
                        max_window_log=config.max_window_log,
                        max_output_ratio=config.max_output_ratio,
                        via_part=config.assemble_via_part,
                        fsync=config.fsync,
                        syncer=store.syncer,
                        record=record,
                        tee=tee,
                    )
                )
        except _StreamStalled as exc:
            log.info("streaming assembly gave up file_id=%s reason=%s", file_id_hex(file_id), exc)
            return _Outcome.GAVE_UP
        except UnknownFileError:
            if tracing is not None:
                tracing.failed(file_id, "aborted or expired")
            return _Outcome.GONE  # aborted or expired while it was being assembled
        except AssemblyError as exc:
            if tracing is not None:
                tracing.failed(file_id, exc)
            # The payload will never decompress: drop its chunks, say so, refuse its id.
            self.reports.assembly_failed(
                file_id,
                name=info.name,
                total=info.total,
                size=info.size,
                payload_digest=info.payload_digest,
                error=exc,
            )
            await self.pool.submit(lambda: store.remove(file_id))
            return _Outcome.FAILED
        except Exception as exc:
            # A disk error or a bug, not the payload's fault: the patches are intact, so
            # the assembler is restarted for this payload after a backoff delay.
            backoff = self._backoff.setdefault(file_id, Backoff(initial_s=0.5, max_s=30))
            delay = backoff.next_delay()
            self.reports.assembly_crashed(file_id, exc, delay)
            asyncio.get_running_loop().call_later(delay, self._retry, file_id)
            return _Outcome.RETRY
        finally:
            if tee is not None and outputs is not None:
                await outputs.close(file_id)
        self._backoff.pop(file_id, None)
        self.reports.published(done, time.monotonic() - began)
        if tracing is not None:
            tracing.published(done, began_ns)
        # The record is the commit point: the patches can go after the event, off the path.
        await self.pool.submit(lambda: store.remove_patches(file_id))
        return _Outcome.PUBLISHED

    # -- FRAMED uploads ----------------------------------------------------------------

    async def _assemble_framed(self, info: PayloadInfo, record: Recorder) -> PublishedInfo:
        """Decompress every chunk of a FRAMED upload as it is committed, then publish
        (see the design note). Raises as assemble() does, and _StreamStalled."""
        file_id = info.file_id
        config = self.config
        assembly = FramedAssembly(
            info=info, files_dir=config.files_path, max_window_log=config.max_window_log
        )
        run = _FramedRun(assembly)
        self._framed[file_id] = run
        self.decompress_pool.start()
        try:
            await self.pool.submit(assembly.create)
            # Chunks committed meanwhile waited in `run.early`: none may write before
            # create() has emptied the staging file, which a crash may have left full.
            run.ready = True
            now = self.store.info(file_id)
            if now is None:
                raise UnknownFileError(f"no upload {file_id_hex(file_id)}")
            for index in sorted(now.committed | run.early):
                self._submit(run, index)
            idle = 0.0
            while run.done < info.total:
                if run.error is not None:
                    raise run.error
                run.changed.clear()
                try:
                    await asyncio.wait_for(run.changed.wait(), STREAM_POLL_S)
                except TimeoutError:
                    idle += STREAM_POLL_S
                else:
                    idle = 0.0
                stalled = run.in_flight == 0 and run.error is None and run.done < info.total
                if stalled and (self.draining or idle >= STREAM_IDLE_S):
                    raise _StreamStalled(
                        f"{run.done} of {info.total} chunks decompressed, no chunk "
                        f"committed within {idle:.1f} s"
                    )
            if run.error is not None:
                raise run.error
            return await self.pool.submit(
                lambda: assembly.finish(fsync=config.fsync, syncer=self.store.syncer, record=record)
            )
        finally:
            del self._framed[file_id]
            run.closed = True
            while run.in_flight:  # no thread may write to the staging file once it goes
                run.changed.clear()
                await run.changed.wait()
            assembly.discard()

    def _submit(self, run: _FramedRun, index: int) -> None:
        """Decompress chunk `index` of a FRAMED upload on the decompression pool, once."""
        if index in run.submitted or run.closed or run.error is not None:
            return
        if not run.ready:
            run.early.add(index)
            return
        run.submitted.add(index)
        run.in_flight += 1
        store = self.store
        assembly = run.assembly
        file_id = assembly.info.file_id
        patch = store.patches_dir / file_id_hex(file_id) / f"patch_{index}.bin"

        def decompress() -> None:
            offset = store.content_offset(file_id, index)
            piece = store.wait_piece(file_id, index, 0)
            if piece is None or offset is None:
                raise UnknownFileError(f"chunk {index} of {file_id_hex(file_id)} is not committed")
            assembly.decompress(index, piece, offset, patch)

        future = self.decompress_pool.submit(decompress)

        def done(future: asyncio.Future[None]) -> None:
            run.in_flight -= 1
            error = None if future.cancelled() else future.exception()
            if future.cancelled():
                error = UnknownFileError(f"chunk {index} of {file_id_hex(file_id)} cancelled")
            if error is not None:
                if run.error is None:
                    run.error = error
            else:
                run.done += 1
            run.changed.set()

        future.add_done_callback(done)


@final
class _FramedRun:
    """The event-loop side of one FRAMED upload's assembly: what was handed to the
    decompression pool, what came back."""

    __slots__ = (
        "assembly",
        "changed",
        "closed",
        "done",
        "early",
        "error",
        "in_flight",
        "ready",
        "submitted",
    )

    def __init__(self, assembly: FramedAssembly) -> None:
        self.assembly = assembly
        self.ready = False  # the staging file is created (empty): chunks may go
        self.early: set[int] = set()  # committed before that
        self.submitted: set[int] = set()
        self.in_flight = 0
        self.done = 0
        self.error: BaseException | None = None
        self.closed = False
        self.changed = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<_FramedRun {self.assembly!r} in_flight={self.in_flight} done={self.done}"
            f" error={self.error!r}>"
        )
