"""The asyncio.Protocol base every server connection derives from: state, flow control, close.

Design (seed 003): a connection moves through explicit states.

    READING_HEADER   waiting for the first byte of a request (idle between requests)
    READING_PAYLOAD  part of a request is buffered; the rest has not arrived
    PROCESSING       a request is being handled (on the loop, or in the worker pool)
    WRITING_RESPONSE replies are queued faster than the peer reads them: reading paused
    CLOSING          we decided to close (QUIT, error, timeout, shutdown); flushing
    CLOSED           the transport is gone; everything the connection owned is released

Only the moves in `_NEXT` are legal; anything else is a bug and raises. States change per
batch of bytes, not per request, so pipelined requests cost no extra transitions.

WRITING_RESPONSE sits on top of the request cycle rather than in it: while the peer is not
reading, bytes and finished batches still move the state the connection blocked in (kept
in `_resume_state`, moved by the same table), and DRAINED returns there. Otherwise a
request still in the pool when the peer caught up would look idle, and an idle timeout or
a shutdown would cut it off.

The hot path (`data_received`, `batch_done`, `write`) takes the table's common moves with
identity checks on module-level aliases instead of hashing enum pairs;
`tests/core/test_transport.py` checks that those shortcuts agree with the table.

Reading is paused for two independent reasons, write backpressure and the service's own
queue (`pause_reading`); it resumes only when neither holds.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Final, cast

from mypy_extensions import mypyc_attr

from postoffice.core.errors import ClosedError

if TYPE_CHECKING:
    from postoffice.core.connections import ConnectionManager

log = logging.getLogger(__name__)

#: Transport write buffer limits: past HIGH the peer is not reading, so we stop reading
#: its requests (backpressure) until the buffer drains below LOW.
WRITE_HIGH_WATER_BYTES: Final = 256 * 1024
WRITE_LOW_WATER_BYTES: Final = 64 * 1024
#: How long a closing connection waits for the peer's FIN before closing outright.
LINGER_S: Final = 2.0


class ConnState(enum.Enum):
    """Where a connection is in its life; see the module's design note."""

    READING_HEADER = "reading_header"
    READING_PAYLOAD = "reading_payload"
    PROCESSING = "processing"
    WRITING_RESPONSE = "writing_response"
    CLOSING = "closing"
    CLOSED = "closed"


class ConnInput(enum.Enum):
    """What happened to a connection."""

    BYTES = "bytes"  # a batch of bytes arrived: handle the requests in it
    IDLE = "idle"  # every complete request is handled, no partial one buffered
    PARTIAL = "partial"  # a partial request remains buffered
    BLOCKED = "blocked"  # the peer stopped reading our replies
    DRAINED = "drained"  # the peer caught up
    CLOSE = "close"  # we decided to close
    LOST = "lost"  # the transport is gone


S, I = ConnState, ConnInput  # noqa: E741  (short names keep the table readable)
_NEXT: Final[dict[tuple[ConnState, ConnInput], ConnState]] = {
    (S.READING_HEADER, I.BYTES): S.PROCESSING,
    (S.READING_PAYLOAD, I.BYTES): S.PROCESSING,
    (S.PROCESSING, I.BYTES): S.PROCESSING,  # bytes in flight while a request is in the pool
    (S.PROCESSING, I.IDLE): S.READING_HEADER,
    (S.PROCESSING, I.PARTIAL): S.READING_PAYLOAD,
    (S.PROCESSING, I.BLOCKED): S.WRITING_RESPONSE,
    (S.READING_HEADER, I.BLOCKED): S.WRITING_RESPONSE,
    (S.READING_PAYLOAD, I.BLOCKED): S.WRITING_RESPONSE,
    (S.WRITING_RESPONSE, I.DRAINED): S.READING_HEADER,  # or the state it blocked in: see above
    (S.WRITING_RESPONSE, I.BYTES): S.WRITING_RESPONSE,  # bytes already in flight when paused
    (S.WRITING_RESPONSE, I.IDLE): S.WRITING_RESPONSE,
    (S.WRITING_RESPONSE, I.PARTIAL): S.WRITING_RESPONSE,
    (S.WRITING_RESPONSE, I.BLOCKED): S.WRITING_RESPONSE,
    (S.READING_HEADER, I.DRAINED): S.READING_HEADER,
    (S.READING_PAYLOAD, I.DRAINED): S.READING_PAYLOAD,
    (S.PROCESSING, I.DRAINED): S.PROCESSING,
    (S.CLOSING, I.BYTES): S.CLOSING,  # bytes after QUIT are ignored
    (S.CLOSING, I.IDLE): S.CLOSING,
    (S.CLOSING, I.PARTIAL): S.CLOSING,
    (S.CLOSING, I.BLOCKED): S.CLOSING,
    (S.CLOSING, I.DRAINED): S.CLOSING,
    (S.CLOSING, I.CLOSE): S.CLOSING,
    (S.CLOSING, I.LOST): S.CLOSED,
    (S.CLOSED, I.CLOSE): S.CLOSED,
    (S.CLOSED, I.LOST): S.CLOSED,
}
for _state in (S.READING_HEADER, S.READING_PAYLOAD, S.PROCESSING, S.WRITING_RESPONSE):
    _NEXT[(_state, I.CLOSE)] = S.CLOSING
    _NEXT[(_state, I.LOST)] = S.CLOSED
