"""The HTTP ports' server: h11 inside an asyncio.Protocol, switching a connection to HTTP/2
(core/http2.py) or WebSocket (core/websocket.py) when it asks; docs/protocols/http.md.

Core layer: h11 is the pure parser, `HttpProtocol` the thin I/O shell around it.
"""

# Design
# ------
# A connection serves one request at a time. h11 emits `Request`, `Data` (a body, only
# where the route takes one, within its limit), then `EndOfMessage`; the route runs on
# `EndOfMessage`. A route returning an awaitable runs as a task while reading is paused,
# and pipelined requests wait in h11's buffer until the response is written and
# `start_next_cycle` rearms the parser. An oversized head or body or broken syntax gets
# one error response and then the connection closes, since the rest of the stream can
# no longer be trusted to line up with requests.
#
# The first bytes are held while they may be the HTTP/2 preface; once they are, or once
# a request upgrades (h2c, websocket), the connection is `Upgraded` and every later byte
# goes to that session, which this shell only forwards to.
#
# Limits, as nginx keeps them (worker_connections, keepalive_timeout,
# client_header_timeout): a `ConnectionManager` per listener admits at most
# `max_connections` (one over it gets a 503 and is closed at once, so a flood of idle
# connections cannot take every descriptor of the process and with it the service's own
# port), closes a connection with no request in progress after `idle_timeout_s`, and one
# whose request head has not arrived whole `request_timeout_s` after its first byte (a
# 408).

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final, Protocol, cast, final

import h11
from prometheus_client.registry import Collector

from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import BrokenError
from postoffice.core.httpapi import (
    HttpRequest,
    Response,
    Route,
    Routes,
    Stream,
    WebSocketRoute,
    answer,
    body_limit,
    check_auth,
    text_response,
    too_large,
)
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

#: What a client that knows the port speaks HTTP/2 sends first (RFC 9113, section 3.4).
H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_INTERNAL_ERROR: Final = Response(status=500, body=b"internal server error\n")


def _head_bytes(request: h11.Request) -> int:
    """Roughly the size of `request`'s head on the wire (`name: value\\r\\n` per header)."""
    size = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n\r\n")
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    return size


def _announced_body(request: h11.Request) -> int | None:
    """The body `request` announces: its Content-Length, None for a chunked body (length
    unknown), 0 for none."""
    for name, value in request.headers:  # h11 lower-cases names and validates the values
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            return int(value)
    return 0


class Upgraded(Protocol):
    """What a connection becomes after the HTTP/1.1 part: an HTTP/2 or WebSocket session."""

    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> None: ...
    def connection_lost(self) -> None: ...
    def shutdown_requested(self) -> None: ...
    def can_idle_close(self) -> bool: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def describe(self) -> str: ...


