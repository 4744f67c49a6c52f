"""The ingest client: compress a file, upload its chunks over the data ports, verify the publish.

Ingest layer, I/O shell (asyncio streams) around the pure protocol module. `IngestClient`
is the Python API; `postoffice ingest send` is built on it. Preparing the payload (hash,
file id, Zstandard copy, chunk plan) lives in payload.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, TypedDict, TypeVar, Unpack, final

from postoffice.core.config import check_port, check_range
from postoffice.core.errors import BrokenError, ClosedError, PostOfficeError, StorageError
from postoffice.core.framing import MAX_REQUEST_ID, FrameError
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
    plan_chunks,
    prepare,
)
from postoffice.ingest.protocol import MessageDecoder, NeedData, chunk_frame_parts, encode

# Design
# ------
# `send(path)` runs five steps, each resumable by simply calling it again:
#
#   prepare    (thread) payload.prepare: hash the file, derive its file id (so a
#              restarted client finds its earlier upload), and compress it into the work
#              dir or reuse the copy an earlier run left there (a .zst is only hashed).
#              See payload.py.
#   subscribe  SUBSCRIBE on the ack port, then PING. The server replays PUBLISHED or
#              FAILED to a late subscriber, so the events that arrive before the PONG tell
#              how an *earlier* attempt ended; they are kept apart from this attempt's.
#   plan       QUERY on a data link; STATUS's missing ranges say which chunks to send.
#   send       parallel * PIPELINE_DEPTH workers take indexes from one queue; worker w
#              uses link w % parallel (links go round-robin over the data ports), so a
#              link has at most PIPELINE_DEPTH chunks in flight and memory holds at most
#              that many chunk frames. Replies are matched to requests by request id.
#   wait       the final event for the id: FAILED raises, PUBLISHED is checked against
#              our own payload digest (the server decompressed exactly what we sent) and,
#              for a file we compressed, our own content size and digest.
#
# A link that drops is reconnected by the next request that needs it; a chunk is tried
# 1 + MAX_RETRIES times in all (drops, timeouts, and the retryable error codes).

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "PIPELINE_DEPTH",
    "ClientOptions",
    "Connector",
    "IngestClient",
    "SendResult",
    "error_for",
    "parse_info_response",
    "send_files",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CHUNK_SIZE: Final = 4 * 1024 * 1024
PIPELINE_DEPTH: Final = 4
"""Chunks in flight per connection: hides the server's fsync latency without letting one
connection pin more than PIPELINE_DEPTH chunks of memory on either side."""
MAX_PARALLEL: Final = 256  # connections per client; each is a socket on both ends
MAX_RETRIES: Final = 3
RETRY_BACKOFF_S: Final = (0.1, 0.2, 0.4)  # before retry 1, 2, 3
RETRYABLE: Final = frozenset({ErrorCode.CHECKSUM, ErrorCode.STORAGE, ErrorCode.SHUTTING_DOWN})
"""Error codes that say "this attempt failed", not "this chunk is wrong": sent again."""

MAX_INFO_BYTES: Final = 64 * 1024
"""Largest /info response read, in bytes: a few hundred in practice; bounds what a wrong
or hostile peer on the health port can make us buffer."""
# A STATUS with MAX_STATUS_RANGES ranges is 512 KiB; nothing else a server sends is large.
MAX_REPLY_BYTES: Final = MAX_STATUS_RANGES * 8 + 64 * 1024

_RECV_BYTES: Final = 256 * 1024
# Reading and framing a chunk up to this size (or opening and removing a payload this
# small) costs less than handing it to a thread.
_INLINE_BYTES: Final = 256 * 1024
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] (\d{3})(?: .*)?")

ProgressFn = Callable[[int, int], None]
Connector = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Opens a stream pair to (host, port): asyncio.open_connection, or an in-memory fake."""


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


# --- pure helpers -------------------------------------------------------------------------


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


