"""The office control socket, `<data-dir>/run/office.sock`: ControlServer answers the
control protocol (control.py) for a running simulation, driving its OfficeHandle and
reading its LiveView; ControlClient is the blocking client the CLI and dashboard use.
Office layer (I/O shell)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, cast, final

from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import FrameError, LimitExceeded, PostOfficeError
from postoffice.core.framing import NEED_DATA
from postoffice.office.control import (
    MAX_REQUEST_PAYLOAD_BYTES,
    AddUsers,
    ErrorReply,
    Ok,
    Pause,
    Reply,
    Request,
    Resume,
    SnapshotReply,
    Status,
    encode_reply,
    encode_request,
    reply_stream,
    request_stream,
)
from postoffice.office.errors import (
    ControlLimitError,
    ControlProtocolError,
    ControlRefusedError,
    NotRunningError,
)
from postoffice.office.handle import OfficeHandle
from postoffice.office.live import LiveView, clock_text

log = logging.getLogger(__name__)

__all__ = [
    "CONTROL_LIMITS",
    "SOCKET_NAME",
    "ControlClient",
    "ControlServer",
    "control_path",
]

SOCKET_NAME: Final = "office.sock"
#: Few people watch one simulation: 16 clients (the dashboard, a status or two) is
#: plenty, and a client idle for 60 s is closed so a forgotten one frees its place; a
#: request takes at most 10 s to arrive whole.
CONTROL_LIMITS: Final = ConnectionLimits(
    max_connections=16,
    idle_timeout_s=60.0,
    max_request_bytes=MAX_REQUEST_PAYLOAD_BYTES,
    request_timeout_s=10.0,
)
#: sun_path holds 108 bytes with its terminating NUL.
_MAX_SOCKET_PATH_BYTES: Final = 107


def control_path(data_dir: Path) -> Path:
    """Where a simulation running under `data_dir` listens for control requests."""
    return data_dir / "run" / SOCKET_NAME


def _check_path(path: Path) -> None:
    if len(str(path).encode()) > _MAX_SOCKET_PATH_BYTES:
        raise ControlRefusedError(
            f"control socket path {path} is {len(str(path).encode())} bytes, longer than the"
            f" {_MAX_SOCKET_PATH_BYTES} a Unix socket allows: use a shorter --data-dir"
        )


def _answers(path: Path) -> bool:
    """Whether something listens on the Unix socket at `path` (a stale file does not)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@final
