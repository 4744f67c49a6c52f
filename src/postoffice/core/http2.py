"""HTTP/2 on an HTTP port (cleartext, h2c): the sans-I/O `h2` state machine inside the thin
shell that core/http.py hands a connection to, after the preface or an `Upgrade: h2c`.

Core layer. Requests are answered by core/httpapi.py's `answer`, as over HTTP/1.1.
"""

# Design
# ------
# h2 parses frames and keeps the connection's and each stream's state; this shell turns
# its events into requests and writes what h2 queues (`data_to_send`) after each step.
# Each stream is RECEIVING (head in, body arriving), ANSWERING (a route is running or
# its body is waiting for flow-control window) or gone. A response body is sent as far
# as the peer's windows allow, and the rest waits for its WINDOW_UPDATE. Anything that
# breaks the protocol (a bad frame, a header list over the limit, a stream over the
# concurrent limit, a window overrun) answers GOAWAY with h2's error code and closes
# this connection only: the listener and the other connections are untouched. Header
# blocks must be decoded in order on the whole connection (HPACK), so h2 cannot refuse
# one stream and go on reading the frames after it: a connection error is the only
# consistent answer.

from __future__ import annotations

import asyncio
import base64
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, final

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from postoffice.core.clock import Clock
from postoffice.core.httpapi import (
    HttpRequest,
    Response,
    Routes,
    Stream,
    answer,
    body_limit,
    too_large,
)
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: Streams a client may have open at once: a dashboard or scraper needs a handful, and
#: each costs a request's state and maybe a running route.
MAX_CONCURRENT_STREAMS: Final = 100
#: A request's header list (HPACK-decoded, RFC 9113 section 6.5.2 counting), as the
#: HTTP/1.1 head limit (core/http.py MAX_HEAD_BYTES).
MAX_HEADER_LIST_BYTES: Final = 16 * 1024
#: The largest frame a client may send us: the protocol's minimum, as requests are small.
MAX_FRAME_BYTES: Final = 16 * 1024
#: Body bytes a client may send on a stream before we acknowledge them: above the admin
#: API's body limit, so a request within it never waits for a WINDOW_UPDATE.
INITIAL_WINDOW_BYTES: Final = 65_535
#: Response bytes a stream may queue behind the peer's window before it is reset: a
#: client that stops reading /events must not make the server hold its stream forever.
MAX_PENDING_BYTES: Final = 1024 * 1024

_INTERNAL_ERROR: Final = Response(status=500, body=b"internal server error\n")


class StreamState(enum.Enum):
    """Where a stream is (see the design note)."""

    RECEIVING = "RECEIVING"
    REFUSED = "REFUSED"  # answered early (413): the rest of its body is dropped
    ANSWERING = "ANSWERING"


