"""The ingest client: compress a file, upload its chunks over the data ports, verify the publish.

Ingest layer, I/O shell (asyncio streams) around the pure protocol module. `IngestClient`
is the Python API; `postoffice ingest send` is built on it. Preparing the payload (hash,
file id, Zstandard copy, chunk plan) lives in payload.py, the connections in links.py.
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
from postoffice.ingest.errors import (
    AssemblyError,
    BadNameError,
    ChecksumError,
    ConflictError,
    ErrorCode,
    IngestError,
    IngestLimitError,
    IngestProtocolError,
    IngestStorageError,
    OutOfRangeError,
    UnknownFileError,
)
from postoffice.ingest.links import PIPELINE_DEPTH, Connector, Link, fetch_data_ports, open_tcp
from postoffice.ingest.messages import (
    MAX_CHUNK_BYTES,
    MAX_STATUS_RANGES,
    MAX_SUBSCRIBE_IDS,
    Ack,
    ErrorReply,
    Failed,
    FileId,
    Message,
    Ping,
    Pong,
    Published,
    Query,
    Status,
    Subscribe,
    Subscribed,
    UploadState,
    file_id_hex,
)
from postoffice.ingest.payload import (
    PreparedFile,
    discard_work_copy,
    open_payload,
    plan_chunks,
    prepare,
    read_chunk_frame,
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
#              MAX_SUBSCRIBE_IDS ids) and one PING.
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


# --- server errors ------------------------------------------------------------------------


_ERRORS: Final[dict[ErrorCode, type[IngestError]]] = {
    ErrorCode.BAD_FRAME: IngestProtocolError,
    ErrorCode.BAD_MESSAGE: IngestProtocolError,
    ErrorCode.CHECKSUM: ChecksumError,
    ErrorCode.CONFLICT: ConflictError,
    ErrorCode.BAD_NAME: BadNameError,
    ErrorCode.TOO_LARGE: IngestLimitError,
    ErrorCode.OUT_OF_RANGE: OutOfRangeError,
    ErrorCode.STORAGE: IngestStorageError,
    ErrorCode.SHUTTING_DOWN: IngestError,  # errors.py has no class of its own for these two
    ErrorCode.UNKNOWN_FILE: UnknownFileError,
    ErrorCode.ASSEMBLY: AssemblyError,
    ErrorCode.ABORTED: IngestError,
}


def error_for(code: ErrorCode, message: str) -> IngestError:
    """The exception that stands for a server's ERROR reply or FAILED event."""
    return _ERRORS.get(code, IngestError)(message)


@final
class _Watch:
    """One send's interest in its file id's final event on the ack port."""

    __slots__ = ("file_id", "final", "wakeup")

    def __init__(self, file_id: FileId) -> None:
        self.file_id = file_id
        self.final: Published | Failed | None = None
        self.wakeup = asyncio.Event()  # set on a final event and when the ack link drops


@final
class _Subscription:
    """File ids that subscribe together, and the outcome they share."""

    __slots__ = ("done", "file_ids")

    def __init__(self, file_id: FileId) -> None:
        self.file_ids = [file_id]
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a shared outcome's exception as seen: its waiters may all be gone."""
    if not future.cancelled():
        future.exception()


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
        self._ack = Link(
            host,
            (sys_base + 3,),
            connect=self._connect,
            timeout_s=timeout_s,
            on_event=self._on_ack_event,
            on_lost=self._on_ack_lost,
        )
        self._watches: dict[FileId, set[_Watch]] = {}
        self._subscribing: _Subscription | None = None  # ids gathered for one SUBSCRIBE
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
        await self._ack.ensure()
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
        await asyncio.gather(self._ack.close(), *(link.close() for link in self._links))

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
        watch = _Watch(prepared.file_id)
        self._watches.setdefault(prepared.file_id, set()).add(watch)
        try:
            await self._retrying(f"subscribe {hex_id}", lambda: self._subscribe(prepared.file_id))
            earlier, watch.final = watch.final, None
            if isinstance(earlier, Published):
                published, sent = earlier, 0  # an earlier attempt finished the job
            else:
                sent = await self._upload(prepared, progress)
                published = await self._wait_published(watch, prepared)
        finally:
            watchers = self._watches.get(prepared.file_id, set())
            watchers.discard(watch)
            if not watchers:
                self._watches.pop(prepared.file_id, None)
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

    async def _subscribe(self, file_id: FileId) -> None:
        """Watch `file_id` on the ack port; return once the replayed events are in.

        The sends that subscribe in the same loop iteration share one SUBSCRIBE and one
        PING: the first waits one iteration for the others to join, then sends them.
        """
        await self._ack_ready()
        joining = self._subscribing
        if joining is not None and len(joining.file_ids) < MAX_SUBSCRIBE_IDS:
            joining.file_ids.append(file_id)
            await asyncio.shield(joining.done)
            return
        batch = _Subscription(file_id)
        self._subscribing = batch
        # The first goes on the way the others do, in the same loop iteration, so their
        # chunks leave together (a first chunk alone would be published in a batch alone).
        together = asyncio.shield(batch.done)
        try:
            await asyncio.sleep(0)
            if self._subscribing is batch:
                self._subscribing = None
            # Both at once (written in this order): replies come in order, so once the
            # PONG is here, every replayed event is too.
            await asyncio.gather(
                self._ack_call(Subscribe(file_ids=tuple(batch.file_ids)), Subscribed),
                self._ack_call(Ping(), Pong),
            )
        except BaseException as exc:
            if self._subscribing is batch:
                self._subscribing = None
            # The others retry a BrokenError; an interrupted leader is one for them.
            shared = exc if isinstance(exc, Exception) else BrokenError("subscribe interrupted")
            batch.done.set_exception(shared)
            together.cancel()
            raise
        batch.done.set_result(None)
        await together

    async def _ack_ready(self) -> None:
        """Connect the ack link if it dropped, subscribing again to every watched id."""
        if self._ack.connected:
            return
        await self._ack.ensure()
        watched = tuple(self._watches)
        for start in range(0, len(watched), MAX_SUBSCRIBE_IDS):
            batch = watched[start : start + MAX_SUBSCRIBE_IDS]
            await self._ack_call(Subscribe(file_ids=batch), Subscribed)

    async def _ack_call(self, message: Subscribe | Ping, expected: type[Message]) -> None:
        request_id = self._ack.next_id()
        reply = await self._ack.call(encode(message, request_id), request_id)
        if isinstance(reply, ErrorReply):
            raise error_for(
                reply.code, f"ack port refused {type(message).__name__}: {reply.message}"
            )
        if not isinstance(reply, expected):
            raise IngestProtocolError(
                f"expected {expected.__name__} on the ack port, got {reply!r}"
            )

    async def _wait_published(self, watch: _Watch, prepared: PreparedFile) -> Published:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            watch.wakeup.clear()
            final = watch.final
            if isinstance(final, Published):
                return final
            if isinstance(final, Failed):
                raise error_for(final.code, f"{prepared.name} not published: {final.message}")
            if not self._ack.connected:
                await self._retrying("reconnect to the ack port", self._ack_ready)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise IngestError(
                    f"{prepared.name} ({file_id_hex(prepared.file_id)}) not published "
                    f"within {self.timeout_s} s"
                )
            try:
                async with asyncio.timeout(remaining):
                    await watch.wakeup.wait()
            except TimeoutError:
                pass

    def _on_ack_event(self, message: Message) -> None:
        if isinstance(message, Published | Failed):
            for watch in self._watches.get(message.file_id, ()):
                watch.final = message
                watch.wakeup.set()

    def _on_ack_lost(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.wakeup.set()

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