class ControlServer:
    """Serves the control socket for one running simulation.

    `handle` is the simulation (in-process Driver or multi-process director); `view`
    folds its events; `new_users` gives the N_NEW_USERS an add_users without a count
    asks for. Two-phase: the constructor sets memory up, `start` binds.
    """

    def __init__(
        self,
        path: Path,
        *,
        handle: OfficeHandle,
        view: LiveView,
        new_users: Callable[[], int],
        limits: ConnectionLimits = CONTROL_LIMITS,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.path = path
        self.handle = handle
        self.view = view
        self._new_users = new_users
        self.manager = ConnectionManager(limits, clock=clock)
        self._server: asyncio.AbstractServer | None = None
        self.requests = 0
        self.errors = 0

    async def start(self) -> None:
        """Listen on `path`, replacing a stale socket file left by a killed run.

        Raises ControlRefusedError when another simulation answers there or the path is
        too long for a Unix socket, OSError when the socket cannot be made.
        """
        _check_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if await asyncio.to_thread(_answers, self.path):
                raise ControlRefusedError(
                    f"another simulation is running: its control socket {self.path} answers"
                )
            self.path.unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: ControlConnection(self), str(self.path)
        )
        self.path.chmod(0o600)  # control of the run belongs to its owner
        self.manager.startup()
        log.info("control socket listening path=%s", self.path)

    async def close(self) -> None:
        """Stop listening, close every client, remove the socket file."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await self.manager.shutdown(deadline_s=1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @property
    def paused(self) -> bool:
        """Whether a control request holds the clock."""
        return self.view.paused

    def answer(self, request: Request) -> Reply:
        """What the simulation says to one request; errors it raises become ERROR replies."""
        self.requests += 1
        handle, view = self.handle, self.view
        try:
            match request:
                case Status():
                    view.advance(handle.minute)
                    return SnapshotReply(snapshot=view.snapshot().to_json())
                case AddUsers(count=count):
                    if view.ended is not None:
                        raise ControlRefusedError("the run has ended: no users can be added")
                    n = self._new_users() if count is None else count
                    if n < 1:
                        raise ControlRefusedError("N_NEW_USERS is 0: give a count of users to add")
                    handle.add_users(n)
                    day = handle.day + 1
                    log.info("users added count=%d from_day=%d", n, day)
                    return Ok(
                        message=f"{n} users more from day {day}",
                        fields={"added": n, "from_day": day},
                    )
                case Pause():
                    handle.pause()
                    view.paused = True
                    return self._clock_reply("paused")
                case Resume():
                    handle.resume()
                    view.paused = False
                    return self._clock_reply("resumed")
        except PostOfficeError as exc:
            self.errors += 1
            return ErrorReply(code=exc.wire_code, message=str(exc))

    def _clock_reply(self, what: str) -> Ok:
        day, minute = self.handle.day, self.handle.minute
        clock = clock_text(minute)
        log.info("clock %s day=%d clock=%s", what, day, clock)
        return Ok(
            message=f"clock {what} at day {day} {clock}",
            fields={"paused": self.view.paused, "day": day, "minute": minute, "clock": clock},
        )

    def __repr__(self) -> str:
        state = "listening" if self._server is not None else "closed"
        return (
            f"<ControlServer {self.path} {state} clients={self.manager.active}"
            f" requests={self.requests}>"
        )


@final
class ControlConnection(asyncio.Protocol):
    """One control client: frames in, one reply per request, in order.

    Framing lost (bad magic, version, CRC, a frame past the limit) or a frame cut by the
    end of the stream is answered with an ERROR of request id 0, then the connection
    closes; a bad request in a good frame is answered with an ERROR and the connection
    goes on.
    """

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.conn_id = 0
        self.last_active = server.manager.clock()
        self.bytes_in = 0
        self.bytes_out = 0
        self._stream = request_stream()
        self._transport: asyncio.Transport | None = None
        self._partial_since: float | None = None
        self._closing = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        refusal = self.server.manager.admit(self)
        if refusal is not None:
            limit = self.server.manager.limits.max_connections
            self._fail(ControlLimitError(f"too many control clients: {refusal} ({limit})"))

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        now = self.server.manager.clock()
        self.last_active = now
        self.bytes_in += len(data)
        stream = self._stream
        stream.feed(data)
        while True:
            try:
                event = stream.next_event()
            except FrameError as exc:
                self._fail(exc)
                return
            except ControlProtocolError as exc:
                self.server.errors += 1
                request_id = stream.last_request_id
                if not request_id:
                    # An error of id 0 is the connection's: it closes after it, as the
                    # doc says, or a client could not tell what it answers.
                    self._fail(exc)
                    return
                self._send(request_id, _error(exc))
                continue
            if event is NEED_DATA:
                break
            request_id, request = event
            self._send(request_id, self.server.answer(request))
        self._partial_since = now if stream.buffered_bytes else None

    def eof_received(self) -> bool:
        cut = self._stream.buffered_bytes
        if cut and not self._closing:
            self._fail(
                ControlProtocolError(f"truncated frame: the stream ended {cut} bytes into it")
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.manager.release(self)
        self._transport = None

    # A client that sends requests but does not read the replies would make the server
    # buffer snapshots without end: while the transport's buffer is over its high-water
    # mark, no more requests are read.
    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    # -- core.connections.Managed --------------------------------------------------------

    def can_idle_close(self) -> bool:
        return not self._closing

    def on_idle_timeout(self) -> None:
        timeout = self.server.manager.limits.idle_timeout_s
        self._fail(ControlLimitError(f"idle for more than {timeout:g} s"))

    def shutdown_requested(self) -> None:
        # Every request is answered when it arrives: nothing is in flight.
        self._fail(PostOfficeError("the simulation is stopping"), code="CLOSED")

    def abort(self, reason: str) -> None:
        if self._transport is not None:
            self._transport.abort()

    def check_deadlines(self, now: float) -> None:
        since = self._partial_since
        limit = self.server.manager.limits.request_timeout_s
        if since is not None and limit and now - since > limit and not self._closing:
            self._fail(ControlLimitError(f"a request took more than {limit:g} s to arrive whole"))

    # -- replies -------------------------------------------------------------------------

    def _send(self, request_id: int, reply: Reply) -> None:
        if self._transport is None or self._closing:
            return
        try:
            data = encode_reply(request_id, reply)
        except PostOfficeError as exc:  # a snapshot too large for a frame
            data = encode_reply(request_id, _error(exc))
        self.bytes_out += len(data)
        self._transport.write(data)

    def _fail(self, exc: PostOfficeError, *, code: str | None = None) -> None:
        """Send a connection error (request id 0) and close once it is written."""
        if self._closing:
            return
        reply = _error(exc)
        if code is not None:
            reply = ErrorReply(code=code, message=reply.message)
        self._send(0, reply)
        self._closing = True
        if self._transport is not None:
            self._transport.close()
        log.info("control client closed conn=%s reason=%r", self.conn_id, reply.message)

    def __repr__(self) -> str:
        state = "CLOSING" if self._closing else "OPEN"
        return f"<ControlConnection {self.conn_id} {state} in={self.bytes_in} out={self.bytes_out}>"


def _error(exc: PostOfficeError) -> ErrorReply:
    code = LimitExceeded.wire_code if isinstance(exc, LimitExceeded) else exc.wire_code
    return ErrorReply(code=code, message=str(exc))


@final
class ControlClient:
    """A blocking client of one simulation's control socket (the CLI, the dashboard).

    Every call raises NotRunningError when no simulation answers, ControlRefusedError
    carrying the server's message for an ERROR reply, and ControlProtocolError when the
    server's bytes make no sense.
    """

    def __init__(self, path: Path, *, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._stream = reply_stream()
        self._next_id = 1

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if len(str(self.path).encode()) > _MAX_SOCKET_PATH_BYTES:
            raise NotRunningError(f"control socket path {self.path} is too long for a socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise NotRunningError(
                    f"no simulation is running: nothing answers on {self.path}"
                ) from None
            raise NotRunningError(f"cannot reach the simulation at {self.path}: {exc}") from exc
        self._sock = sock
        self._stream = reply_stream()
        return sock

    def request(self, request: Request) -> Reply:
        """Send one request and return its reply (an ERROR reply is returned, not raised)."""
        sock = self._connect()
        request_id = self._next_id
        self._next_id += 1
        deadline = time.monotonic() + self.timeout_s
        try:
            sock.sendall(encode_request(request_id, request))
            while True:
                event = self._stream.next_event()
                if event is not NEED_DATA:
                    got_id, reply = event
                    if got_id in (request_id, 0):
                        return reply
                    continue  # an answer to a request given up on before
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    raise NotRunningError(
                        f"the simulation closed its control socket {self.path} before answering"
                    )
                self._stream.feed(data)
        except TimeoutError:
            self.close()
            raise NotRunningError(
                f"the simulation did not answer on {self.path} within {self.timeout_s:g} s"
            ) from None
        except FrameError as exc:
            self.close()
            raise ControlProtocolError(f"bad reply from {self.path}: {exc}") from exc
        except OSError as exc:
            self.close()
            raise NotRunningError(f"lost the simulation at {self.path}: {exc}") from exc

    def call(self, request: Request) -> Reply:
        """`request`, with an ERROR reply raised as ControlRefusedError."""
        reply = self.request(request)
        if isinstance(reply, ErrorReply):
            raise ControlRefusedError(reply.message)
        return reply

    def status(self) -> dict[str, object]:
        """The live state (the snapshot's JSON form)."""
        reply = self.call(Status())
        if not isinstance(reply, SnapshotReply):
            raise ControlProtocolError(f"status answered with {type(reply).__name__}")
        return reply.snapshot

    def add_users(self, count: int | None = None) -> Ok:
        """Ask for `count` users more (None: the run's N_NEW_USERS)."""
        return self._ok(AddUsers(count=count))

    def pause(self) -> Ok:
        """Hold the simulated clock."""
        return self._ok(Pause())

    def resume(self) -> Ok:
        """Let the simulated clock go on."""
        return self._ok(Resume())

    def _ok(self, request: Request) -> Ok:
        reply = self.call(request)
        if not isinstance(reply, Ok):
            raise ControlProtocolError(f"request answered with {type(reply).__name__}")
        return reply

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self._sock is not None else "idle"
        return f"<ControlClient {self.path} {state}>"
