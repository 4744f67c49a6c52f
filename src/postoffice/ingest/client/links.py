"""The ingest client's connections: Link (one binary connection that reconnects and
matches replies to requests) and data-port discovery over the health port's GET /info.

Ingest layer, I/O shell (asyncio streams) around the pure protocol module; sender.py uses it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, final

from postoffice.core.errors import BrokenError, ClosedError, PostOfficeError
from postoffice.core.framing import MAX_REQUEST_ID, FrameError
from postoffice.ingest.errors import IngestError, IngestLimitError, IngestProtocolError
from postoffice.ingest.messages import MAX_STATUS_RANGES, ErrorReply, Message
from postoffice.ingest.protocol import MessageDecoder, NeedData

__all__ = [
    "MAX_INFO_BYTES",
    "MAX_REPLY_BYTES",
    "PIPELINE_DEPTH",
    "SMALL_FRAME_BYTES",
    "SMALL_PIPELINE_DEPTH",
    "Connector",
    "Link",
    "NodeLinks",
    "ServerInfo",
    "fetch_data_ports",
    "fetch_info",
    "open_tcp",
    "parse_info",
    "parse_info_response",
]

PIPELINE_DEPTH: Final = 4
"""Chunks in flight per connection: hides the server's fsync latency without letting one
connection pin more than PIPELINE_DEPTH chunks of memory on either side."""
SMALL_PIPELINE_DEPTH: Final = 8
"""Small chunks (up to SMALL_FRAME_BYTES) in flight per connection, besides the large
ones: they cost little memory, and the server publishes small files in batches, which
fill only if many are in flight (its default max_in_flight per connection is 8 too)."""
SMALL_FRAME_BYTES: Final = 256 * 1024
"""Frames up to this size are gathered: those written in the same loop iteration leave
in one write (one send system call, not one per frame and part)."""
MAX_INFO_BYTES: Final = 64 * 1024
"""Largest /info response read, in bytes: a few hundred in practice; bounds what a wrong
or hostile peer on the health port can make us buffer."""
# A STATUS with MAX_STATUS_RANGES ranges is 512 KiB; nothing else a server sends is large.
MAX_REPLY_BYTES: Final = MAX_STATUS_RANGES * 8 + 64 * 1024

_RECV_BYTES: Final = 256 * 1024
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] (\d{3})(?: .*)?")

Connector = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Opens a stream pair to (host, port): asyncio.open_connection, or an in-memory fake."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerInfo:
    """What a client needs of `GET /info`: the data ports, and the ack port when the
    response names it (`sys_ports.ack`)."""

    data_ports: tuple[int, ...]
    ack_port: int | None


def parse_info_response(data: bytes) -> tuple[int, ...]:
    """The data ports listed by a whole HTTP response to `GET /info` (see parse_info)."""
    return parse_info(data).data_ports


def parse_info(data: bytes) -> ServerInfo:
    """The data ports and ack port of a whole HTTP response to `GET /info`.

    Raises IngestLimitError past MAX_INFO_BYTES, IngestProtocolError for a status other
    than 200, a malformed response, a body without a non-empty `data_ports` list, or a
    `sys_ports.ack` that is not a port.
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
    sys_ports = doc.get("sys_ports")
    ack = sys_ports.get("ack") if isinstance(sys_ports, dict) else None
    if ack is not None and (type(ack) is not int or not 0 < ack <= 65535):
        raise IngestProtocolError(f"/info sys_ports.ack is {ack!r}, expected a port")
    return ServerInfo(data_ports=tuple(ports), ack_port=ack)


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


