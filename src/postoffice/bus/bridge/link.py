"""One bridge TCP connection, either side (bus server layer): frames in, events out, flow
control both ways; the shell the transmitter and the receiver share, knowing no channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast, final

from postoffice.bus import netwire
from postoffice.bus.discovery import Address
from postoffice.bus.errors import BusError, BusProtocolError
from postoffice.core.errors import FrameError
from postoffice.core.framing import NEED_DATA
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: Unsent bytes a transmitter lets its transport hold before it stops reading the
#: channel (then a reliable publisher waits: TCP's backpressure reaches it).
WRITE_HIGH_BYTES: Final = 1 << 20
WRITE_LOW_BYTES: Final = 256 * 1024


class LinkState(enum.Enum):
    """A bridge connection: waiting for SUBSCRIBED (receivers), forwarding, closed."""

    HANDSHAKE = "handshake"
    FORWARDING = "forwarding"
    CLOSED = "closed"


#: Given each decoded event; returns False to stop taking more until `resume()`.
EventHandler = Callable[["Link", netwire.BridgeEvent], bool]


@final
class Link(asyncio.Protocol):
    """One bridge TCP connection, either side: frames in, flow control out.

    `on_event` gets each decoded event and returns False to stop taking more (a receiver
    whose channel has no free slot); `resume()` goes on. A broken frame or a bad message
    is answered with ERROR and the connection closed."""

    def __init__(
        self,
        name: str,
        on_event: EventHandler,
        on_closed: Callable[[Link], None],
    ) -> None:
        self.name = name
        self._on_event = on_event
        self._on_closed = on_closed
        self._stream = netwire.bridge_stream()
        self._transport: asyncio.Transport | None = None
        self.state = LinkState.HANDSHAKE
        self.peer: Address | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.get_running_loop().create_future()
        self._blocked = False
        self.frames_in = 0
        self.frames_out = 0

    def __repr__(self) -> str:
        return (
            f"<BridgeLink {self.name} {self.peer} {self.state.value} in={self.frames_in} "
            f"out={self.frames_out}>"
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclasses of asyncio's, but have its methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES, low=WRITE_LOW_BYTES)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer is not None:
            self.peer = (str(peer[0]), int(peer[1]))

    def data_received(self, data: bytes) -> None:
        self._stream.feed(data)
        if not self._blocked:
            self._drain()

    def eof_received(self) -> bool | None:
        # Whole frames left unread while blocked are the in-flight loss of any broken
        # bridge; part of a frame means the peer stopped in the middle of one.
        left = self._stream.buffered_bytes
        if left and not self._blocked:
            log.warning(
                "bridge peer closed inside a frame %s",
                kv(link=self.name, peer=self.peer, bytes=left),
            )
        return None  # close our side too

    def _drain(self) -> None:
        while self.state is not LinkState.CLOSED:
            try:
                item = self._stream.next_event()
            except (FrameError, BusProtocolError) as exc:
                self.fail(BusProtocolError(str(exc)))
                return
            if item is NEED_DATA:
                return
            self.frames_in += 1
            if not self._on_event(self, item[1]):
                self._blocked = True
                if self._transport is not None:
                    self._transport.pause_reading()
                return

    def resume(self) -> None:
        """Take events again after `on_event` said stop."""
        if not self._blocked or self.state is LinkState.CLOSED:
            return
        self._blocked = False
        if self._transport is not None:
            self._transport.resume_reading()
        self._drain()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def write(self, data: bytes) -> None:
        """Send one encoded frame."""
        if self._transport is not None and self.state is not LinkState.CLOSED:
            self._transport.write(data)
            self.frames_out += 1

    def fail(self, exc: BusError) -> None:
        """Tell the peer why (ERROR with the error's code), then close."""
        log.warning("bridge closed %s", kv(link=self.name, peer=self.peer, error=exc))
        with contextlib.suppress(BusError):
            self.write(
                netwire.encode_bridge(netwire.BridgeError(code=exc.wire_code, message=str(exc)))
            )
        self.close()

    def close(self) -> None:
        """Close after what is written (the peer then sees the end of the stream)."""
        if self._transport is not None and self.state is not LinkState.CLOSED:
            self._transport.close()
        elif self._transport is None:
            self._lost()

    def abort(self) -> None:
        """Close at once, dropping what is unsent."""
        if self._transport is not None:
            self._transport.abort()
        else:
            self._lost()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        if self.state is LinkState.CLOSED:
            return
        self.state = LinkState.CLOSED
        self.writable.set()
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_closed(self)


async def either(closed: asyncio.Future[None], *waiting: Coroutine[Any, Any, object]) -> None:
    """Wait for the first of `waiting` to finish, or for `closed`; cancel the others."""
    tasks = [asyncio.ensure_future(each) for each in waiting]
    pending: list[asyncio.Future[Any]] = [*tasks, closed]
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled():
                task.result()
