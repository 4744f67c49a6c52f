"""WebSocket on an HTTP port: the handshake (checked here) and `WebSocketSession`, wsproto's
pure frame codec inside the thin shell that core/http.py hands an upgraded connection to.

Core layer. A session sees its service only as a MessageHandler (core/httpapi.py).
"""

# Design
# ------
# HttpProtocol reads the handshake with h11, asks `handshake` for the 101's headers,
# writes them, and from then on passes every byte to the session. States: OPEN (messages
# flow), CLOSING (our close frame is out; the peer's bytes are dropped until the socket
# closes, as RFC 6455 section 7.1.1 lets a server close the TCP connection first) and
# CLOSED. A message is gathered frame by frame and checked against its limit as it
# grows, never after: a peer announcing a 1 GiB frame is closed with 1009 at the first
# byte past the limit, having cost at most the limit.

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final, final

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, generate_accept_token

from postoffice.core.httpapi import (
    HttpRequest,
    MessageHandler,
    Response,
    WebSocketChannel,
    WebSocketOpener,
    error_response,
)
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: The only version RFC 6455 defines; a client asking another gets 426 naming it.
WEBSOCKET_VERSION: Final = "13"

#: A close frame's reason is at most 123 bytes (RFC 6455 section 5.5: 125 with the code).
MAX_CLOSE_REASON_BYTES: Final = 123


class WsState(enum.Enum):
    """A session's states (see the design note)."""

    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


def handshake(request: HttpRequest) -> list[tuple[str, str]] | Response:
    """The headers of the 101 that accepts `request`'s WebSocket handshake, or the error
    that refuses it: 405 for a method other than GET, 426 for a version other than 13,
    400 for a missing or malformed Sec-WebSocket-Key."""
    if request.method != "GET":
        return error_response(
            405,
            f"a websocket handshake must be GET, got {request.method}",
            headers=(("allow", "GET"),),
        )
    version = request.header("sec-websocket-version")
    if version != WEBSOCKET_VERSION:
        return error_response(
            426,
            f"expected sec-websocket-version {WEBSOCKET_VERSION}, got {version or 'none'}",
            headers=(("sec-websocket-version", WEBSOCKET_VERSION),),
        )
    key = (request.header("sec-websocket-key") or "").strip()
    if len(key) != 24 or not key.endswith("=="):
        # 16 random bytes in base64 (RFC 6455 section 4.1).
        return error_response(400, f"expected a 24-character sec-websocket-key, got {key!r}")
    accept = generate_accept_token(key.encode("ascii")).decode("ascii")
    return [("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-accept", accept)]


