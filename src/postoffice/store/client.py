"""Clients of the store server: `Client` (blocking sockets) and `AsyncClient` (asyncio),
both on the pure `wire` codec. A non-OK status other than NOT_FOUND raises
StoreRequestError carrying it; a broken response closes the connection (BrokenError)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, cast, final

from postoffice.core.errors import BrokenError
from postoffice.core.framing import FrameDecoder, FrameError, FrameTooLarge
from postoffice.core.tracing import active as active_tracing
from postoffice.store.errors import StoreRequestError
from postoffice.store.wire import (
    CONNECTION_REPLY_ID,
    NEED_DATA,
    BatchOp,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    RequestType,
    Response,
    ScanPage,
    ScanRequest,
    StatsRequest,
    Status,
    StoreProtocolError,
    add_trace_context,
    decode_delete_body,
    decode_error_body,
    decode_response,
    decode_response_parts,
    decode_scan_body,
    decode_stats_body,
    encode_get,
    encode_put,
    encode_request,
)

if TYPE_CHECKING:
    from postoffice.core.otel import Span, Tracing

DEFAULT_PORT = 7400
_FRAMES_PER_PASS = 4096  # responses decoded per read_frames call


def _checked(response: Response) -> Response:
    if response.status is Status.OK or response.status is Status.NOT_FOUND:
        return response
    raise StoreRequestError(response.status, decode_error_body(response.body))


def _connection_reply(response: Response) -> StoreRequestError:
    """The error a reply with the reserved request id carries (BUSY, a broken frame)."""
    try:
        message = decode_error_body(response.body)
    except StoreProtocolError:
        message = repr(response.body[:64])
    return StoreRequestError(response.status, message)


@final
class Client:
    """A blocking client: one request at a time on one connection (a context manager)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, timeout_s: float = 30.0
    ):
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise BrokenError(f"cannot connect to the store at {host}:{port}: {exc}") from exc
        self._frames = FrameDecoder()
        self._next_id = 0

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def call(self, request: Request) -> Response:
        """Send one request and return its response (errors raise StoreRequestError).

        A request the protocol cannot carry raises StoreProtocolError before anything is
        sent; the connection stays usable.
        """
        self._next_id += 1
        wire = encode_request(request, self._next_id)
        try:
            self._sock.sendall(wire)
            while True:
                event = self._frames.next_event()
                if event is not NEED_DATA:
                    return _checked(decode_response(event))
                block = self._sock.recv(1 << 20)
                if not block:
                    raise BrokenError("the store closed the connection")
                self._frames.feed(block)
        except (OSError, FrameError, StoreProtocolError) as exc:
            self.close()
            raise BrokenError(f"store connection broken: {exc}") from exc

    def ping(self) -> None:
        """Round trip to the server."""
        self.call(PingRequest())

    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None."""
        response = self.call(GetRequest(key=key))
        return None if response.status is Status.NOT_FOUND else response.body

    def put(self, key: bytes, value: bytes) -> None:
        """Store `value` under `key` (durable when the server's durability is always)."""
        self.call(PutRequest(key=key, value=value))

    def delete(self, key: bytes) -> bool:
        """Delete `key`; whether it existed."""
        return decode_delete_body(self.call(DeleteRequest(key=key)).body)

    def batch(self, ops: Sequence[BatchOp]) -> None:
        """Apply puts and deletes all or nothing."""
        self.call(BatchRequest(ops=tuple(ops)))

    def scan(
        self,
        *,
        prefix: bytes | None = None,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 100,
    ) -> ScanPage:
        """Keys in order (start inclusive, end exclusive), at most `limit`."""
        request = ScanRequest(prefix=prefix, start=start, end=end, limit=limit)
        return decode_scan_body(self.call(request).body)

    def stats(self) -> dict[str, object]:
        """The server's statistics."""
        return decode_stats_body(self.call(StatsRequest()).body)


@final
class AsyncClient(asyncio.Protocol):
    """An asyncio client; requests may be issued concurrently (they are pipelined).

    An asyncio Protocol, not a stream pair: responses are matched to their futures in
    `data_received`, with no reader task and no coroutine per response. `submit` is the
    allocation-light primitive for proxies (the command server's store backend): it
    returns the future of the raw Response without checking its status.

    While tracing is on, a request made inside a span (the command server's span of the
    command it forwards) gets a client span of its own, whose context goes with it.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._frames = FrameDecoder()
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Response]] = {}
        self._broken: BrokenError | None = None
        self._outbox: list[bytes] = []  # requests of this loop iteration, sent together
        self._batch: list[tuple[int, int, int, bytes]] = []  # frames of one read
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._tracing = active_tracing()

    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> AsyncClient:
        """Open a connection; raises BrokenError when the server cannot be reached."""
        loop = asyncio.get_running_loop()
        try:
            _, client = await loop.create_connection(cls, host, port)
        except OSError as exc:
            raise BrokenError(f"cannot connect to the store at {host}:{port}: {exc}") from exc
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        """Whether requests can still be sent."""
        return self._broken is None

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._waiting)

    async def close(self) -> None:
        """Close the connection; pending requests fail with BrokenError."""
        self._fail(BrokenError("client closed"))
        await asyncio.shield(self.closed)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        # Every whole frame of the read in one pass, no Frame objects (read_frames).
        frames = self._frames
        waiting = self._waiting
        batch = self._batch
        frames.feed(data)
        broken: Exception | None = None
        more = True
        while more and broken is None:
            try:
                more = frames.read_frames(batch, _FRAMES_PER_PASS) == _FRAMES_PER_PASS
            except FrameError as exc:  # the frames before it are still answers
                broken = exc
            try:
                for type_, flags, request_id, payload in batch:
                    response = decode_response_parts(type_, flags, request_id, payload)
                    if request_id == CONNECTION_REPLY_ID:  # answers none: the server closes
                        broken = _connection_reply(response)
                        break
                    future = waiting.pop(request_id, None)
                    if future is not None and not future.done():
                        future.set_result(response)
            except StoreProtocolError as exc:
                broken = exc
            batch.clear()
        if broken is not None:
            self._fail(BrokenError(f"store connection broken: {broken}"))

    def eof_received(self) -> bool:
        self._fail(BrokenError("the store closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._fail(BrokenError(f"the store connection was lost{reason}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, exc: BrokenError) -> None:
        if self._broken is None:
            self._broken = exc
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    # -- requests ------------------------------------------------------------------------

    def submit(self, request: Request) -> asyncio.Future[Response]:
        """Send `request` now; the future holds its Response, whatever the status.

        Raises StoreProtocolError (nothing sent) for a request the protocol cannot carry
        and BrokenError when the connection is gone.
        """
        if self._broken is not None or self._transport is None:
            raise self._broken or BrokenError("not connected")
        request_id = self._next_id + 1
        return self._enqueue(request_id, encode_request(request, request_id))

    def submit_get(self, key: bytes) -> asyncio.Future[Response]:
        """`submit(GetRequest(key=key))` without making the request (a proxy's hot path)."""
        if self._broken is not None or self._transport is None:
            raise self._broken or BrokenError("not connected")
        request_id = self._next_id + 1
        return self._enqueue(request_id, encode_get(key, request_id))

    def submit_put(self, key: bytes, value: bytes) -> asyncio.Future[Response]:
        """`submit(PutRequest(key=key, value=value))` without making the request."""
        if self._broken is not None or self._transport is None:
            raise self._broken or BrokenError("not connected")
        request_id = self._next_id + 1
        return self._enqueue(request_id, encode_put(key, value, request_id))

    def _enqueue(self, request_id: int, wire: bytes) -> asyncio.Future[Response]:
        self._next_id = request_id
        loop = self._loop
        future: asyncio.Future[Response] = loop.create_future()
        self._waiting[request_id] = future
        if self._tracing is not None:
            wire = _traced(self._tracing, wire, future)
        # Corked: requests made in one loop iteration (a proxy's many clients, a gather)
        # leave in one send instead of a syscall each.
        if not self._outbox:
            loop.call_soon(self._send_outbox)
        self._outbox.append(wire)
        return future

    def _send_outbox(self) -> None:
        outbox = self._outbox
        if self._transport is not None and self._broken is None and outbox:
            self._transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
        outbox.clear()

    async def call(self, request: Request) -> Response:
        """Send one request and await its response (errors raise StoreRequestError)."""
        return _checked(await self.submit(request))

    async def ping(self) -> None:
        """Round trip to the server."""
        await self.call(PingRequest())

    async def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None."""
        response = _checked(await self.submit_get(key))
        return None if response.status is Status.NOT_FOUND else response.body

    async def put(self, key: bytes, value: bytes) -> None:
        """Store `value` under `key`."""
        _checked(await self.submit_put(key, value))

    async def delete(self, key: bytes) -> bool:
        """Delete `key`; whether it existed."""
        return decode_delete_body((await self.call(DeleteRequest(key=key))).body)

    async def batch(self, ops: Sequence[BatchOp]) -> None:
        """Apply puts and deletes all or nothing."""
        await self.call(BatchRequest(ops=tuple(ops)))

    async def scan(
        self,
        *,
        prefix: bytes | None = None,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 100,
    ) -> ScanPage:
        """Keys in order, at most `limit`."""
        request = ScanRequest(prefix=prefix, start=start, end=end, limit=limit)
        return decode_scan_body((await self.call(request)).body)

    async def stats(self) -> dict[str, object]:
        """The server's statistics."""
        return decode_stats_body((await self.call(StatsRequest())).body)


def _traced(tracing: Tracing, wire: bytes, future: asyncio.Future[Response]) -> bytes:
    """`wire` carrying the context of a new client span, a child of the current span and
    ended with `future`; `wire` as it was outside any span."""
    parent = tracing.current()
    if parent is None:
        return wire
    try:
        name = f"store {RequestType(wire[3]).name}"
    except ValueError:
        name = "store request"
    span = tracing.start(
        name,
        kind="client",
        parent=parent,
        attributes={"db.system": "postoffice-store", "db.operation.name": name[6:]},
    )
    context = tracing.context_of(span)
    if context is not None:
        try:
            wire = add_trace_context(wire, context)
        except FrameTooLarge:  # the 25 bytes do not fit: the request goes untraced
            span.set_attribute("postoffice.store.untraced", True)
    future.add_done_callback(lambda done: _ended(tracing, span, done))
    return wire


def _ended(tracing: Tracing, span: Span, future: asyncio.Future[Response]) -> None:
    error: BaseException | str | None = None
    if future.cancelled():
        error = "cancelled"
    elif future.exception() is not None:
        error = future.exception()
    else:
        status = future.result().status
        span.set_attribute("postoffice.store.status", status.name)
        if status is not Status.OK and status is not Status.NOT_FOUND:
            error = status.name
    tracing.end(span, error=error)