@final
class HttpProtocol(asyncio.Protocol):
    """One HTTP connection: HTTP/1.1 (h11), switched to HTTP/2 by the client preface or
    an `Upgrade: h2c` request, or to a WebSocket by its handshake on a WebSocketRoute.

    Routing (core/httpapi.py `answer`) ignores the query string: unknown paths get 404,
    a method the path does not take 405 with an Allow header, a route that raises 500
    (logged with its traceback) and the connection stays open. A head over
    MAX_HEAD_BYTES gets 431, malformed syntax 400, a body over the route's limit 413;
    each of these closes the connection after the response. With a `manager`, a
    connection over its limit gets 503 and one whose head is late 408, each then closed,
    and one idle past its timeout is closed.
    """

    def __init__(self, routes: Routes, manager: ConnectionManager | None = None) -> None:
        self._routes: Final = routes
        self._manager = manager
        clock: Clock = MONOTONIC if manager is None else manager.clock
        self._clock = clock
        # What the manager reads (core.connections.Managed).
        self.conn_id = 0
        self.created = clock()
        self.last_active = self.created
        self.bytes_in = 0
        self.bytes_out = 0
        #: When the request head now arriving began (None: no request is arriving).
        self.partial_since: float | None = None
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None
        self._peer = "-"
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._body_limit = 0
        self._task: asyncio.Future[None] | None = None
        self._busy = False
        self._closed = False
        self._requests = 0
        #: Bytes read while they may still be the HTTP/2 preface (only at the start).
        self._sniffed: bytes | None = b""
        self._upgraded: Upgraded | None = None

    def __repr__(self) -> str:
        if self._closed:
            state = "CLOSED"
        elif self._upgraded is not None:
            state = self._upgraded.describe()
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
        self.last_active = self._clock()
        if self._upgraded is not None:
            self._upgraded.data_received(data)
            return
        if self._sniffed is not None:
            data = self._sniff(data)
            if not data:
                return
        if self.partial_since is None and not self._busy:
            self.partial_since = self._clock()
        self._conn.receive_data(data)
        self._drain()
        if not self._busy and not self._conn.trailing_data[0]:
            self.partial_since = None  # every byte read belonged to a request now answered

    def _sniff(self, data: bytes) -> bytes:
        """The bytes for h11, or b"" while they may still be the HTTP/2 preface (then they
        are kept) or once they were (the connection is HTTP/2 now)."""
        assert self._sniffed is not None
        seen = self._sniffed + data
        if not H2_PREFACE.startswith(seen[: len(H2_PREFACE)]):
            self._sniffed = None
            return seen
        if len(seen) < len(H2_PREFACE):
            if self.partial_since is None:
                self.partial_since = self._clock()
            self._sniffed = seen
            return b""
        self._sniffed = None
        self.partial_since = None
        self._upgrade_h2(seen, upgrade=None)
        return b""

    def eof_received(self) -> bool:
        """Let h11 see the EOF; keep the socket open so a running route can still answer."""
        if self._upgraded is not None:
            self._upgraded.eof_received()
        elif not self._closed:
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
        if self._upgraded is not None:
            self._upgraded.connection_lost()
        if exc is not None:
            log.debug("http connection lost %s", kv(peer=self._peer, error=exc))

    def pause_writing(self) -> None:
        if self._upgraded is not None:
            self._upgraded.pause_writing()

    def resume_writing(self) -> None:
        if self._upgraded is not None:
            self._upgraded.resume_writing()

    # what the connection manager asks (core.connections.Managed)

    def can_idle_close(self) -> bool:
        """Idle: no request arriving, none being answered."""
        if self._closed:
            return False
        if self._upgraded is not None:
            return self._upgraded.can_idle_close()
        return not self._busy and self.partial_since is None

    def on_idle_timeout(self) -> None:
        if self._upgraded is not None:
            self._upgraded.shutdown_requested()  # HTTP/2: GOAWAY NO_ERROR before the close
        self._close()

    def shutdown_requested(self) -> None:
        if self._upgraded is not None:
            self._upgraded.shutdown_requested()
        elif not self._busy:
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
        if self._upgraded is not None:
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
        while not self._busy and not self._closed and self._upgraded is None:
            unread = self._unread()
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                log.debug(
                    "http bad request %s",
                    kv(peer=self._peer, status=exc.error_status_hint, error=exc),
                )
                self._respond(text_response(exc.error_status_hint), close=True)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                # The head's size on the wire: what this event took from h11's buffer.
                consumed = None if unread is None else unread - (self._unread() or 0)
                self._on_request(event, consumed)
            elif isinstance(event, h11.Data):
                self._on_body(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.partial_since = None
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()

    def _unread(self) -> int | None:
        """Bytes h11 holds unparsed, or None when this h11 does not say. h11 caps only an
        incomplete head and has no public count of what an event consumed (`trailing_data`
        copies the buffer, once per event), so its buffer's length is read: the one way to
        measure a whole head as it came, whitespace padding included."""
        buffer = getattr(self._conn, "_receive_buffer", None)
        return len(buffer) if buffer is not None else None

    def _on_request(self, request: h11.Request, wire_bytes: int | None = None) -> None:
        self._requests += 1
        self._body.clear()
        size = wire_bytes if wire_bytes is not None else _head_bytes(request)
        if size > MAX_HEAD_BYTES:
            # h11 only caps an *incomplete* head; a complete one can arrive in one read.
            log.debug("http head too large %s", kv(peer=self._peer, limit=MAX_HEAD_BYTES))
            self._respond(text_response(431), close=True)
            return
        method = request.method.decode("ascii")
        path = request.target.partition(b"?")[0].decode("latin-1")
        limit = body_limit(self._routes, method, path)
        announced = _announced_body(request)
        if (announced is None and limit == 0) or (announced is not None and announced > limit):
            # Refused from the head: its body is never read, so nothing lines up after it.
            self._respond(too_large(limit), close=True)
            return
        self._body_limit = limit
        self._request = request

    def _on_body(self, data: bytes) -> None:
        if self._request is None:
            return  # the head was refused and the connection is closing
        self._body += data
        if len(self._body) > self._body_limit:  # a chunked body, longer than allowed
            self._request = None
            self._respond(too_large(self._body_limit), close=True)

    def _dispatch(self) -> None:
        raw = self._request
        self._request = None
        if raw is None:  # the head was refused and the connection is closing
            return
        target = raw.target.decode("latin-1")
        path, _, query = target.partition("?")
        request = HttpRequest(
            method=raw.method.decode("ascii"),
            path=path,
            query=query,
            headers=tuple(
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in raw.headers
            ),
            body=bytes(self._body),
        )
        self._body.clear()
        upgrade = {t.strip().lower() for t in (request.header("upgrade") or "").split(",")}
        route = self._routes.get(path)
        if "websocket" in upgrade and isinstance(route, WebSocketRoute):
            self._upgrade_websocket(route, request)
            return
        if "h2c" in upgrade:
            from postoffice.core.http2 import upgrade_settings

            settings = upgrade_settings(request.header("http2-settings"))
            if settings is not None:
                self._upgrade_h2(b"", upgrade=request, settings=settings)
                return
        self._run(request)

    def _run(self, request: HttpRequest) -> None:
        head_only = request.method == "HEAD"
        try:
            result = answer(self._routes, request)
        except Exception:
            log.exception("http route failed %s", kv(peer=self._peer, path=request.path))
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
        self._task = asyncio.ensure_future(
            self._finish(result, path=request.path, head_only=head_only)
        )

    def _upgrade_h2(
        self, preface: bytes, *, upgrade: HttpRequest | None, settings: str = ""
    ) -> None:
        """Become HTTP/2: from the preface (`preface` holds it and what followed) or from
        an `Upgrade: h2c` request (answered 101, then on stream 1 over HTTP/2)."""
        transport = self._transport
        assert transport is not None
        # Only here, on first use: a port that never sees HTTP/2 never loads h2.
        from postoffice.core.http2 import Http2Session

        session = Http2Session(
            self._routes, transport, peer=self._peer, on_close=self._close, clock=self._clock
        )
        self._upgraded = session
        if upgrade is None:
            session.start(preface)
            return
        out = self._send(
            h11.InformationalResponse(
                status_code=101, headers=[(b"connection", b"Upgrade"), (b"upgrade", b"h2c")]
            )
        )
        transport.write(out)
        self.bytes_out += len(out)
        rest, _ = self._conn.trailing_data
        session.start_upgraded(settings, upgrade, rest)

    def _upgrade_websocket(self, route: WebSocketRoute, request: HttpRequest) -> None:
        """Answer a WebSocket handshake: 101 and a WebSocket session, or an error and the
        connection stays HTTP."""
        from postoffice.core.websocket import WebSocketSession, handshake

        refusal = check_auth(route.password, request.header("authorization"))
        accepted = handshake(request) if refusal is None else refusal
        if isinstance(accepted, Response):
            self._respond(accepted)
            return
        transport = self._transport
        assert transport is not None
        out = self._send(
            h11.InformationalResponse(
                status_code=101,
                headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in accepted],
            )
        )
        transport.write(out)
        self.bytes_out += len(out)
        rest, _ = self._conn.trailing_data
        session = WebSocketSession(
            transport,
            peer=self._peer,
            max_message_bytes=route.max_message_bytes,
            on_close=self._close,
        )
        self._upgraded = session
        session.open(route.opener, request)
        if rest:
            session.data_received(bytes(rest))

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
    ) -> None:
        """Write `response` whole; close if asked or if h11 says the peer expects it."""
        headers = [
            (b"content-type", response.content_type.encode("latin-1")),
            (b"content-length", str(len(response.body)).encode("ascii")),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers),
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
    routes: Routes,
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


__all__ = [
    "H2_PREFACE",
    "HTTP_IDLE_TIMEOUT_S",
    "HTTP_LIMITS",
    "HTTP_MAX_CONNECTIONS",
    "HTTP_REQUEST_TIMEOUT_S",
    "LISTEN_BACKLOG",
    "MAX_HEAD_BYTES",
    "HttpProtocol",
    "Response",
    "Route",
    "Stream",
    "Upgraded",
    "health_routes",
    "http_limits",
    "metrics_route",
    "serve_http",
    "serve_metrics",
]