@dataclass(slots=True, kw_only=True)
class _Stream:
    """One request stream's state."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    limit: int
    body: bytearray = field(default_factory=bytearray)
    state: StreamState = StreamState.RECEIVING
    task: asyncio.Future[None] | None = None
    pending: bytearray = field(default_factory=bytearray)
    end_after_pending: bool = False
    drained: asyncio.Event | None = None


def settings() -> dict[SettingCodes, int]:
    """The SETTINGS we send: the limits above, and no server push."""
    return {
        SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
        SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_BYTES,
        SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW_BYTES,
        SettingCodes.ENABLE_PUSH: 0,
    }


def upgrade_settings(header: str | None) -> str | None:
    """The HTTP2-Settings header of an `Upgrade: h2c` request, padded for h2, or None when
    it is not base64url of whole settings (the upgrade is then ignored, RFC 9113 3.2)."""
    if header is None:
        return None
    value = header.strip()
    padded = value + "=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
    except (ValueError, UnicodeEncodeError):
        return None
    return padded if len(raw) % 6 == 0 else None  # each setting is 6 bytes


@final
class Http2Session:
    """One HTTP/2 connection: requests on streams, answered through `routes`.

    A protocol error is answered with GOAWAY carrying h2's error code (PROTOCOL_ERROR,
    FRAME_SIZE_ERROR, FLOW_CONTROL_ERROR, ENHANCE_YOUR_CALM for a header list over
    MAX_HEADER_LIST_BYTES, ...) and a reason, then the connection closes (`on_close`).
    """

    def __init__(
        self,
        routes: Routes,
        transport: asyncio.Transport,
        *,
        peer: str,
        on_close: Callable[[], None],
        clock: Clock,
    ) -> None:
        self._routes = routes
        self._transport = transport
        self._peer = peer
        self._on_close = on_close
        self._clock = clock
        self._conn = H2Connection(config=H2Configuration(client_side=False, header_encoding=None))
        # The limits hold from the first frame: set as h2 would once they are acked.
        self._conn.local_settings = Settings(client=False, initial_values=settings())
        self._conn.decoder.max_header_list_size = MAX_HEADER_LIST_BYTES
        self._conn.max_inbound_frame_size = MAX_FRAME_BYTES
        self._streams: dict[int, _Stream] = {}
        self._closed = False
        self._going_away = False
        self.requests = 0

    def __repr__(self) -> str:
        return f"<Http2Session {self._peer} streams={len(self._streams)} requests={self.requests}>"

    def describe(self) -> str:
        return "HTTP2" if not self._closed else "CLOSED"

    # starting

    def start(self, data: bytes) -> None:
        """Start from the client preface; `data` holds it and whatever followed it."""
        self._conn.initiate_connection()
        self._flush()
        self.data_received(data)

    def start_upgraded(self, http2_settings: str, request: HttpRequest, rest: bytes) -> None:
        """Start after a 101 to `Upgrade: h2c`: `request` is stream 1, answered over
        HTTP/2; `rest` is what the client sent after its request (its preface).
        `http2_settings` was checked by `upgrade_settings`."""
        self._conn.initiate_upgrade_connection(http2_settings.encode("latin-1"))
        self._flush()
        self._streams[1] = _Stream(
            method=request.method,
            path=request.path,
            query=request.query,
            headers=request.headers,
            limit=len(request.body),
            body=bytearray(request.body),
        )
        self._dispatch(1)
        if rest:
            self.data_received(rest)

    # what HttpProtocol hands on (http.Upgraded)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self._conn.receive_data(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._on_request(event)
            elif isinstance(event, DataReceived):
                self._on_data(event)
            elif isinstance(event, StreamEnded):
                self._on_ended(event.stream_id)
            elif isinstance(event, StreamReset):
                self._forget(event.stream_id)
            elif isinstance(event, WindowUpdated):
                self._pump()
            elif isinstance(event, ConnectionTerminated):
                self._flush()
                self._close()
                return
        self._flush()

    def eof_received(self) -> None:
        self._close()

    def connection_lost(self) -> None:
        self._closed = True
        for stream_id in list(self._streams):
            self._forget(stream_id)

    def shutdown_requested(self) -> None:
        """Once the streams in progress are answered: GOAWAY (NO_ERROR), then close.

        Not GOAWAY first: h2 refuses to send anything after it, so the answers owed
        would be lost.
        """
        if self._closed or self._going_away:
            return
        self._going_away = True
        if not self._streams:
            self._goodbye()

    def _goodbye(self) -> None:
        self._conn.close_connection(error_code=ErrorCodes.NO_ERROR)
        self._close()

    def can_idle_close(self) -> bool:
        return not self._streams

    def pause_writing(self) -> None:
        """Nothing to do: each stream's queue is bounded by MAX_PENDING_BYTES."""

    def resume_writing(self) -> None:
        """Nothing to do (see pause_writing)."""

    # requests

    def _on_request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[str, str]] = []
        for name, value in event.headers or ():
            key = bytes(name)
            if key.startswith(b":"):
                pseudo[key] = bytes(value)
            else:
                headers.append((key.decode("latin-1"), bytes(value).decode("latin-1")))
        target = pseudo.get(b":path", b"/").decode("latin-1")
        path, _, query = target.partition("?")
        method = pseudo.get(b":method", b"GET").decode("latin-1")
        stream = _Stream(
            method=method,
            path=path,
            query=query,
            headers=tuple(headers),
            limit=body_limit(self._routes, method, path),
        )
        self._streams[stream_id] = stream
        self.requests += 1
        length = next((v for k, v in stream.headers if k == "content-length"), None)
        if length is not None and length.isdigit() and int(length) > stream.limit:
            self._refuse(stream_id, stream)

    def _on_data(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        # Always give the window back: a refused stream's bytes are dropped, not held.
        self._conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None or stream.state is not StreamState.RECEIVING:
            return
        stream.body += event.data or b""
        if len(stream.body) > stream.limit:
            self._refuse(stream_id, stream)

    def _refuse(self, stream_id: int, stream: _Stream) -> None:
        stream.state = StreamState.REFUSED
        stream.body.clear()
        self._send_response(stream_id, too_large(stream.limit), head_only=False)

    def _on_ended(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.state is StreamState.RECEIVING:
            self._dispatch(stream_id)

    def _dispatch(self, stream_id: int) -> None:
        stream = self._streams[stream_id]
        stream.state = StreamState.ANSWERING
        request = HttpRequest(
            method=stream.method,
            path=stream.path,
            query=stream.query,
            headers=stream.headers,
            body=bytes(stream.body),
        )
        stream.body.clear()
        head_only = request.method == "HEAD"
        try:
            result = answer(self._routes, request)
        except Exception:
            log.exception("http2 route failed %s", kv(peer=self._peer, path=request.path))
            result = _INTERNAL_ERROR
        if isinstance(result, Response):
            self._send_response(stream_id, result, head_only=head_only)
        elif isinstance(result, Stream):
            stream.task = asyncio.ensure_future(self._stream(stream_id, result, head_only))
        else:
            stream.task = asyncio.ensure_future(
                self._finish(stream_id, result, path=request.path, head_only=head_only)
            )

    async def _finish(
        self, stream_id: int, pending: Awaitable[Response], *, path: str, head_only: bool
    ) -> None:
        try:
            response = await pending
        except Exception:
            log.exception("http2 route failed %s", kv(peer=self._peer, path=path))
            response = _INTERNAL_ERROR
        stream = self._streams.get(stream_id)
        if stream is None or self._closed:
            return
        stream.task = None
        try:
            self._send_response(stream_id, response, head_only=head_only)
        except ProtocolError as exc:  # the stream ended meanwhile (reset, closed)
            log.debug("http2 answer dropped %s", kv(peer=self._peer, stream=stream_id, error=exc))
            self._forget(stream_id)
        self._flush()

    async def _stream(self, stream_id: int, stream: Stream, head_only: bool) -> None:
        try:
            self._conn.send_headers(
                stream_id,
                [(b":status", b"200"), (b"content-type", stream.content_type.encode("latin-1"))],
                end_stream=head_only,
            )
            self._flush()
            if head_only:
                return
            async for chunk in stream.chunks:
                state = self._streams.get(stream_id)
                if state is None or self._closed:
                    break
                if chunk:
                    self._queue(stream_id, state, chunk, end=False)
            state = self._streams.get(stream_id)
            if state is not None and not self._closed:
                self._queue(stream_id, state, b"", end=True)
        finally:
            aclose = getattr(stream.chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _send_response(self, stream_id: int, response: Response, *, head_only: bool) -> None:
        body = b"" if head_only else response.body
        headers = [
            (b":status", str(response.status).encode("ascii")),
            (b"content-type", response.content_type.encode("latin-1")),
            (b"content-length", str(len(response.body)).encode("ascii")),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers),
        ]
        self._conn.send_headers(stream_id, headers, end_stream=not body)
        stream = self._streams.get(stream_id)
        if not body:
            self._done(stream_id)
        elif stream is not None:
            self._queue(stream_id, stream, body, end=True)

    # flow control

    def _queue(self, stream_id: int, stream: _Stream, data: bytes, *, end: bool) -> None:
        stream.pending += data
        stream.end_after_pending = end
        if len(stream.pending) > MAX_PENDING_BYTES:
            log.debug("http2 stream not read %s", kv(peer=self._peer, stream=stream_id))
            self._conn.reset_stream(stream_id, error_code=ErrorCodes.CANCEL)
            self._forget(stream_id)
        self._pump()

    def _pump(self) -> None:
        """Send what the streams queued, as far as the windows allow."""
        conn = self._conn
        for stream_id, stream in list(self._streams.items()):
            while stream.pending:
                window = min(
                    conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size
                )
                if window <= 0:
                    break
                piece = bytes(stream.pending[:window])
                del stream.pending[:window]
                end = stream.end_after_pending and not stream.pending
                conn.send_data(stream_id, piece, end_stream=end)
                if end:
                    self._done(stream_id)
            if not stream.pending and stream.end_after_pending and stream_id in self._streams:
                conn.send_data(stream_id, b"", end_stream=True)
                self._done(stream_id)
        self._flush()

    def _done(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        if self._going_away and not self._streams:
            self._goodbye()

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()

    # the socket

    def _fail(self, exc: ProtocolError) -> None:
        code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
        reason = str(exc) or type(exc).__name__
        log.debug("http2 protocol error %s", kv(peer=self._peer, code=code, error=reason))
        if self._conn.state_machine.state is not ConnectionState.CLOSED:
            # h2 has not sent its own GOAWAY (it does for an error it found in a frame):
            # send one, with the reason as its debug data.
            self._conn.close_connection(error_code=code, additional_data=reason.encode()[:256])
        self._flush()
        self._close()

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out and not self._closed:
            self._transport.write(out)

    def _close(self) -> None:
        if not self._closed:
            self._flush()
            self._closed = True
            for stream_id in list(self._streams):
                self._forget(stream_id)
            self._on_close()


__all__ = [
    "INITIAL_WINDOW_BYTES",
    "MAX_CONCURRENT_STREAMS",
    "MAX_FRAME_BYTES",
    "MAX_HEADER_LIST_BYTES",
    "MAX_PENDING_BYTES",
    "Http2Session",
    "StreamState",
    "settings",
    "upgrade_settings",
]