@final
class WebSocketSession:
    """One upgraded connection: frames in through wsproto, each whole message to the
    handler, the handler's messages out as frames.

    A message over `max_message_bytes()` closes with 1009, a frame that breaks the
    protocol with 1002 (invalid UTF-8 in a text message: 1007). A ping is answered with
    a pong. `on_close` closes the socket once our close frame is written.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        peer: str,
        max_message_bytes: Callable[[], int],
        on_close: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._peer = peer
        self._limit = max_message_bytes
        self._on_close = on_close
        self._ws = Connection(ConnectionType.SERVER)
        self._state = WsState.OPEN
        self._handler: MessageHandler | None = None
        self._parts: list[bytes | str] = []
        self._size = 0
        self.messages_in = 0
        self.messages_out = 0

    def __repr__(self) -> str:
        return f"<WebSocketSession {self._peer} {self._state.name} in={self.messages_in}>"

    def describe(self) -> str:
        return f"WEBSOCKET-{self._state.name}"

    # the channel the handler sees (httpapi.WebSocketChannel)

    @property
    def peer(self) -> str:
        return self._peer

    def extra_info(self, name: str) -> object:
        return self._transport.get_extra_info(name)

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def send(self, message: bytes | str) -> None:
        """Send one message; dropped once the session is closing."""
        if self._state is not WsState.OPEN:
            return
        event: TextMessage | BytesMessage = (
            TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        )
        self._transport.write(self._ws.send(event))
        self.messages_out += 1

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (reason cut to what fits) and close the socket after it."""
        if self._state is not WsState.OPEN:
            return
        shown = reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
        try:
            self._transport.write(self._ws.send(CloseConnection(code=code, reason=shown)))
        except LocalProtocolError:
            pass  # the peer's close is being answered: one close frame is enough
        self._finish()

    # what HttpProtocol hands on (http.Upgraded)

    def open(self, opener: WebSocketOpener, request: HttpRequest) -> None:
        """Start the handler of this socket (after the 101 is written)."""
        self._handler = opener(request, self)

    def data_received(self, data: bytes) -> None:
        if self._state is not WsState.OPEN:
            return  # closing: what the peer still sends is dropped
        self._ws.receive_data(data)
        for event in self._ws.events():
            if self._state is not WsState.OPEN:
                return
            if isinstance(event, TextMessage | BytesMessage):
                self._on_part(
                    event.data if isinstance(event.data, str) else bytes(event.data),
                    finished=event.message_finished,
                )
            elif isinstance(event, Ping):
                self._transport.write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._on_close_frame(event)

    def _on_part(self, data: bytes | str, *, finished: bool) -> None:
        self._size += len(data) if isinstance(data, bytes) else len(data.encode())
        limit = self._limit()
        if self._size > limit:
            log.debug("websocket message too big %s", kv(peer=self._peer, limit=limit))
            self.close(CloseReason.MESSAGE_TOO_BIG, f"message exceeds limit {limit} bytes")
            return
        self._parts.append(data)
        if not finished:
            return
        parts, self._parts, self._size = self._parts, [], 0
        message: bytes | str
        if isinstance(parts[0], str):
            message = "".join(p for p in parts if isinstance(p, str))
        else:
            message = b"".join(p for p in parts if isinstance(p, bytes))
        self.messages_in += 1
        assert self._handler is not None
        self._handler.on_message(message)

    def _on_close_frame(self, event: CloseConnection) -> None:
        if self._ws.state is ConnectionState.REMOTE_CLOSING:  # the peer closes: answer it
            self._transport.write(self._ws.send(event.response()))
            self._finish()
            return
        # wsproto reports a frame it could not parse as a close it wants sent.
        log.debug(
            "websocket bad frame %s", kv(peer=self._peer, code=event.code, error=event.reason)
        )
        self.close(event.code, event.reason or "protocol error")

    def _finish(self) -> None:
        self._state = WsState.CLOSING
        self._on_close()

    def eof_received(self) -> None:
        self._finish()

    def connection_lost(self) -> None:
        self._state = WsState.CLOSED
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.on_close()

    def shutdown_requested(self) -> None:
        self.close(CloseReason.GOING_AWAY, "server shutting down")

    def can_idle_close(self) -> bool:
        # The handler keeps its own idle time (the command server's `timeout`); a
        # telemetry watcher is quiet by design.
        return False

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()


@final
class StreamFeed:
    """A MessageHandler that sends a stream's chunks as text messages (a trailing line
    end dropped: an NDJSON stream becomes one JSON document per message), and ignores
    what the client sends. While the peer does not read, it stops taking chunks (the
    stream's own queue decides what is dropped meanwhile)."""

    def __init__(self, chunks: AsyncIterator[bytes], channel: WebSocketChannel) -> None:
        self._chunks = chunks
        self._channel = channel
        self._writable = asyncio.Event()
        self._writable.set()
        self.sent = 0
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._feed())

    def __repr__(self) -> str:
        return f"<StreamFeed {self._channel.peer} sent={self.sent}>"

    async def _feed(self) -> None:
        try:
            async for chunk in self._chunks:
                await self._writable.wait()
                self._channel.send(chunk.rstrip(b"\n").decode(errors="replace"))
                self.sent += 1
            self._channel.close(1000, "end of stream")
        finally:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def on_message(self, message: bytes | str) -> None:
        """Nothing: the stream only goes one way."""

    def on_close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()


def stream_opener(chunks: Callable[[], AsyncIterator[bytes]]) -> WebSocketOpener:
    """The opener of a WebSocket path that watches a stream (a fresh `chunks()` each)."""

    def opener(request: HttpRequest, channel: WebSocketChannel) -> MessageHandler:
        return StreamFeed(chunks(), channel)

    return opener


__all__ = [
    "MAX_CLOSE_REASON_BYTES",
    "WEBSOCKET_VERSION",
    "StreamFeed",
    "WebSocketSession",
    "WsState",
    "handshake",
    "stream_opener",
]
