"""The ingest server's assemblies: which run, on which threads, and what they report.

I/O shell around assembly.py, on the server's event loop; the decompression itself runs
on threads.
"""

# Design
# ------
# Exactly one assembly runs per payload, guarded by `running` (file id -> task), which
# only the event loop touches:
#   - an upload's first committed chunk starts a *streaming* assembly (on threads of its
#     own, at most `stream_assemblies` at once), which asks the store for each next index
#     and waits until it is committed, so the decompression runs while the upload does;
#   - the chunk that completes the set starts one if none runs, and so does recovery for
#     payloads found complete at startup (these never wait, and run on the I/O pool);
#   - a streaming assembly that waits STREAM_IDLE_S for its next chunk (or whose server
#     drains) gives up without a trace (its staging file goes), and if the upload is
#     complete by then, a fresh one starts at once.
# A one-chunk upload (total 1) takes a shorter road, `publish_single`: the chunk is
# decompressed from memory and published before it is acknowledged, so its durable form
# is the published file plus its record, with no patch, meta.json or ids.list at all
# (1 fsync of its own plus 2 shared, against 4 plus 4 shared). singles.py publishes
# those in batches. If that fails for a reason other than the payload (a disk error),
# the chunk goes the usual way instead: stored, acknowledged, assembled with retries.
#
# Outcomes: PUBLISHED (the record is durable: PUBLISHED goes out, then the patches are
# removed), FAILED (the payload is bad for good: dropped, FAILED goes out, and later
# chunks of that id are refused), RETRY (a disk error or a bug: restarted after a
# backoff), GAVE_UP, GONE (aborted or expired meanwhile).

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar, final

from postoffice.core.runtime import Backoff
from postoffice.ingest.assembly import Piece, assemble
from postoffice.ingest.errors import (
    AssemblyError,
    UnknownFileError,
)
from postoffice.ingest.messages import Chunk, Failed, FileId, Published, file_id_hex
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.published import PublishedInfo
from postoffice.ingest.singles import SinglePublishes