def parse_info_response(data: bytes) -> tuple[int, ...]:
    """The data ports listed by a whole HTTP response to `GET /info`.

    Raises IngestLimitError past MAX_INFO_BYTES, IngestProtocolError for a status other
    than 200, a malformed response, or a body without a non-empty `data_ports` list.
    """
    if len(data) > MAX_INFO_BYTES:
        raise IngestLimitError(
            f"/info response of {len(data)} bytes exceeds limit {MAX_INFO_BYTES}"
        )
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise IngestProtocolError("/info response ends before its blank line")
    status_line, *header_lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise IngestProtocolError(
            f"/info response starts with {status_line[:60]!r}, expected an HTTP/1.x status line"
        )
    if match.group(1) != b"200":
        raise IngestProtocolError(f"/info answered status {match.group(1).decode()}, expected 200")
    length = _content_length(header_lines)
    if length is not None:
        if len(body) < length:
            raise IngestProtocolError(f"/info body of {len(body)} bytes, expected {length}")
        body = body[:length]
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise IngestProtocolError(f"/info body is not json: {exc}") from exc
    ports = doc.get("data_ports") if isinstance(doc, dict) else None
    if (
        not isinstance(ports, list)
        or not ports
        or not all(type(p) is int and 0 < p <= 65535 for p in ports)
    ):
        raise IngestProtocolError(f"/info data_ports is {ports!r}, expected a list of ports")
    return tuple(ports)


def _content_length(header_lines: list[bytes]) -> int | None:
    """The Content-Length header's value, if any; refuses chunked bodies (we ask HTTP/1.0)."""
    length = None
    for line in header_lines:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"transfer-encoding" and value.strip().lower() != b"identity":
            raise IngestProtocolError(f"/info uses transfer-encoding {value.strip()!r}")
        if key == b"content-length":
            text = value.strip()
            if not text.isdigit():
                raise IngestProtocolError(f"/info content-length {text[:20]!r} is not a number")
            length = int(text)
    return length


