"""One client of the bus server: its raw Unix socket, read and written from the loop.

Bus server layer, the thin I/O shell: asyncio transports cannot pass descriptors, so the
socket is read with `loop.add_reader` (recvmsg) and written with `add_writer` (sendmsg,
SCM_RIGHTS for a reply's fds); the bytes go through `wire`'s pure decoder, and each
request to the server through the BusHost seam.

Design
------
States: AWAITING_INIT (only INIT is served), READY, CLOSED. A request that decodes
badly is answered with an ERROR and the connection stays; a broken frame (framing lost)
or descriptors sent to the server get an ERROR with request id 0 and the connection
closes once it is written. Replies queue in order, each with the descriptors it passes;
the first bytes of a reply carry its descriptors, so they arrive with it. A client that
stops reading is closed when its queue passes `max_output_bytes`.
"""

from __future__ import annotations

import array
import asyncio
import enum
import logging
import os
import socket
from collections import deque
from typing import Final, Protocol, final

from postoffice.bus import wire
from postoffice.bus.errors import BusError, BusProtocolError, BusStateError
from postoffice.bus.registry import Passed, close_passed
from postoffice.core.clock import Clock
from postoffice.core.errors import FrameError
from postoffice.core.framing import NEED_DATA
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: Bytes one recvmsg takes: requests are small; 64 KiB drains a burst in one call.
_READ_BYTES: Final = 64 * 1024
#: Room for descriptors a client might (wrongly) send, so that they are all closed.
_ANCILLARY_BYTES: Final = socket.CMSG_SPACE(wire.MAX_FDS * 4)
#: Requests served per readable event before yielding to other clients.
_MAX_REQUESTS_PER_READ: Final = 256


class ConnState(enum.Enum):
    """Where a client connection is in its life."""

    AWAITING_INIT = "awaiting-init"
    READY = "ready"
    CLOSED = "closed"


class BusHost(Protocol):
    """What a connection needs from its server."""

    def handle(self, conn: BusConnection, request: wire.Request) -> tuple[wire.Reply, list[Passed]]:
        """Serve one request; the reply and the descriptors it passes (owned by it).
        Raises a BusError to be answered as an ERROR."""
        ...

    def connection_closed(self, conn: BusConnection) -> None:
        """Release everything the connection registered."""
        ...