del S, I, _state


# Module-level aliases: a global load is cheaper than an attribute of the enum class.
_READING_HEADER: Final = ConnState.READING_HEADER
_READING_PAYLOAD: Final = ConnState.READING_PAYLOAD
_PROCESSING: Final = ConnState.PROCESSING
_CLOSING: Final = ConnState.CLOSING
_CLOSED: Final = ConnState.CLOSED
_IDLE: Final = ConnInput.IDLE
_PARTIAL: Final = ConnInput.PARTIAL


def next_state(state: ConnState, event: ConnInput) -> ConnState:
    """The state after `event` in `state`; raises ClosedError for a move the table forbids."""
    try:
        return _NEXT[(state, event)]
    except KeyError:
        raise ClosedError(f"illegal connection move {state.value} --{event.value}-->") from None


# Under the opt-in compiled build (mypyc) this is a native class; the other services'
# connections, still interpreted, derive from it.
@mypyc_attr(allow_interpreted_subclasses=True)
class BaseProtocol(asyncio.Protocol):
    """Common shell of every server connection.

    Subclasses implement `on_data(data)` (feed the parser, handle every complete request,
    and say what remains; see its docstring) and may override
    `on_connect`, `on_close`, `reject(reason)` and `can_idle_close`.
    """

    transport: asyncio.Transport | None
    peer: str

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.transport = None
        self.state = ConnState.READING_HEADER
        self.peer = "?"
        self.local = "?"
        self.conn_id = 0
        self.created = manager.clock()
        self.last_active = self.created
        self.bytes_in = 0
        self.bytes_out = 0
        self.requests = 0
        self.close_reason = ""
        self._write_paused = False  # the transport's buffer is past its high-water mark
        self._hold_reading = False  # the service asked to stop reading (`pause_reading`)
        self._read_paused = False  # what the transport was last told
        self._resume_state = ConnState.READING_HEADER  # where DRAINED goes; see the design
        self._close_after_batch = False  # shutdown came while a request was in flight
        self._drained: asyncio.Event | None = None
        self._linger: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.peer = _addr(transport.get_extra_info("peername"))
        self.local = _addr(transport.get_extra_info("sockname"))
        transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES, WRITE_LOW_WATER_BYTES)
        refusal = self.manager.admit(self)
        if refusal is not None:
            self.reject(refusal)
            return
        self.on_connect()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        state = self.state
        if state is _READING_HEADER or state is _READING_PAYLOAD:  # the table's common move
            self.state = _PROCESSING
        else:
            self.last_active = self.manager.clock()
            state = next_state(state, ConnInput.BYTES)
            if state is _CLOSING:
                return
            if state is ConnState.WRITING_RESPONSE:
                self._resume_state = next_state(self._resume_state, ConnInput.BYTES)
            self.state = state
        outcome = self.on_data(data)
        if outcome is not None:
            self.batch_done(outcome)

    def eof_received(self) -> bool | None:
        # A half-closed peer sends no more requests; replies already queued still go out
        # (returning False makes the transport close once its buffer is flushed).
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._drained is not None:
            self._drained.clear()
        if self.state not in (ConnState.CLOSING, ConnState.CLOSED):
            if self.state is not ConnState.WRITING_RESPONSE:
                self._resume_state = self.state
            self.state = next_state(self.state, ConnInput.BLOCKED)
        self._sync_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None:
            self._drained.set()
        if self.state is ConnState.WRITING_RESPONSE:
            self.state = self._resume_state
            self.last_active = self.manager.clock()  # a slow reader was busy, not idle
        self._sync_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not ConnState.CLOSING and not self.close_reason:
            self.close_reason = "peer closed" if exc is None else f"broken: {exc}"
        self.state = next_state(self.state, ConnInput.LOST)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.manager.release(self)
        if self._drained is not None:
            self._drained.set()
        self.on_close()
        self.transport = None

    # -- service hooks -----------------------------------------------------------------

    def on_connect(self) -> None:
        """Called once the connection is admitted."""

    def on_data(self, data: bytes) -> ConnInput | None:
        """Handle bytes and say what is left: IDLE (nothing), PARTIAL (part of a request),
        or None while a request is still being processed (then call `batch_done` later)."""
        raise NotImplementedError

    def on_close(self) -> None:
        """Release what the connection owns; the transport is already gone."""

    def reject(self, reason: str) -> None:
        """Refuse a connection over a limit: by default close it without a word."""
        self.close(reason)

    def on_idle_timeout(self) -> None:
        """Called by the manager when the connection sat idle too long: close it."""
        self.close("idle timeout", linger=False)

    def shutdown_requested(self) -> None:
        """The server is stopping: finish the request in flight, then close after flushing."""
        if self.in_flight:
            self._close_after_batch = True
        else:
            self.close("server shutdown")

    def can_idle_close(self) -> bool:
        """Whether an idle timeout may close this connection now (not mid-request)."""
        return self.state in (ConnState.READING_HEADER, ConnState.READING_PAYLOAD)

    @property
    def in_flight(self) -> bool:
        """Whether a batch of requests is still being handled (even with writes blocked)."""
        return self.state is ConnState.PROCESSING or (
            self.state is ConnState.WRITING_RESPONSE and self._resume_state is ConnState.PROCESSING
        )

    # -- helpers for subclasses --------------------------------------------------------

    def batch_done(self, outcome: ConnInput) -> None:
        """Record that every complete request is handled; `outcome` is IDLE or PARTIAL.

        Raises ClosedError for any other outcome.
        """
        if outcome is not _IDLE and outcome is not _PARTIAL:
            raise ClosedError(f"batch outcome must be idle or partial, got {outcome.value}")
        if self.state is _PROCESSING:  # the table's common moves
            self.state = _READING_HEADER if outcome is _IDLE else _READING_PAYLOAD
        elif self.in_flight:  # writes blocked while the batch ran
            self._resume_state = next_state(self._resume_state, outcome)
        else:
            return
        # Idle time counts from the last reply, not from the request that started a slow one.
        self.last_active = self.manager.clock()
        if self._close_after_batch and not self.in_flight:
            self.close("server shutdown")

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer; dropped silently once the connection is closed."""
        transport = self.transport
        state = self.state
        # The state, not only is_closing(): a lingering close has sent FIN with write_eof
        # and the transport is not closing yet, but it raises RuntimeError on write.
        if (
            transport is not None
            and state is not _CLOSING
            and state is not _CLOSED
            and not transport.is_closing()
        ):
            self.bytes_out += len(data)
            transport.write(data)

    async def drained(self) -> None:
        """Wait until the peer has read enough of our replies (or the connection is gone)."""
        if not self._write_paused or self.transport is None:
            return
        if self._drained is None:
            self._drained = asyncio.Event()
        await self._drained.wait()

    def pause_reading(self) -> None:
        """Stop reading requests (the service's queue is full) until `resume_reading`."""
        self._hold_reading = True
        self._sync_reading()

    def resume_reading(self) -> None:
        """Read requests again, unless the peer is still not reading our replies."""
        self._hold_reading = False
        self._sync_reading()

    def _sync_reading(self) -> None:
        paused = self._hold_reading or self._write_paused
        if paused is not self._read_paused and self.transport is not None:
            self._read_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self, reason: str, *, linger: bool = True) -> None:
        """Flush what is queued, then close; idempotent.

        With `linger`, where the transport allows it, we send FIN after the last reply
        and drop whatever the peer still sends until it closes too (or LINGER_S passes).
        Closing outright while unread requests sit in our receive buffer would make the
        kernel send RST, and an RST can destroy the very error reply we just wrote.
        """
        if self.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        self.close_reason = reason
        self.state = next_state(self.state, ConnInput.CLOSE)
        transport = self.transport
        if transport is None:
            return
        if linger and transport.can_write_eof():
            transport.write_eof()
            self.resume_reading()  # read (and drop) until the peer's FIN
            self._linger = asyncio.get_running_loop().call_later(LINGER_S, transport.close)
        else:
            transport.close()

    def abort(self, reason: str) -> None:
        """Close at once, dropping what is queued (shutdown deadline, broken peer)."""
        if self.state is not ConnState.CLOSED:
            if self.state is not ConnState.CLOSING:
                self.close_reason = reason
                self.state = next_state(self.state, ConnInput.CLOSE)
            if self.transport is not None:
                self.transport.abort()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} id={self.conn_id} {self.peer} "
            f"{self.state.name} requests={self.requests}>"
        )


def _addr(info: object) -> str:
    if isinstance(info, tuple) and len(info) >= 2:
        host = str(info[0])
        return f"[{host}]:{info[1]}" if ":" in host else f"{host}:{info[1]}"
    if isinstance(info, str) and info:
        return info
    return "?"
