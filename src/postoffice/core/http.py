"""A tiny HTTP/1.1 server for health probes and `/metrics`: h11 inside an asyncio.Protocol.

Core layer: h11 is the pure parser, `HttpProtocol` the thin I/O shell around it.

Design: a connection serves one request at a time. h11 emits `Request`, then
`EndOfMessage`; the route runs on `EndOfMessage`. A route returning an awaitable runs as
a task while reading is paused, and pipelined requests wait in h11's buffer until the
response is written and `start_next_cycle` rearms the parser. Requests with a body, an
oversized head or broken syntax get one error response and then the connection closes,
since the rest of the stream can no longer be trusted to line up with requests.

Limits, as nginx keeps them (worker_connections, keepalive_timeout, client_header_timeout):
a `ConnectionManager` per listener admits at most `max_connections` (one over it gets a
503 and is closed at once, so a flood of idle connections cannot take every descriptor
of the process and with it the service's own port), closes a connection with no request
in progress after `idle_timeout_s`, and one whose request head has not arrived whole
`request_timeout_s` after its first byte (a 408).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, TypeAlias, cast, final

import h11
from prometheus_client.registry import Collector

from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import BrokenError
from postoffice.core.listeners import describe_os_error
from postoffice.core.logs import kv
from postoffice.core.metrics import render

log = logging.getLogger(__name__)

#: A request head (request line plus headers) past this is refused with 431: probes and
#: scrapers send a few hundred bytes, and the cap bounds what one peer can make us buffer.
MAX_HEAD_BYTES: Final = 16 * 1024

#: Pending connections the kernel queues for us: a scrape storm must not see resets.
LISTEN_BACKLOG: Final = 1024

#: The HTTP ports' default limits: probes and scrapers need a handful of connections,
#: each sends its request head at once, and a keep-alive scraper comes back within a
#: minute (nginx: worker_connections, keepalive_timeout, client_header_timeout).
HTTP_MAX_CONNECTIONS: Final = 512
HTTP_IDLE_TIMEOUT_S: Final = 60.0
HTTP_REQUEST_TIMEOUT_S: Final = 10.0


def http_limits(
    *,
    max_connections: int = HTTP_MAX_CONNECTIONS,
    idle_timeout_s: float = HTTP_IDLE_TIMEOUT_S,
    request_timeout_s: float = HTTP_REQUEST_TIMEOUT_S,
) -> ConnectionLimits:
    """The limits of an HTTP port, for `serve_http`'s and `serve_metrics`'s `limits`.

    The hook a server's config uses to make them settings (the store's `--http-*` flags).
    A timeout of 0 turns it off. The output and partial-request limits stay off: a
    response is small or a stream, and a head is capped at MAX_HEAD_BYTES. Raises
    ConfigError naming the value out of range.
    """
    return ConnectionLimits(
        max_connections=max_connections,
        idle_timeout_s=idle_timeout_s,
        request_timeout_s=request_timeout_s,
        output_hard_limit_bytes=0,
        output_soft_limit_bytes=0,
        max_partial_bytes=0,
    )


HTTP_LIMITS: Final = http_limits()

#: What a connection over the limit or past the request deadline gets before the close:
#: written raw, since h11 answers only a request it has read.
_FULL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 20\r\nconnection: close\r\n\r\ntoo many connections\n"
)
_TIMED_OUT: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n"
)

_ALLOWED_METHODS: Final = (b"GET", b"HEAD")
_ALLOW_HEADER: Final = b"GET, HEAD"
_TEXT: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """What a route answers: status code, body, and the body's content type."""

    status: int
    body: bytes
    content_type: str = _TEXT


@dataclass(frozen=True, slots=True, kw_only=True)
class Stream:
    """An endless or long response: its chunks are sent as they come (chunked encoding).

    The connection closes when the iterator ends or the client goes away (the iterator is
    then closed, so a subscriber can unsubscribe in its `finally`).
    """

    chunks: AsyncIterator[bytes]
    content_type: str = _TEXT


Route: TypeAlias = Callable[[], Response | Stream | Awaitable[Response]]

