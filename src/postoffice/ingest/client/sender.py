"""The ingest client: compress a file, upload its chunks over the data ports, verify the publish.

Ingest layer, I/O shell (asyncio streams) around the pure protocol module. `IngestClient`
is the Python API; `postoffice ingest send` is built on it. Preparing the payload (hash,
file id, Zstandard copy, chunk plan) lives in payload.py, the connections in links.py,
the ack port's side in watches.py.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, TypedDict, TypeVar, Unpack, final

from postoffice.core.config import check_port, check_range
from postoffice.core.errors import BrokenError, PostOfficeError
from postoffice.ingest.client.links import (
    PIPELINE_DEPTH,
    Connector,
    Link,
    fetch_data_ports,
    open_tcp,
)
from postoffice.ingest.client.payload import (
    PreparedFile,
    discard_work_copy,
    open_payload,
    plan_chunks,
    prepare,
    read_chunk_frame,
)
from postoffice.ingest.client.watches import AckWatches
from postoffice.ingest.errors import (
    ErrorCode,
    IngestError,
    IngestProtocolError,
    error_for,
)
from postoffice.ingest.messages import (
    MAX_CHUNK_BYTES,
    MAX_STATUS_RANGES,
    Ack,
    ErrorReply,
    FileId,
    Published,
    Query,
    Status,
    UploadState,
    file_id_hex,
)
from postoffice.ingest.protocol import encode

# Design
# ------
# `send(path)` runs five steps, each resumable by simply calling it again:
#
#   prepare    (thread, or inline for a file up to 256 KiB) payload.prepare: hash the
#              file, derive its file id (so a restarted client finds its earlier upload),
#              and compress it into the work dir or reuse the copy an earlier run left
#              there (a .zst is only hashed). See payload.py.
#   subscribe  SUBSCRIBE on the ack port, then PING. The server replays PUBLISHED or
#              FAILED to a late subscriber, so the events that arrive before the PONG tell
#              how an *earlier* attempt ended; they are kept apart from this attempt's.
#              Sends that subscribe in the same loop iteration share one SUBSCRIBE (up to
#              MAX_SUBSCRIBE_IDS ids) and one PING (watches.py).
#   plan       QUERY on a data link; STATUS's missing ranges say which chunks to send.
#   send       parallel * PIPELINE_DEPTH workers take indexes from one queue; worker w
#              uses link w % parallel (links go round-robin over the data ports), so a
#              link has at most PIPELINE_DEPTH chunks in flight and memory holds at most
#              that many chunk frames. A one-chunk upload needs no workers: it goes over
#              the next link in turn, where up to SMALL_PIPELINE_DEPTH small chunks (of
#              any sends) may be in flight besides the large ones, and small frames
#              written in one loop iteration leave in one write (links.py). Replies are
#              matched to requests by request id.
#   wait       the final event for the id: FAILED raises, PUBLISHED is checked against
#              our own payload digest (the server decompressed exactly what we sent) and,
#              for a file we compressed, our own content size and digest.
#
# A link that drops is reconnected by the next request that needs it; a chunk is tried
# 1 + MAX_RETRIES times in all (drops, timeouts, and the retryable error codes).

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ClientOptions",
    "IngestClient",
    "SendResult",
    "error_for",
    "send_files",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CHUNK_SIZE: Final = 4 * 1024 * 1024
MAX_PARALLEL: Final = 256  # connections per client; each is a socket on both ends
MAX_RETRIES: Final = 3
RETRY_BACKOFF_S: Final = (0.1, 0.2, 0.4)  # before retry 1, 2, 3
RETRYABLE: Final = frozenset({ErrorCode.CHECKSUM, ErrorCode.STORAGE, ErrorCode.SHUTTING_DOWN})
"""Error codes that say "this attempt failed", not "this chunk is wrong": sent again."""

# Reading and framing a chunk up to this size (or opening and removing a payload this
# small) costs less than handing it to a thread.
_INLINE_BYTES: Final = 256 * 1024

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResult:
    """What one `send` did: `size` and `digest` (XXH3-128) are of the published
    (decompressed) file, `compressed_size` and `payload_digest` of what went over the
    wire; `skipped_chunks` were already on the server (a resumed upload); `replaced` says
    the server replaced a file of that name."""

    path: Path
    name: str
    file_id: FileId
    size: int
    digest: bytes
    payload_digest: bytes
    compressed_size: int
    chunks: int
    sent_chunks: int
    skipped_chunks: int
    seconds: float
    replaced: bool


def _is_small(path: Path) -> bool:
    """Whether `path` is small enough to prepare on the loop (a thread hop costs more).

    A file that cannot be stat'ed is prepared on a thread, which reports the error.
    """
    try:
        return os.stat(path).st_size <= _INLINE_BYTES
    except OSError:
        return False


@dataclass(slots=True, kw_only=True)
class _Run:
    """Shared state of one send's workers."""

    prepared: PreparedFile
    fd: int
    progress: ProgressFn | None
    done_bytes: int
    sent: int = 0
    stop: bool = False  # an ACK said the upload is already published

    def acked(self, index: int) -> None:
        self.sent += 1
        total = self.prepared.payload_size
        self.done_bytes = min(total, self.done_bytes + self.prepared.chunk_length(index))
        if self.progress is not None:
            self.progress(self.done_bytes, total)