@final
class BusConnection:
    """A client's socket, its decoder, its queue of replies and its state."""

    def __init__(
        self,
        sock: socket.socket,
        host: BusHost,
        *,
        client_id: int,
        peer_pid: int,
        loop: asyncio.AbstractEventLoop,
        max_output_bytes: int,
        clock: Clock,
    ) -> None:
        self.sock = sock
        self.client_id = client_id
        self.peer_pid = peer_pid
        self.client_name = ""
        self.state = ConnState.AWAITING_INIT
        self.requests = 0
        self._host = host
        self._loop = loop
        self._stream = wire.request_stream()
        self._out: deque[tuple[memoryview, list[Passed]]] = deque()
        self._out_bytes = 0
        self._max_output_bytes = max_output_bytes
        self._writing = False
        self._close_when_sent = False
        #: When the first byte of a request not yet whole arrived (None: nothing partial).
        self.partial_since: float | None = None
        self._clock = clock
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)

    def __repr__(self) -> str:
        return (
            f"<BusConnection client={self.client_id} pid={self.peer_pid} "
            f"name={self.client_name!r} {self.state.name} requests={self.requests}>"
        )

    def initialized(self, name: str) -> None:
        """Mark the connection READY (INIT served). Raises BusStateError on a second INIT."""
        if self.state is not ConnState.AWAITING_INIT:
            raise BusStateError("this connection is already initialized: INIT comes once")
        self.client_name = name
        self.state = ConnState.READY

    # -- reading --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self.state is ConnState.CLOSED:
            return
        try:
            data, ancdata, _flags, _ = self.sock.recvmsg(_READ_BYTES, _ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("client read failed %s", kv(client=self.client_id, error=exc))
            self.close()
            return
        if _close_descriptors(ancdata):
            self._fail(BusProtocolError("requests carry no descriptors"))
            return
        if not data:
            if self._stream.buffered_bytes:
                log.info(
                    "client closed mid-request %s",
                    kv(client=self.client_id, buffered=self._stream.buffered_bytes),
                )
            self.close()
            return
        self._stream.feed(data)
        self._drain()

    def _drain(self) -> None:
        for _ in range(_MAX_REQUESTS_PER_READ):
            if self.state is ConnState.CLOSED or self._close_when_sent:
                return
            try:
                event = self._stream.next_event()
            except FrameError as exc:
                self._fail(exc)
                return
            except BusProtocolError as exc:
                self._answer(self._stream.last_request_id or 0, _error(exc), [])
                continue
            if event is NEED_DATA:
                if not self._stream.buffered_bytes:
                    self.partial_since = None
                elif self.partial_since is None:
                    self.partial_since = self._clock()
                return
            request_id, request = event
            self.partial_since = None
            self.requests += 1
            self._serve(request_id, request)
        # More than a burst's worth: serve the rest on a later turn of the loop.
        self._loop.call_soon(self._drain)

    def _serve(self, request_id: int, request: wire.Request) -> None:
        if request_id == 0:
            self._fail(BusProtocolError("request id 0 is reserved"))
            return
        if self.state is ConnState.AWAITING_INIT and not isinstance(request, wire.InitRequest):
            self._answer(request_id, _error(BusStateError("the first request must be INIT")), [])
            return
        try:
            reply, passed = self._host.handle(self, request)
        except BusError as exc:
            self._answer(request_id, _error(exc), [])
            return
        except Exception as exc:
            # The connection's boundary: a bug answers ERR and the server goes on.
            log.exception("request failed %s", kv(client=self.client_id, request=request))
            self._answer(request_id, wire.ErrorReply(code="ERR", message=str(exc)), [])
            return
        self._answer(request_id, reply, passed)

    def _fail(self, exc: BusError | FrameError) -> None:
        """Framing lost or a rule broken: say why (request id 0), then close."""
        log.info("client protocol error %s", kv(client=self.client_id, error=exc))
        self._answer(0, _error(exc), [])
        self._close_when_sent = True
        if not self._out:
            self.close()

    # -- writing --------------------------------------------------------------------------

    def _answer(self, request_id: int, reply: wire.Reply, passed: list[Passed]) -> None:
        if self.state is ConnState.CLOSED:
            close_passed(passed)
            return
        try:
            data = wire.encode_reply(request_id, reply)
        except BusError as exc:
            close_passed(passed)
            log.exception("reply not encodable %s", kv(client=self.client_id))
            data = wire.encode_reply(request_id, _error(exc))
        self._out.append((memoryview(data), passed))
        self._out_bytes += len(data)
        if self._out_bytes > self._max_output_bytes:
            log.warning(
                "client does not read its replies, closing %s",
                kv(client=self.client_id, queued=self._out_bytes),
            )
            self.close()
            return
        self._flush()

    def _flush(self) -> None:
        while self._out and self.state is not ConnState.CLOSED:
            data, passed = self._out[0]
            try:
                if passed:
                    fds = array.array("i", [fd for _, fd in passed])
                    sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                    close_passed(passed)  # the peer has its own copies now
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.info("client write failed %s", kv(client=self.client_id, error=exc))
                self.close()
                return
            self._out_bytes -= sent
            if sent < len(data):
                self._out[0] = (data[sent:], passed)
                break
            self._out.popleft()
        if self.state is ConnState.CLOSED:
            return
        if self._out and not self._writing:
            self._loop.add_writer(self.sock.fileno(), self._flush)
            self._writing = True
        elif not self._out:
            if self._writing:
                self._loop.remove_writer(self.sock.fileno())
                self._writing = False
            if self._close_when_sent:
                self.close()

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket, drop what is queued, and let the server clean up after the
        client (once)."""
        if self.state is ConnState.CLOSED:
            return
        self.state = ConnState.CLOSED
        fd = self.sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
            if self._writing:
                self._loop.remove_writer(fd)
        self._writing = False
        for _, passed in self._out:
            close_passed(passed)
        self._out.clear()
        self._out_bytes = 0
        self.sock.close()
        self._host.connection_closed(self)


def _error(exc: BusError | FrameError) -> wire.ErrorReply:
    return wire.ErrorReply(code=exc.wire_code, message=str(exc))


def _close_descriptors(ancdata: list[tuple[int, int, bytes]]) -> bool:
    """Close every descriptor a client sent; whether there were any."""
    found = False
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                found = True
                try:
                    os.close(fd)
                except OSError:
                    pass
    return found