def _response_complete(data: bytes) -> bool:
    """True once `data` holds a head with Content-Length and that many body bytes."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    try:
        length = _content_length(head.split(b"\r\n")[1:])
    except IngestProtocolError:
        return True  # parse_info_response reports it
    return length is not None and len(body) >= length


# --- chunk frames (blocking: run in a thread) ---------------------------------------------


def _chunk_frame(
    prepared: PreparedFile, fd: int, index: int, request_id: int
) -> tuple[bytes, bytes]:
    """Read chunk `index` and frame it: (frame head, data), written one after the other
    so the data is never copied. Blocking; raises StorageError."""
    length = prepared.chunk_length(index)
    offset = index * prepared.chunk_size
    if prepared.data is not None:  # kept in memory by prepare()
        head, _ = chunk_frame_parts(
            file_id=prepared.file_id,
            index=index,
            total=prepared.total,
            size=prepared.payload_size,
            name=prepared.name,
            data=prepared.data[offset : offset + length],
            request_id=request_id,
        )
        return head, prepared.data[offset : offset + length]
    parts: list[bytes] = []
    got = 0
    try:
        while got < length:
            block = os.pread(fd, length - got, offset + got)
            if not block:
                raise StorageError(
                    f"{prepared.payload} ended at {offset + got} bytes, "
                    f"expected {prepared.payload_size}"
                )
            parts.append(block)
            got += len(block)
    except OSError as exc:
        raise StorageError(f"cannot read {prepared.payload}: {exc.strerror or exc}") from exc
    data = parts[0] if len(parts) == 1 else b"".join(parts) if parts else b""
    head, _ = chunk_frame_parts(
        file_id=prepared.file_id,
        index=index,
        total=prepared.total,
        size=prepared.payload_size,
        name=prepared.name,
        data=data,
        request_id=request_id,
    )
    return head, data


# --- connections ---------------------------------------------------------------------------


async def _open_tcp(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def fetch_data_ports(
    host: str, port: int, *, timeout_s: float, connect: Connector = _open_tcp
) -> tuple[int, ...]:
    """GET http://host:port/info and return its data ports (see parse_info_response).

    Raises BrokenError when the health port cannot be reached or does not answer in time.
    """
    where = f"http://{host}:{port}/info"
    host_header = f"[{host}]" if ":" in host else host
    request = (
        f"GET /info HTTP/1.0\r\nHost: {host_header}:{port}\r\nAccept: application/json\r\n\r\n"
    )
    data = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await connect(host, port)
            try:
                writer.write(request.encode("ascii"))
                await writer.drain()
                while not _response_complete(bytes(data)):
                    block = await reader.read(8192)
                    if not block:
                        break
                    data += block
                    if len(data) > MAX_INFO_BYTES:
                        break  # parse_info_response refuses it
            finally:
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
    except (OSError, TimeoutError) as exc:
        raise BrokenError(f"cannot read {where}: {exc or 'timed out'}") from exc
    return parse_info_response(bytes(data))


@final
class _Link:
    """One binary connection (a data port or the ack port) that reconnects on demand.

    `call` writes a request and waits for the reply carrying its request id. Events
    (request id 0) go to `on_event`; an ERROR with request id 0 (the server could not
    tell which request it answers) goes to every request in flight, each of which then
    acts on its code. Losing the connection fails every request in flight with
    BrokenError and calls `on_lost`. A failed connect moves on to the next of `ports`
    (a data port may be gone: the server scaled X down), so the retry tries another.
    """

    def __init__(
        self,
        host: str,
        ports: tuple[int, ...],
        *,
        connect: Connector,
        timeout_s: float,
        on_event: Callable[[Message], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.host = host
        self.ports = ports
        self.port = ports[0]
        self._connect = connect
        self._timeout_s = timeout_s
        self._on_event = on_event
        self._on_lost = on_lost
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._next_id = 0
        self._lock = asyncio.Lock()  # one connect at a time; one frame written at a time
        self.in_flight = asyncio.Semaphore(PIPELINE_DEPTH)
        self.connects = 0
        self.closed = False

    def __repr__(self) -> str:
        state = "CLOSED" if self.closed else "CONNECTED" if self._writer else "IDLE"
        return (
            f"<_Link {self.host}:{self.port} {state} pending={len(self._pending)} "
            f"connects={self.connects}>"
        )

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._writer is not None

    async def ensure(self) -> None:
        """Connect unless connected. Raises BrokenError, ClosedError after `close`."""
        if self._writer is not None:
            return
        async with self._lock:
            if self.closed:
                raise ClosedError(f"connection to {self.host}:{self.port} was closed")
            if self._writer is not None:
                return
            try:
                async with asyncio.timeout(self._timeout_s):
                    reader, writer = await self._connect(self.host, self.port)
            except (OSError, TimeoutError) as exc:
                failed = self.port
                self.port = self.ports[(self.ports.index(failed) + 1) % len(self.ports)]
                raise BrokenError(
                    f"cannot connect to {self.host}:{failed}: {exc or 'timed out'}"
                ) from exc
            self._writer = writer
            self.connects += 1
            self._reader_task = asyncio.create_task(self._read(reader, writer))

    def next_id(self) -> int:
        """A fresh request id (never 0: that marks events)."""
        self._next_id = self._next_id % MAX_REQUEST_ID + 1
        return self._next_id

    async def call(self, frame: bytes | tuple[bytes, ...], request_id: int) -> Message:
        """Send one request frame (or its parts, in order) and return the reply with its id.

        Raises BrokenError if the connection is lost or no reply comes within timeout_s.
        """
        writer = self._writer
        if writer is None:
            raise BrokenError(f"connection to {self.host}:{self.port} is not open")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with self._lock:
                if writer is not self._writer:
                    raise BrokenError(f"connection to {self.host}:{self.port} was reset")
                try:
                    if isinstance(frame, bytes):
                        writer.write(frame)
                    else:
                        for part in frame:
                            writer.write(part)
                    await writer.drain()
                except OSError as exc:
                    error = BrokenError(f"cannot write to {self.host}:{self.port}: {exc}")
                    self._drop(error, writer)
                    raise error from exc
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await future
            except TimeoutError as exc:
                error = BrokenError(
                    f"no reply from {self.host}:{self.port} within {self._timeout_s} s"
                )
                self._drop(error, writer)
                raise error from exc
        finally:
            self._pending.pop(request_id, None)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MessageDecoder(max_payload_bytes=MAX_REPLY_BYTES, max_chunk_bytes=0)
        where = f"{self.host}:{self.port}"
        try:
            while True:
                data = await reader.read(_RECV_BYTES)
                if not data:
                    error: PostOfficeError = BrokenError(f"{where} closed the connection")
                    break
                decoder.feed(data)
                while not isinstance(event := decoder.next_event(), NeedData):
                    self._dispatch(*event)
        except (FrameError, IngestError) as exc:
            error = BrokenError(f"bad reply from {where}: {exc}")
        except OSError as exc:
            error = BrokenError(f"connection to {where} lost: {exc}")
        self._drop(error, writer)

    def _dispatch(self, request_id: int, message: Message) -> None:
        if request_id:
            future = self._pending.get(request_id)
            # No waiter: a reply to a request that timed out or was cancelled.
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, ErrorReply):
            for future in self._pending.values():
                if not future.done():
                    future.set_result(message)
        elif self._on_event is not None:
            self._on_event(message)

    def _drop(self, error: PostOfficeError, writer: asyncio.StreamWriter) -> None:
        """Close `writer`; if it is the current connection, fail its requests in flight."""
        writer.close()
        if writer is not self._writer:
            return
        self._writer = None
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        if self._on_lost is not None and not self.closed:
            self._on_lost()

    async def close(self) -> None:
        """Close the connection for good."""
        self.closed = True
        writer, task = self._writer, self._reader_task
        if writer is None:
            return
        self._drop(ClosedError(f"connection to {self.host}:{self.port} closed"), writer)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        try:
            await writer.wait_closed()
        except OSError:
            pass


@final
class _Watch:
    """One send's interest in its file id's final event on the ack port."""

    __slots__ = ("file_id", "final", "wakeup")

    def __init__(self, file_id: FileId) -> None:
        self.file_id = file_id
        self.final: Published | Failed | None = None
        self.wakeup = asyncio.Event()  # set on a final event and when the ack link drops


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
        self._connect: Connector = connect if connect is not None else _open_tcp
        self._links: list[_Link] = []
        self._ack = _Link(
            host,
            (sys_base + 3,),
            connect=self._connect,
            timeout_s=timeout_s,
            on_event=self._on_ack_event,
            on_lost=self._on_ack_lost,
        )
        self._watches: dict[FileId, set[_Watch]] = {}
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
            _Link(
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
            fd = _open_payload(prepared.payload)
        else:
            fd = await asyncio.to_thread(_open_payload, prepared.payload)
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
        await _all_or_nothing(
            self._worker(self._links[w % self.parallel], queue, run) for w in range(workers)
        )

    async def _worker(self, link: _Link, queue: collections.deque[int], run: _Run) -> None:
        while queue and not run.stop:
            await self._send_chunk(link, queue.popleft(), run)

    async def _send_chunk(self, link: _Link, index: int, run: _Run) -> None:
        prepared = run.prepared
        what = f"chunk {index} of {prepared.name} ({file_id_hex(prepared.file_id)})"
        for attempt in range(MAX_RETRIES + 1):
            try:
                async with link.in_flight:
                    await link.ensure()
                    request_id = link.next_id()
                    if prepared.chunk_length(index) <= _INLINE_BYTES:
                        frame = _chunk_frame(prepared, run.fd, index, request_id)
                    else:
                        frame = await asyncio.to_thread(
                            _chunk_frame, prepared, run.fd, index, request_id
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
        """Watch `file_id` on the ack port; return once the replayed events are in."""
        await self._ack_ready()
        # Both at once (written in this order): replies come in order, so once the PONG
        # is here, every replayed event is too.
        await asyncio.gather(
            self._ack_call(Subscribe(file_ids=(file_id,)), Subscribed),
            self._ack_call(Ping(), Pong),
        )

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


def _open_payload(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StorageError(f"cannot open {path}: {exc.strerror or exc}") from exc


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