async def open_tcp(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The default Connector: asyncio.open_connection."""
    return await asyncio.open_connection(host, port)


async def fetch_data_ports(
    host: str, port: int, *, timeout_s: float, connect: Connector = open_tcp
) -> tuple[int, ...]:
    """GET http://host:port/info and return its data ports (see fetch_info)."""
    info = await fetch_info(host, port, timeout_s=timeout_s, connect=connect)
    return info.data_ports


async def fetch_info(
    host: str, port: int, *, timeout_s: float, connect: Connector = open_tcp
) -> ServerInfo:
    """GET http://host:port/info and return its ports (see parse_info).

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
    return parse_info(bytes(data))


@final
class Link:
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
        self.small_in_flight = asyncio.Semaphore(SMALL_PIPELINE_DEPTH)
        # Small frames waiting for the end of this loop iteration, to leave in one write.
        self._gathered: list[bytes] = []
        self._gathered_for: asyncio.StreamWriter | None = None
        self.connects = 0
        self.closed = False

    def __repr__(self) -> str:
        state = "CLOSED" if self.closed else "CONNECTED" if self._writer else "IDLE"
        return (
            f"<Link {self.host}:{self.port} {state} pending={len(self._pending)} "
            f"connects={self.connects}>"
        )

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._writer is not None

    def retarget(self, host: str, ports: tuple[int, ...]) -> None:
        """Connect to `host` and `ports` from the next `ensure` on (another node of a
        cluster); the open connection, if any, is dropped now (its requests fail)."""
        writer = self._writer
        if writer is not None:
            self._drop(BrokenError(f"connection to {self.host}:{self.port} retargeted"), writer)
        self.host, self.ports, self.port = host, ports, ports[0]

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
                    self._write(writer, frame)
                    await writer.drain()
                except OSError as exc:
                    error = BrokenError(f"cannot write to {self.host}:{self.port}: {exc}")
                    # This call raises the error itself: its own future is not failed too,
                    # or nobody would ever retrieve that exception.
                    self._pending.pop(request_id, None)
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
            # A drop fails every pending future, also that of a call that raised its own
            # error before awaiting it (queued behind a write, or cancelled): the drop's
            # error is then this call's to discard, or asyncio logs it as never retrieved.
            if future.done() and not future.cancelled():
                future.exception()

    def _write(self, writer: asyncio.StreamWriter, frame: bytes | tuple[bytes, ...]) -> None:
        """Write a frame: a small one is gathered with the others of this loop iteration;
        a large one is written at once (after what is gathered), part by part, uncopied."""
        parts = (frame,) if isinstance(frame, bytes) else frame
        if sum(len(part) for part in parts) <= SMALL_FRAME_BYTES:
            if not self._gathered:
                self._gathered_for = writer
                asyncio.get_running_loop().call_soon(self._flush)
            self._gathered.extend(parts)
            return
        self._flush()
        for part in parts:
            writer.write(part)

    def _flush(self) -> None:
        """Write the gathered frames in one write, to the connection they were meant for."""
        gathered, writer = self._gathered, self._gathered_for
        if not gathered:
            return
        self._gathered, self._gathered_for = [], None
        if writer is None or writer is not self._writer:
            return  # that connection is gone: its requests failed with it
        try:
            writer.write(b"".join(gathered))
        except (OSError, RuntimeError) as exc:
            self._drop(BrokenError(f"cannot write to {self.host}:{self.port}: {exc}"), writer)

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
        if self._gathered_for is writer:
            self._gathered, self._gathered_for = [], None
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
            async with asyncio.timeout(self._timeout_s):
                await writer.wait_closed()
        except TimeoutError:
            # Bytes still unsent to a peer cut off by the network (no FIN, no RST) hold a
            # closing transport open until TCP gives up, many minutes on: drop them.
            writer.transport.abort()
        except OSError:
            pass


@final
class NodeLinks:
    """One node of the ingest service as a client sees it: its address (host and health
    port) and, once its data ports are known, `parallel` Links spread round-robin over
    them (created by `open`)."""

    def __init__(self, host: str, health_port: int) -> None:
        self.host = host
        self.health_port = health_port
        self.data_ports: tuple[int, ...] = ()
        #: Its ack port once its GET /info named it; else its health port + 3.
        self.ack_port: int | None = None
        self.links: list[Link] = []

    def __repr__(self) -> str:
        return (
            f"<NodeLinks {self.host}:{self.health_port} data_ports={list(self.data_ports)} "
            f"links={len(self.links)}>"
        )

    @property
    def address(self) -> tuple[str, int]:
        """(host, health port): how the node is listed and named in a MOVED reply."""
        return self.host, self.health_port

    def open(
        self, data_ports: tuple[int, ...], *, parallel: int, connect: Connector, timeout_s: float
    ) -> None:
        """Make the node's links to `data_ports` (they connect on first use)."""
        self.data_ports = ports = data_ports
        self.links = [
            Link(
                self.host,
                ports[i % len(ports) :] + ports[: i % len(ports)],  # round-robin start
                connect=connect,
                timeout_s=timeout_s,
            )
            for i in range(parallel)
        ]

    async def close(self) -> None:
        """Close every link of the node."""
        await asyncio.gather(*(link.close() for link in self.links))