if TYPE_CHECKING:
    from postoffice.ingest.server import IngestServer

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A streaming assembly waits this long for its next chunk, then gives up (the upload
#: stalled: its completing chunk starts a fresh assembly).
STREAM_IDLE_S: Final = 10.0
#: How often a waiting streaming assembly looks whether the server is draining.
STREAM_POLL_S: Final = 0.5

__all__ = ["STREAM_IDLE_S", "STREAM_POLL_S", "Assemblies", "FailedUpload", "published_message"]


class _Outcome(enum.Enum):
    PUBLISHED = "published"
    FAILED = "failed"
    RETRY = "retry"
    GAVE_UP = "gave up"
    GONE = "gone"


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedUpload:
    """An upload that will never be published: its FAILED event, and the total, size and
    name QUERY still answers for it (its chunks are gone)."""

    event: Failed
    name: str
    total: int
    size: int


class _StreamStalled(Exception):
    """A streaming assembly stopped waiting for its next chunk."""


@final
class Assemblies:
    """The assemblies of one IngestServer (see the design note)."""

    def __init__(self, server: IngestServer) -> None:
        self.server = server
        self.running: dict[FileId, asyncio.Task[_Outcome]] = {}
        # One-chunk uploads being published.
        self.singles = SinglePublishes(self)
        # One-chunk uploads whose publish failed and went the usual way: they stay on it,
        # so a re-send cannot publish them a second time beside their assembly.
        self.fallen_back: set[FileId] = set()
        self._streaming = 0
        self._stream_pool: ThreadPoolExecutor | None = None
        self._backoff: dict[FileId, Backoff] = {}

    def __repr__(self) -> str:
        return (
            f"<Assemblies running={len(self.running)} streaming={self._streaming}"
            f" singles={len(self.singles.pending)}>"
        )

    @property
    def busy(self) -> set[FileId]:
        """File ids being assembled now, one-chunk publishes included."""
        return set(self.running) | set(self.singles.pending)

    def close(self) -> None:
        """Let the streaming threads go (they end within STREAM_POLL_S of the drain)."""
        if self._stream_pool is not None:
            self._stream_pool.shutdown(wait=False)
        self.singles.close()

    # -- starting ----------------------------------------------------------------------

    def on_committed(self, file_id: FileId, *, complete: bool) -> None:
        """A new chunk of `file_id` is committed: make sure an assembly follows it."""
        if file_id in self.running:
            return
        config = self.server.config
        if complete:
            self.start(file_id)
        elif self._streaming < config.stream_assemblies and not config.assemble_via_part:
            self.start(file_id, streaming=True)

    def retry(self, file_id: FileId) -> None:
        server = self.server
        if server.accepting and server.store.info(file_id) is not None:
            self.start(file_id)

    def start(self, file_id: FileId, *, streaming: bool = False) -> None:
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
            if outcome is _Outcome.GAVE_UP and self.server.accepting:
                info = self.server.store.info(file_id)
                if info is not None and info.complete:
                    self.start(file_id)  # completed while we were giving up

        task.add_done_callback(done)

    # -- the assembly ------------------------------------------------------------------

    def _run_streaming(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run a streaming assembly on its own threads: it may wait for chunks, and must
        not hold an I/O thread meanwhile."""
        if self._stream_pool is None:
            self._stream_pool = ThreadPoolExecutor(
                max(1, self.server.config.stream_assemblies), thread_name_prefix="ingest-stream"
            )
        return asyncio.get_running_loop().run_in_executor(self._stream_pool, fn)

    def _piece_waiter(self, file_id: FileId) -> Callable[[int], Piece]:
        """next_piece for a streaming assembly: the chunk once committed (its bytes if the
        store kept them, else its patch), or give up."""
        store = self.server.store

        def next_piece(index: int) -> Piece:
            idle = 0.0
            while True:
                piece = store.wait_piece(file_id, index, STREAM_POLL_S)
                if piece is not None:
                    return piece
                idle += STREAM_POLL_S
                if idle >= STREAM_IDLE_S or not self.server.accepting:
                    raise _StreamStalled(f"chunk {index} not committed within {idle:.1f} s")

        return next_piece

    async def _assemble(self, file_id: FileId, streaming: bool) -> _Outcome:
        server = self.server
        hex_id = file_id_hex(file_id)
        info = server.store.info(file_id)
        if info is None:
            return _Outcome.GONE
        config = server.config
        began = time.monotonic()
        try:
            if streaming:
                waiter = self._piece_waiter(file_id)
                done = await self._run_streaming(
                    lambda: assemble(
                        info=info,
                        next_piece=waiter,
                        files_dir=config.files_path,
                        max_output_bytes=config.max_output_bytes,
                        max_window_log=config.max_window_log,
                        fsync=config.fsync,
                        syncer=server.store.syncer,
                    )
                )
            else:
                patches = server.store.patch_paths(file_id)
                done = await server.blocking(
                    lambda: assemble(
                        info=info,
                        patches=patches,
                        files_dir=config.files_path,
                        max_output_bytes=config.max_output_bytes,
                        max_window_log=config.max_window_log,
                        via_part=config.assemble_via_part,
                        fsync=config.fsync,
                        syncer=server.store.syncer,
                    )
                )
            await server.blocking(lambda: server.store.mark_published(done))
        except _StreamStalled as exc:
            log.info("streaming assembly gave up file_id=%s reason=%s", hex_id, exc)
            return _Outcome.GAVE_UP
        except UnknownFileError:
            return _Outcome.GONE  # aborted or expired while it was being assembled
        except AssemblyError as exc:
            await self._failed(info, exc)
            return _Outcome.FAILED
        except Exception as exc:
            # A disk error or a bug, not the payload's fault: the patches are intact, so
            # the assembler is restarted for this payload after a backoff delay.
            server.assembly_failures += 1
            backoff = self._backoff.setdefault(file_id, Backoff(initial_s=0.5, max_s=30))
            delay = backoff.next_delay()
            log.error(
                "assembly crashed file_id=%s reason=%r restart_in_s=%.2f",
                hex_id,
                exc,
                delay,
                exc_info=exc,
            )
            server.events.emit("assembly_retry", file_id=hex_id, error=repr(exc), retry_in_s=delay)
            asyncio.get_running_loop().call_later(delay, self.retry, file_id)
            return _Outcome.RETRY
        self.published(done, time.monotonic() - began)
        # The record is the commit point: the patches can go after the event, off the path.
        await server.blocking(lambda: server.store.remove_patches(file_id))
        return _Outcome.PUBLISHED

    async def _failed(self, info: PayloadInfo, exc: AssemblyError) -> None:
        """The payload will never decompress: drop its chunks, say so, refuse its id."""
        server = self.server
        file_id = info.file_id
        hex_id = file_id_hex(file_id)
        server.assembly_failures += 1
        failed = Failed(file_id=file_id, code=exc.code, message=str(exc))
        server.failed[file_id] = FailedUpload(
            event=failed, name=info.name, total=info.total, size=info.size
        )
        log.warning("assembly failed file_id=%s name=%s error=%r", hex_id, info.name, str(exc))
        await server.blocking(lambda: server.store.remove(file_id))
        server.events.emit(
            "assembly_failed", file_id=hex_id, name=info.name, code=exc.code.name, error=str(exc)
        )
        server.acks.publish(file_id, failed)

    def published(self, done: PublishedInfo, seconds: float, *, level: int = logging.INFO) -> None:
        """Count a publish and tell telemetry and the ack subscribers; the log line goes
        at `level` (batched one-chunk publishes log theirs at DEBUG, and a line per batch
        at INFO)."""
        server = self.server
        file_id = done.file_id
        hex_id = file_id_hex(file_id)
        self._backoff.pop(file_id, None)
        self.fallen_back.discard(file_id)
        server.published_total += 1
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
        server.events.emit(
            "published",
            file_id=hex_id,
            name=done.name,
            size=done.size,
            digest=done.digest.hex(),
            payload_digest=done.payload_digest.hex(),
            replaced=done.replaced,
            seconds=round(seconds, 6),
        )
        server.acks.publish(file_id, published_message(done))

    # -- one-chunk uploads (singles.py publishes them) -----------------------------------

    async def publish_single(self, chunk: Chunk) -> bool | None:
        """Publish a one-chunk upload before acknowledging it; see SinglePublishes.

        Returns True once it is published (the caller acks it COMPLETE); False when the
        caller must store it the usual way (a disk error here); None when the same chunk
        was being published by another sender, now done: the caller looks again (it is
        published, failed or stored by now). Cancelling the caller does not stop the
        publish. Raises ChecksumError and BadNameError (the chunk is wrong), ConflictError
        (the id is being published with other bytes), AssemblyError (the payload will
        never decompress: nothing is stored, and the upload fails).
        """
        return await self.singles.publish(chunk)

    def single_failed(self, chunk: Chunk, exc: AssemblyError) -> None:
        """A one-chunk upload will never decompress: say so, refuse its id (nothing was
        stored, so nothing is dropped)."""
        server = self.server
        file_id = chunk.file_id
        hex_id = file_id_hex(file_id)
        server.assembly_failures += 1
        failed = Failed(file_id=file_id, code=exc.code, message=str(exc))
        server.failed[file_id] = FailedUpload(
            event=failed, name=chunk.name, total=chunk.total, size=chunk.size
        )
        log.warning("assembly failed file_id=%s name=%s error=%r", hex_id, chunk.name, str(exc))
        server.events.emit(
            "assembly_failed", file_id=hex_id, name=chunk.name, code=exc.code.name, error=str(exc)
        )
        server.acks.publish(file_id, failed)

    def fall_back(self, file_id: FileId, exc: BaseException) -> bool:
        """A one-chunk publish met a disk error: the chunk goes the usual road for good."""
        self.fallen_back.add(file_id)
        self.server.assembly_failures += 1
        log.warning(
            "one-chunk publish failed, storing the chunk instead file_id=%s error=%r",
            file_id_hex(file_id),
            exc,
        )
        return False


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
