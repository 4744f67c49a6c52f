"""The command protocol over WebSocket (`/ws` on the command server's HTTP port): each
message is one command, run by a CommandConnection as if it came from the command port.

Command server layer, the I/O shell; the frames are core/websocket.py's.
"""

# Design
# ------
# A WebSocket client is a CommandConnection like any other: admitted by the server's
# ConnectionManager (maxclients, CLIENT LIST, CLIENT KILL, the idle timeout, requirepass
# and AUTH, the rate limit), fed through `_Pipe`, a transport whose writes become
# messages. Messages are run one at a time: the next is fed once the connection's
# request cycle is back from PROCESSING, so each reply is written by itself and goes
# out as one message, in request order, even when replies wait for the store. A
# message must hold exactly one command; anything else (two commands, half of one, a
# protocol error) is answered with the error reply and a close with 1002.

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Final, final

from postoffice.command.connection import CommandConnection, ConnectionHost
from postoffice.core.errors import RespProtocolError
from postoffice.core.httpapi import (
    HttpRequest,
    MessageHandler,
    WebSocketChannel,
    WebSocketOpener,
)
from postoffice.core.logs import kv
from postoffice.core.resp import NEED_DATA, RespParser
from postoffice.core.transport import ConnState

log = logging.getLogger(__name__)

#: Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_TRY_AGAIN_LATER: Final = 1013

#: Room a message has past the largest argument: the command name, the other arguments
#: and the RESP framing of a SET of the largest value fit in it many times over.
MESSAGE_OVERHEAD_BYTES: Final = 64 * 1024


def max_message_bytes(server: ConnectionHost) -> int:
    """The largest message `/ws` takes: one argument at the protocol's limit
    (`proto-max-bulk-len`) and MESSAGE_OVERHEAD_BYTES more; read per message, so CONFIG
    SET applies at once."""
    return server.config.max_bulk_bytes + MESSAGE_OVERHEAD_BYTES


def one_command(server: ConnectionHost, message: bytes) -> bytes:
    """`message` as the command port would receive it: a text line gets its CR LF if it
    has no line end. Raises RespProtocolError unless it is exactly one whole command
    within the server's protocol limits."""
    if not message.strip():
        raise RespProtocolError("Protocol error: empty message, expected one command")
    if not message.startswith(b"*") and not message.endswith(b"\n"):
        message += b"\r\n"
    config = server.config
    parser = RespParser(
        max_inline_bytes=config.max_inline_bytes,
        max_bulk_bytes=config.max_bulk_bytes,
        max_array_items=config.max_array_items,
    )
    parser.feed(message)
    if parser.next_event() is NEED_DATA:
        raise RespProtocolError("Protocol error: incomplete command in message")
    if parser.has_partial():
        raise RespProtocolError("Protocol error: more than one command in message")
    return message


@final
class _Pipe(asyncio.Transport):
    """The transport a bridged CommandConnection writes to: each write is kept for the
    reply message, a close closes the WebSocket."""

    def __init__(self, bridge: CommandBridge, channel: WebSocketChannel) -> None:
        super().__init__()
        self._bridge = bridge
        self._channel = channel
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._bridge.written(bytes(data))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._bridge.closed_by_server()

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return False  # no lingering close: the WebSocket's close frame ends it cleanly

    def pause_reading(self) -> None:
        """Nothing to pause: messages are fed one at a time already."""

    def resume_reading(self) -> None:
        """See pause_reading."""

    def is_reading(self) -> bool:
        return not self._closing

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The WebSocket's socket has its own (core/http.py)."""

    def get_write_buffer_size(self) -> int:
        return self._channel.write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        value = self._channel.extra_info(name)
        return default if value is None else value


@final
class CommandBridge:
    """One WebSocket client of the command server (see the design note)."""

    def __init__(self, server: ConnectionHost, channel: WebSocketChannel) -> None:
        self._server = server
        self._channel = channel
        self._queue: collections.deque[bytes | str] = collections.deque()
        self._out: list[bytes] = []
        self._text = False  # the message being answered came as text
        self._running = False
        self._check_pending = False
        self._ended = False
        self.conn = CommandConnection(server)
        self._pipe = _Pipe(self, channel)
        self.conn.connection_made(self._pipe)

    def __repr__(self) -> str:
        return f"<CommandBridge {self._channel.peer} queued={len(self._queue)} {self.conn!r}>"

    # MessageHandler

    def on_message(self, message: bytes | str) -> None:
        """Queue one command; run it now unless one is running."""
        if self._ended:
            return
        self._queue.append(message)
        if not self._running:
            self._next()

    def on_close(self) -> None:
        """The WebSocket is gone: so is the client (its counters kept, its id freed)."""
        self._ended = True
        self._queue.clear()
        if self.conn.cycle is not ConnState.CLOSED:
            self.conn.connection_lost(None)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()

    # the pipe's side

    def written(self, data: bytes) -> None:
        """A write of the connection: (part of) the reply of the running command."""
        self._out.append(data)
        self._schedule_check()

    def closed_by_server(self) -> None:
        """The connection closed (QUIT, CLIENT KILL, idle, refused): reply, then close."""
        self._flush()
        self._ended = True
        reason = self.conn.close_reason or "closed"
        code = CLOSE_TRY_AGAIN_LATER if "max number of clients" in reason else CLOSE_NORMAL
        self._channel.close(code, reason)

    # running

    def _next(self) -> None:
        while self._queue and not self._ended:
            message = self._queue.popleft()
            self._text = isinstance(message, str)
            raw = message.encode() if isinstance(message, str) else message
            try:
                command = one_command(self._server, raw)
            except RespProtocolError as exc:
                log.debug("websocket bad command %s", kv(peer=self._channel.peer, error=exc))
                self._channel.send(f"-ERR {exc}\r\n" if self._text else f"-ERR {exc}\r\n".encode())
                self._ended = True
                self._channel.close(CLOSE_PROTOCOL_ERROR, str(exc))
                return
            self._running = True
            self.conn.data_received(command)
            if self.conn.cycle is ConnState.PROCESSING:
                return  # the reply comes later: `_check` goes on
            self._flush()
            self._running = False

    def _schedule_check(self) -> None:
        if not self._check_pending and self._running:
            self._check_pending = True
            asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        self._check_pending = False
        if self._ended or not self._running:
            return
        if self.conn.cycle is ConnState.PROCESSING:
            # Written, but the cycle is not over yet: look again in a moment.
            self._check_pending = True
            asyncio.get_running_loop().call_later(0.001, self._check)
            return
        self._flush()
        self._running = False
        self._next()

    def _flush(self) -> None:
        if not self._out:
            return
        reply = b"".join(self._out)
        self._out.clear()
        if self._text:
            try:
                self._channel.send(reply.decode())
                return
            except UnicodeDecodeError:
                pass  # a binary value: a text frame must be UTF-8, so it goes as binary
        self._channel.send(reply)


def open_bridge(server: ConnectionHost) -> WebSocketOpener:
    """The WebSocketRoute opener of `/ws` for `server`."""

    def opener(request: HttpRequest, channel: WebSocketChannel) -> MessageHandler:
        return CommandBridge(server, channel)

    return opener


__all__ = [
    "MESSAGE_OVERHEAD_BYTES",
    "CommandBridge",
    "max_message_bytes",
    "one_command",
    "open_bridge",
]