class ClientOptions(TypedDict, total=False):
    """IngestClient's arguments, for `send_files`."""

    host: str
    sys_base: int
    data_base: int
    ports: int | None
    chunk_size: int
    parallel: int
    timeout_s: float
    work_dir: Path | None
    connect: Connector | None


@final
class IngestClient:
    """Uploads files to an ingest server; use as `async with IngestClient(...) as client`.

    Entering discovers the data ports (GET /info on the health port, sys_base) unless
    `ports` is given (then data_base .. data_base+ports-1), and opens the ack connection
    (sys_base+3). `parallel` connections in all are spread round-robin over the data
    ports. `timeout_s` bounds a connect, each reply, and the wait for the publish.
    `connect` replaces asyncio.open_connection (tests). Raises ConfigError for bad
    arguments; entering raises BrokenError when the server cannot be reached.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        sys_base: int = 7000,
        data_base: int = 7100,
        *,
        ports: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        parallel: int = 4,
        timeout_s: float = 60.0,
        work_dir: Path | None = None,
        connect: Connector | None = None,
    ) -> None:
        check_port("sys_base", sys_base)
        check_port("sys_base", sys_base + 3)
        if ports is not None:
            check_range("ports", ports, 1, 1024)
            check_range("data_base", data_base, 1, 65535)
            check_port("data_base", data_base + ports - 1)
        check_range("chunk_size", chunk_size, 1, MAX_CHUNK_BYTES)
        check_range("parallel", parallel, 1, MAX_PARALLEL)
        check_range("timeout_s", timeout_s, 0.001, None)
        self.host = host
        self.sys_base = sys_base
        self.data_base = data_base
        self.chunk_size = chunk_size
        self.parallel = parallel
        self.timeout_s = timeout_s
        self.work_dir = work_dir
        self.data_ports: tuple[int, ...] = (
            tuple(range(data_base, data_base + ports)) if ports is not None else ()
        )
        self._connect: Connector = connect if connect is not None else open_tcp
        self._links: list[Link] = []
        self._acks = AckWatches(host, sys_base + 3, connect=self._connect, timeout_s=timeout_s)
        self._next_link = 0  # the link the next one-chunk upload goes over
        self.files_sent = 0

    def __repr__(self) -> str:
        return (
            f"<IngestClient {self.host}:{self.sys_base} data_ports={list(self.data_ports)} "
            f"parallel={self.parallel} files_sent={self.files_sent}>"
        )

    async def __aenter__(self) -> IngestClient:
        if not self.data_ports:
            self.data_ports = await fetch_data_ports(
                self.host, self.sys_base, timeout_s=self.timeout_s, connect=self._connect
            )
        ports = self.data_ports
        self._links = [
            Link(
                self.host,
                ports[i % len(ports) :] + ports[: i % len(ports)],  # round-robin start
                connect=self._connect,
                timeout_s=self.timeout_s,
            )
            for i in range(self.parallel)
        ]
        await self._acks.link.ensure()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection."""
        await asyncio.gather(self._acks.link.close(), *(link.close() for link in self._links))

    async def send(
        self, path: Path, *, name: str | None = None, progress: ProgressFn | None = None
    ) -> SendResult:
        """Upload one file and return once the server has published it and we checked it.

        Sending the same file again resumes: only the chunks the server lacks are sent.
        `name` overrides the published name; `progress(done, total)` gets compressed bytes
        after each acknowledged chunk. Raises BadNameError, StorageError (local files),
        AssemblyError (the server could not publish it), the IngestError subclass of a
        refused chunk, IngestError when the published checksum is not ours or no publish
        came within timeout_s, BrokenError when the server stays unreachable.
        """
        began = time.monotonic()
        path = Path(path)
        if _is_small(path):
            prepared = prepare(path, chunk_size=self.chunk_size, work_dir=self.work_dir, name=name)
        else:
            prepared = await asyncio.to_thread(
                prepare, path, chunk_size=self.chunk_size, work_dir=self.work_dir, name=name
            )
        hex_id = file_id_hex(prepared.file_id)
        acks = self._acks
        watch = acks.watch(prepared.file_id)
        try:
            await self._retrying(f"subscribe {hex_id}", lambda: acks.subscribe(prepared.file_id))
            earlier, watch.final = watch.final, None
            if isinstance(earlier, Published):
                published, sent = earlier, 0  # an earlier attempt finished the job
            else:
                sent = await self._upload(prepared, progress)
                published = await acks.wait_published(
                    watch,
                    prepared.name,
                    timeout_s=self.timeout_s,
                    reconnect=lambda: self._retrying("reconnect to the ack port", acks.ready),
                )
        finally:
            acks.unwatch(watch)
        if published.payload_digest != prepared.payload_digest:
            raise IngestError(
                f"published payload digest {published.payload_digest.hex()} of {prepared.name}"
                f" does not match ours {prepared.payload_digest.hex()}: the server "
                "decompressed other bytes than we sent"
            )
        if prepared.digest is not None and (
            published.size != prepared.size or published.digest != prepared.digest
        ):
            raise IngestError(
                f"published digest {published.digest.hex()} ({published.size} bytes) of "
                f"{prepared.name} does not match ours {prepared.digest.hex()} "
                f"({prepared.size} bytes)"
            )
        if prepared.payload_size <= _INLINE_BYTES:
            discard_work_copy(prepared)
        else:
            await asyncio.to_thread(discard_work_copy, prepared)
        total = prepared.total
        result = SendResult(
            path=path,
            name=published.name,
            file_id=prepared.file_id,
            size=published.size,
            digest=published.digest,
            payload_digest=published.payload_digest,
            compressed_size=prepared.payload_size,
            chunks=total,
            sent_chunks=sent,
            skipped_chunks=max(0, total - sent),
            seconds=time.monotonic() - began,
            replaced=published.replaced,
        )
        self.files_sent += 1
        log.info(
            "published file=%s file_id=%s bytes=%d chunks=%d sent=%d skipped=%d seconds=%.3f",
            result.name,
            hex_id,
            result.size,
            total,
            sent,
            result.skipped_chunks,
            result.seconds,
        )
        return result

    # -- steps of send ---------------------------------------------------------------------

    async def _upload(self, prepared: PreparedFile, progress: ProgressFn | None) -> int:
        """Send what the server lacks; return how many chunks were sent."""
        if prepared.data is not None:
            fd = -1  # the payload is in memory
        elif prepared.payload_size <= _INLINE_BYTES:
            fd = open_payload(prepared.payload)
        else:
            fd = await asyncio.to_thread(open_payload, prepared.payload)
        try:
            if prepared.total == 1:
                # One chunk: no need to ask what is missing. A chunk the server already
                # has is answered DUPLICATE or PUBLISHED, which ends the upload as well.
                status = None
                indexes: tuple[int, ...] = (0,)
            else:
                status = await self._retrying("query", lambda: self._query(prepared.file_id))
                indexes = plan_chunks(status, total=prepared.total, size=prepared.payload_size)
            pending = sum(prepared.chunk_length(i) for i in indexes)
            run = _Run(
                prepared=prepared,
                fd=fd,
                progress=progress,
                done_bytes=max(0, prepared.payload_size - pending),
            )
            if progress is not None:
                progress(run.done_bytes, prepared.payload_size)
            while True:
                if indexes:
                    await self._send_chunks(run, indexes)
                # A STATUS lists at most MAX_STATUS_RANGES ranges: ask again for the rest.
                if run.stop or status is None or len(status.missing) < MAX_STATUS_RANGES:
                    return run.sent
                status = await self._retrying("query", lambda: self._query(prepared.file_id))
                if status.state is not UploadState.UPLOADING:
                    return run.sent
                indexes = plan_chunks(status, total=prepared.total, size=prepared.payload_size)
        finally:
            if fd >= 0:
                os.close(fd)

    async def _send_chunks(self, run: _Run, indexes: tuple[int, ...]) -> None:
        queue = collections.deque(indexes)
        workers = min(len(indexes), self.parallel * PIPELINE_DEPTH)
        if workers == 1:  # one chunk (a small file): no tasks to spread it over
            self._next_link = (self._next_link + 1) % self.parallel
            await self._worker(self._links[self._next_link], queue, run)
            return
        await _all_or_nothing(
            self._worker(self._links[w % self.parallel], queue, run) for w in range(workers)
        )

    async def _worker(self, link: Link, queue: collections.deque[int], run: _Run) -> None:
        while queue and not run.stop:
            await self._send_chunk(link, queue.popleft(), run)

    async def _send_chunk(self, link: Link, index: int, run: _Run) -> None:
        prepared = run.prepared
        what = f"chunk {index} of {prepared.name} ({file_id_hex(prepared.file_id)})"
        for attempt in range(MAX_RETRIES + 1):
            small = prepared.chunk_length(index) <= _INLINE_BYTES
            try:
                async with link.small_in_flight if small else link.in_flight:
                    await link.ensure()
                    request_id = link.next_id()
                    if small:
                        frame = read_chunk_frame(prepared, run.fd, index, request_id)
                    else:
                        frame = await asyncio.to_thread(
                            read_chunk_frame, prepared, run.fd, index, request_id
                        )
                    reply = await link.call(frame, request_id)
            except BrokenError as exc:
                failure: PostOfficeError = exc
            else:
                match reply:
                    case Ack(file_id=file_id, index=acked) if (
                        file_id == prepared.file_id and acked == index
                    ):
                        run.stop = run.stop or reply.published
                        run.acked(index)
                        return
                    case ErrorReply(code=code, message=message) if code in RETRYABLE:
                        failure = error_for(code, f"{what}: {message}")
                    case ErrorReply(code=code, message=message):
                        raise error_for(code, f"{what}: {message}")
                    case _:
                        raise IngestProtocolError(f"{what}: expected its ack, got {reply!r}")
            if attempt == MAX_RETRIES:
                raise failure
            log.info("retrying %s attempt=%d error=%r", what, attempt + 1, str(failure))
            await asyncio.sleep(RETRY_BACKOFF_S[attempt])
        raise AssertionError("unreachable")

    async def _query(self, file_id: FileId) -> Status:
        link = self._links[0]
        await link.ensure()
        request_id = link.next_id()
        reply = await link.call(encode(Query(file_id=file_id), request_id), request_id)
        match reply:
            case Status(file_id=fid) if fid == file_id:
                return reply
            case ErrorReply(code=code, message=message):
                raise error_for(code, f"query of {file_id_hex(file_id)}: {message}")
            case _:
                raise IngestProtocolError(
                    f"expected status of {file_id_hex(file_id)}, got {reply!r}"
                )

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op`, again after a BrokenError, up to MAX_RETRIES times with backoff."""
        for attempt in range(MAX_RETRIES + 1):
            try:
                return await op()
            except BrokenError as exc:
                if attempt == MAX_RETRIES:
                    raise
                log.info("retrying %s attempt=%d error=%r", what, attempt + 1, str(exc))
                await asyncio.sleep(RETRY_BACKOFF_S[attempt])
        raise AssertionError("unreachable")


async def _all_or_nothing(coros: Iterable[Awaitable[None]]) -> None:
    """Run `coros` together; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def send_files(
    paths: Iterable[Path | str], **client_kwargs: Unpack[ClientOptions]
) -> list[SendResult]:
    """Upload `paths` one after the other through one IngestClient(**client_kwargs)."""
    async with IngestClient(**client_kwargs) as client:
        return [await client.send(Path(p)) for p in paths]