_NOT_FOUND: Final = Response(status=404, body=b"not found\n")
_NOT_ALLOWED: Final = Response(status=405, body=b"method not allowed\n")
_TOO_LARGE: Final = Response(status=413, body=b"request bodies are not accepted\n")
_INTERNAL_ERROR: Final = Response(status=500, body=b"internal server error\n")


def _error_response(status: int) -> Response:
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "bad request"
    return Response(status=status, body=f"{phrase}\n".encode())


def _head_bytes(request: h11.Request) -> int:
    """Roughly the size of `request`'s head on the wire (`name: value\\r\\n` per header)."""
    size = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n\r\n")
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    return size


def _has_body(request: h11.Request) -> bool:
    """Whether `request` announces a body: any Transfer-Encoding, or Content-Length > 0."""
    for name, value in request.headers:  # h11 lower-cases names and validates the values
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and int(value) > 0:
            return True
    return False


@final
class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection answering GET and HEAD from `routes` (path -> route).

    Routing ignores the query string. Unknown paths get 404, other methods 405 with an
    Allow header, a route that raises gets 500 (logged with its traceback) and the
    connection stays open. A head over MAX_HEAD_BYTES gets 431, malformed syntax 400, a
    request body 413; each of these closes the connection after the response. With a
    `manager`, a connection over its limit gets 503 and one whose head is late 408, each
    then closed, and one idle past its timeout is closed.
    """

    def __init__(
        self, routes: Mapping[str, Route], manager: ConnectionManager | None = None
    ) -> None:
        self._routes: Final = routes
        self._manager = manager
        clock: Clock = MONOTONIC if manager is None else manager.clock
        self._clock = clock
        # What the manager reads (core.connections.Managed).
        self.conn_id = 0
        self.last_active = clock()
        self.bytes_in = 0
        self.bytes_out = 0
        #: When the request head now arriving began (None: no request is arriving).
        self.partial_since: float | None = None
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None
        self._peer = "-"
        self._request: h11.Request | None = None
        self._task: asyncio.Future[None] | None = None
        self._busy = False
        self._closed = False
        self._requests = 0

    def __repr__(self) -> str:
        if self._closed:
            state = "CLOSED"
        elif self._busy:
            state = "BUSY"
        elif self._transport is None:
            state = "CONNECTING"
        else:
            state = "READING"
        return f"<HttpProtocol {self._peer} {state} requests={self._requests}>"

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport and the peer's address for logs."""
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = f"{peer[0]}:{peer[1]}"
        elif peer:
            self._peer = str(peer)
        if self._manager is not None:
            refusal = self._manager.admit(self)
            if refusal is not None:
                log.debug("http connection refused %s", kv(peer=self._peer, reason=refusal))
                self._manager = None  # never admitted: nothing to release
                self._transport.write(_FULL)
                self._close()

    def data_received(self, data: bytes) -> None:
        """Feed h11 and answer every complete request, unless a route is still running."""
        if self._closed:
            return
        self.bytes_in += len(data)
        if self.partial_since is None and not self._busy:
            self.partial_since = self._clock()
        self._conn.receive_data(data)
        self._drain()
        if not self._busy and not self._conn.trailing_data[0]:
            self.partial_since = None  # every byte read belonged to a request now answered

    def eof_received(self) -> bool:
        """Let h11 see the EOF; keep the socket open so a running route can still answer."""
        if not self._closed:
            self._conn.receive_data(b"")
            self._drain()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the transport and cancel a route still running for this connection."""
        self._closed = True
        if self._manager is not None:
            self._manager.release(self)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if exc is not None:
            log.debug("http connection lost %s", kv(peer=self._peer, error=exc))

    # what the connection manager asks (core.connections.Managed)

    def can_idle_close(self) -> bool:
        """Idle: no request arriving, none being answered."""
        return not self._busy and self.partial_since is None and not self._closed

    def on_idle_timeout(self) -> None:
        self._close()

    def shutdown_requested(self) -> None:
        if not self._busy:
            self._close()

    def abort(self, reason: str) -> None:
        if not self._closed and self._transport is not None:
            self._closed = True
            self._transport.abort()

    def check_deadlines(self, now: float) -> None:
        """Answer 408 and close when a request head is late (`request_timeout_s`)."""
        manager = self._manager
        since = self.partial_since
        if manager is None or since is None or self._busy or self._closed:
            return
        timeout = manager.limits.request_timeout_s
        if timeout > 0 and now - since > timeout:
            manager.request_timeouts += 1
            log.debug("http request timeout %s", kv(peer=self._peer, timeout_s=timeout))
            assert self._transport is not None
            self._transport.write(_TIMED_OUT)
            self._close()

    # the shell

    def _drain(self) -> None:
        """Handle h11 events until it needs more bytes, a route is running, or we close."""
        while not self._busy and not self._closed:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                log.debug(
                    "http bad request %s",
                    kv(peer=self._peer, status=exc.error_status_hint, error=exc),
                )
                self._respond(_error_response(exc.error_status_hint), close=True)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.EndOfMessage):
                self.partial_since = None
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
            # Data never arrives: a request announcing a body is refused at its head.

    def _on_request(self, request: h11.Request) -> None:
        self._requests += 1
        if _head_bytes(request) > MAX_HEAD_BYTES:
            # h11 only caps an *incomplete* head; a complete one can arrive in one read.
            log.debug("http head too large %s", kv(peer=self._peer, limit=MAX_HEAD_BYTES))
            self._respond(_error_response(431), close=True)
        elif _has_body(request):
            self._respond(_TOO_LARGE, close=True)
        else:
            self._request = request

    def _dispatch(self) -> None:
        request = self._request
        self._request = None
        if request is None:  # the head was refused and the connection is closing
            return
        head_only = request.method == b"HEAD"
        if request.method not in _ALLOWED_METHODS:
            self._respond(_NOT_ALLOWED, extra=((b"allow", _ALLOW_HEADER),))
            return
        path = request.target.partition(b"?")[0].decode("latin-1")
        route = self._routes.get(path)
        if route is None:
            self._respond(_NOT_FOUND, head_only=head_only)
            return
        try:
            result = route()
        except Exception:
            log.exception("http route failed %s", kv(peer=self._peer, path=path))
            self._respond(_INTERNAL_ERROR, head_only=head_only)
            return
        if isinstance(result, Response):
            self._respond(result, head_only=head_only)
            return
        if isinstance(result, Stream):
            self._busy = True
            self._task = asyncio.ensure_future(self._stream(result, head_only=head_only))
            return
        # One request at a time: stop reading until the route has answered.
        self._busy = True
        assert self._transport is not None
        self._transport.pause_reading()
        self._task = asyncio.ensure_future(self._finish(result, path=path, head_only=head_only))

    async def _finish(self, pending: Awaitable[Response], *, path: str, head_only: bool) -> None:
        try:
            response = await pending
        except Exception:
            log.exception("http route failed %s", kv(peer=self._peer, path=path))
            response = _INTERNAL_ERROR
        self._task = None
        if self._closed:
            return
        self._busy = False
        self._respond(response, head_only=head_only)
        if not self._closed:
            assert self._transport is not None
            self._transport.resume_reading()
            self._drain()

    async def _stream(self, stream: Stream, *, head_only: bool) -> None:
        """Send a Stream's chunks as they come; close the connection when it ends."""
        transport = self._transport
        assert transport is not None
        headers = [(b"content-type", stream.content_type.encode("latin-1"))]
        transport.write(self._send(h11.Response(status_code=200, headers=headers)))
        try:
            if not head_only:
                async for chunk in stream.chunks:
                    if self._closed:
                        break
                    if chunk:
                        transport.write(self._send(h11.Data(data=chunk)))
            if not self._closed:
                transport.write(self._send(h11.EndOfMessage()))
        finally:
            aclose = getattr(stream.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            self._close()

    def _respond(
        self,
        response: Response,
        *,
        head_only: bool = False,
        close: bool = False,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Write `response` whole; close if asked or if h11 says the peer expects it."""
        headers = [
            (b"content-type", response.content_type.encode("latin-1")),
            (b"content-length", str(len(response.body)).encode("ascii")),
            *extra,
        ]
        if close:
            headers.append((b"connection", b"close"))
        try:
            reason = HTTPStatus(response.status).phrase.encode("ascii")
        except ValueError:
            reason = b""
        try:
            out = self._send(
                h11.Response(status_code=response.status, headers=headers, reason=reason)
            )
            if response.body and not head_only:
                out += self._send(h11.Data(data=response.body))
            out += self._send(h11.EndOfMessage())
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            log.warning(
                "http response not sendable %s",
                kv(peer=self._peer, status=response.status, error=exc),
            )
            self._close()
            return
        assert self._transport is not None
        self._transport.write(out)
        self.bytes_out += len(out)
        self.last_active = self._clock()
        if close or self._conn.our_state is h11.MUST_CLOSE:
            self._close()
        elif self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()

    def _send(self, event: h11.Event) -> bytes:
        return self._conn.send(event) or b""

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            assert self._transport is not None
            self._transport.close()


async def serve_metrics(
    registry: Collector,
    ready: Callable[[], bool],
    *,
    host: str,
    port: int,
    limits: ConnectionLimits = HTTP_LIMITS,
) -> asyncio.Server:
    """A service's HTTP port: /metrics from `registry`, /healthz, and /readyz from `ready`.

    Raises what `serve_http` raises.
    """
    routes = {"/metrics": metrics_route(registry), **health_routes(ready)}
    return await serve_http(routes, host=host, port=port, limits=limits)


async def serve_http(
    routes: Mapping[str, Route],
    *,
    host: str,
    port: int,
    limits: ConnectionLimits = HTTP_LIMITS,
    clock: Clock = MONOTONIC,
) -> asyncio.Server:
    """Listen on `host:port` (port 0 picks a free one) and serve `routes` until closed,
    keeping `limits` (max_connections, idle_timeout_s, request_timeout_s).

    The bound address is `server.sockets[0].getsockname()`. Raises BrokenError when the
    operating system refuses the address (in use, not local, no permission).
    """
    loop = asyncio.get_running_loop()
    manager = ConnectionManager(limits, clock=clock)
    try:
        server = await loop.create_server(
            lambda: HttpProtocol(routes, manager), host, port, backlog=LISTEN_BACKLOG
        )
    except OSError as exc:
        reason = describe_os_error(exc)
        raise BrokenError(f"cannot listen for http on {host}:{port}: {reason}") from exc
    _sweep_while_serving(loop, server, manager)
    return server


def _sweep_while_serving(
    loop: asyncio.AbstractEventLoop, server: asyncio.Server, manager: ConnectionManager
) -> None:
    """Sweep `manager` every sweep interval until `server` is closed: a timer, not a task,
    so nothing is left to cancel when the listener or the loop goes."""

    def tick() -> None:
        if not server.is_serving():
            return
        try:
            manager.sweep()
        except Exception:
            log.exception("http sweep failed")
        loop.call_later(manager.sweep_interval(), tick)

    loop.call_later(manager.sweep_interval(), tick)


def metrics_route(registry: Collector) -> Route:
    """A route answering the Prometheus text exposition of `registry`."""

    def metrics() -> Response:
        # Rendered on the loop thread on purpose: collectors read the services' plain
        # counters, which only that thread may touch without locks.
        body, content_type = render(registry)
        return Response(status=200, body=body, content_type=content_type)

    return metrics


def health_routes(ready: Callable[[], bool]) -> dict[str, Route]:
    """`/healthz` (200 while the process serves) and `/readyz` (200 or 503 from `ready()`)."""

    def healthz() -> Response:
        return Response(status=200, body=b"ok\n")

    def readyz() -> Response:
        if ready():
            return Response(status=200, body=b"ready\n")
        return Response(status=503, body=b"not ready\n")

    return {"/healthz": healthz, "/readyz": readyz}
