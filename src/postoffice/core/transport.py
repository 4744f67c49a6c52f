"""The asyncio.Protocol base every server connection derives from: its lifecycle, in one place.

Core layer. Subclasses report what happened (`on_data`'s outcome, `batch_done`,
`close_when_done`) and never assign a state: every move goes through this module.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from typing import Final, Protocol, cast

from mypy_extensions import mypyc_attr

from postoffice.core.clock import Clock
from postoffice.core.connections import ConnectionLimits
from postoffice.core.errors import StateMachineError

# Design
# ------
# A connection has two independent sides, and each is kept once.
#
# The request cycle (`cycle`), moved only by the table `_NEXT`:
#
#     READING_HEADER   waiting for the first byte of a request (idle between requests)
#     READING_PAYLOAD  part of a request is buffered; the rest has not arrived
#     PROCESSING       requests are being handled (on the loop, in a pool, or replies are
#                      owed: a store's answer, an fsync)
#     CLOSING          we decided to close (QUIT, error, timeout, shutdown); flushing
#     CLOSED           the transport is gone; everything the connection owned is released
#
# The write side: `pause_writing` and `resume_writing` (the peer stopped reading our
# replies, then caught up). `state`, the seed's one state, reads WRITING_RESPONSE while the
# write side is blocked and the cycle is live: blocking does not move the cycle, so a
# request still in a pool when the peer catches up is still PROCESSING, and an idle timeout
# or a shutdown cannot cut it off.
#
# Closing once what is in flight is done has one reason, `_close_pending`, set by
# `close_when_done` (QUIT, a client killing itself, a bad frame whose error reply is owed,
# shutdown) and honoured by `batch_done`: the subclass stops starting requests once it is
# set, and the cycle's end closes the connection.
#
# Reading is paused for two independent reasons, the write side and the service's own
# queue (`pause_reading`); it resumes only when neither holds. While the write side is
# blocked a service also starts no request it has already read (`write_blocked`), since
# its reply could not be written either; `on_writable` tells it to go on.
#
# What a client may cost is bounded here, for every service alike (the manager's
# ConnectionLimits). Output: once the write side is blocked, every write checks the
# transport's buffer against the hard limit and the soft limit's timer (Redis's
# client-output-buffer-limit), and the manager's sweep checks the timer too, so a client
# that stops reading is closed even when nothing more is written; a closed client's
# unsent replies are dropped at once (abort). Input: a batch that ends with a partial
# request starts its deadline (`partial_since`; a new one once a whole request was read
# meanwhile) and reserves the bytes the service holds for it (`partial_bytes`) from the
# manager's budget for all partial requests; the connection whose partial request would
# pass that budget is refused (`refuse`). The deadline runs only while the cycle is
# READING_PAYLOAD and the write side flows: a request the peer is still sending, not one
# we are slow to handle or one held up while the peer reads our replies.
#
# States change per batch of bytes, not per request, so pipelined requests cost no extra
# moves. The hot path (`data_received`, `batch_done`) takes the table's common moves with
# identity checks on module-level aliases instead of hashing enum pairs;
# tests/core/test_transport.py checks that those shortcuts agree with the table.

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
    """What happened to a connection's request cycle."""

    BYTES = "bytes"  # a batch of bytes arrived: handle the requests in it
    IDLE = "idle"  # every complete request is handled, no partial one buffered
    PARTIAL = "partial"  # a partial request remains buffered
    CLOSE = "close"  # we decided to close
    LOST = "lost"  # the transport is gone


S, I = ConnState, ConnInput  # noqa: E741  (short names keep the table readable)
_NEXT: Final[dict[tuple[ConnState, ConnInput], ConnState]] = {
    (S.READING_HEADER, I.BYTES): S.PROCESSING,
    (S.READING_PAYLOAD, I.BYTES): S.PROCESSING,
    (S.PROCESSING, I.BYTES): S.PROCESSING,  # bytes in flight while a request is in the pool
    (S.PROCESSING, I.IDLE): S.READING_HEADER,
    (S.PROCESSING, I.PARTIAL): S.READING_PAYLOAD,
    (S.CLOSING, I.BYTES): S.CLOSING,  # bytes after QUIT are ignored
    (S.CLOSING, I.IDLE): S.CLOSING,
    (S.CLOSING, I.PARTIAL): S.CLOSING,
    (S.CLOSING, I.CLOSE): S.CLOSING,
    (S.CLOSING, I.LOST): S.CLOSED,
    (S.CLOSED, I.CLOSE): S.CLOSED,
    (S.CLOSED, I.LOST): S.CLOSED,
}
for _state in (S.READING_HEADER, S.READING_PAYLOAD, S.PROCESSING):
    _NEXT[(_state, I.CLOSE)] = S.CLOSING
    _NEXT[(_state, I.LOST)] = S.CLOSED
del S, I, _state


# Module-level aliases: a global load is cheaper than an attribute of the enum class.
_READING_HEADER: Final = ConnState.READING_HEADER
_READING_PAYLOAD: Final = ConnState.READING_PAYLOAD
_PROCESSING: Final = ConnState.PROCESSING
_WRITING_RESPONSE: Final = ConnState.WRITING_RESPONSE
_CLOSING: Final = ConnState.CLOSING
_CLOSED: Final = ConnState.CLOSED
_IDLE: Final = ConnInput.IDLE
_PARTIAL: Final = ConnInput.PARTIAL


def next_state(state: ConnState, event: ConnInput) -> ConnState:
    """The cycle's state after `event` in `state`.

    Raises StateMachineError (a bug in the caller, not a peer's fault) for a move the
    table forbids.
    """
    try:
        return _NEXT[(state, event)]
    except KeyError:
        raise StateMachineError(
            f"illegal connection move {state.value} --{event.value}-->"
        ) from None


class Admission(Protocol):
    """What a connection needs from whoever admits it (core.connections.ConnectionManager)."""

    clock: Clock

    def admit(self, conn: BaseProtocol) -> str | None:
        """Register `conn` and give it an id; a refusal reason when it must be turned away."""
        ...

    def release(self, conn: BaseProtocol) -> None:
        """Forget `conn`: its transport is gone."""
        ...

    @property
    def limits(self) -> ConnectionLimits:
        """The output limits, request deadline and partial-request budget to keep."""
        ...

    def reserve_partial(self, nbytes: int) -> bool:
        """Count `nbytes` more held by a partial request; False when over the budget."""
        ...

    def release_partial(self, nbytes: int) -> None:
        """Forget `nbytes` a partial request held."""
        ...

    request_timeouts: int
    output_limited: int


# Under the opt-in compiled build (mypyc) this is a native class; the other services'
# connections, still interpreted, derive from it.
@mypyc_attr(allow_interpreted_subclasses=True)
class BaseProtocol(asyncio.Protocol):
    """Common shell of every server connection.

    Subclasses implement `on_data(data)` (feed the parser, handle every complete request,
    and say what remains; see its docstring) and may override `on_connect`, `on_close`,
    `reject(reason)`, `can_idle_close` and `shutdown_requested`. They read `cycle` and
    `state` but never assign them.
    """

    transport: asyncio.Transport | None
    peer: str

    def __init__(self, manager: Admission) -> None:
        self.manager = manager
        self.transport = None
        self.cycle = ConnState.READING_HEADER  # the request cycle; see the design note
        self.peer = "?"
        self.local = "?"
        self.conn_id = 0
        self.created = manager.clock()
        self.last_active = self.created
        self.bytes_in = 0
        self.bytes_out = 0
        self.requests = 0
        self.close_reason = ""
        #: Closing, closed, or to close once the cycle ends: start no new request.
        self.closing = False
        self._write_paused = False  # the transport's buffer is past its high-water mark
        self._hold_reading = False  # the service asked to stop reading (`pause_reading`)
        self._close_pending: str | None = None  # close, for this reason, once the cycle ends
        self._drained: asyncio.Event | None = None
        self._linger: asyncio.TimerHandle | None = None
        #: When the partial request now buffered began to arrive (None: none is).
        self.partial_since: float | None = None
        self._partial_mark = 0  # `requests` when that partial request began
        self._partial_held = 0  # bytes reserved for it from the manager's budget
        self._soft_since: float | None = None  # output over the soft limit since then

    @property
    def state(self) -> ConnState:
        """The seed's one state: the cycle, or WRITING_RESPONSE while the peer is not
        reading our replies and the connection is live."""
        cycle = self.cycle
        if self._write_paused and cycle is not _CLOSING and cycle is not _CLOSED:
            return _WRITING_RESPONSE
        return cycle

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
        cycle = self.cycle
        if cycle is _READING_HEADER or cycle is _READING_PAYLOAD:  # the table's common move
            self.cycle = _PROCESSING
        else:
            self.last_active = self.manager.clock()
            if next_state(cycle, ConnInput.BYTES) is _CLOSING:
                return  # bytes after we decided to close are dropped
        outcome = self.on_data(data)
        if outcome is not None:
            self.batch_done(outcome)

    def eof_received(self) -> bool | None:
        # A half-closed peer sends no more requests; replies already queued still go out
        # (returning False makes the transport close once its buffer is flushed).
        return False

    def pause_writing(self) -> None:
        was_paused = self._write_paused or self._hold_reading
        self._write_paused = True
        if self._drained is not None:
            self._drained.clear()
        self._sync_reading(was_paused=was_paused)

    def resume_writing(self) -> None:
        was_paused = self._write_paused or self._hold_reading
        self._write_paused = False
        self._soft_since = None  # below the low-water mark, so below any output limit
        if self._drained is not None:
            self._drained.set()
        self.last_active = self.manager.clock()  # a slow reader was busy, not idle
        self._sync_reading(was_paused=was_paused)
        if self.cycle is _PROCESSING:
            self.on_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cycle is not _CLOSING and not self.close_reason:
            self.close_reason = "peer closed" if exc is None else f"broken: {exc}"
        self.cycle = next_state(self.cycle, ConnInput.LOST)
        self.closing = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._partial_held:
            self.manager.release_partial(self._partial_held)
            self._partial_held = 0
        self.partial_since = None
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

    def on_writable(self) -> None:
        """The peer caught up with our replies while requests are in flight: a service
        that stopped starting requests because `write_blocked` goes on with them here."""

    def partial_bytes(self) -> int:
        """Bytes the partial request now buffered holds (what `on_data` left PARTIAL):
        counted against the manager's budget for all partial requests. 0 by default."""
        return 0

    def refuse(self, reason: str) -> None:
        """A request broke a limit of the connection layer (its deadline, the partial
        request budget): answer as `reject` does, which says `reason` where the protocol
        has a way to, and close."""
        self.reject(reason)

    def shutdown_requested(self) -> None:
        """The server is stopping: finish the requests in flight, then close after flushing."""
        self.close_when_done("server shutdown")

    def can_idle_close(self) -> bool:
        """Whether an idle timeout may close this connection now (not mid-request, and not
        while the peer is slowly reading our replies)."""
        cycle = self.cycle
        return (cycle is _READING_HEADER or cycle is _READING_PAYLOAD) and not self._write_paused

    @property
    def in_flight(self) -> bool:
        """Whether requests are still being handled (even with writes blocked)."""
        return self.cycle is _PROCESSING

    @property
    def write_blocked(self) -> bool:
        """Whether the peer is not reading our replies (the transport's buffer is past
        its high-water mark): start no request until `on_writable`."""
        return self._write_paused

    def check_deadlines(self, now: float) -> None:
        """The manager's sweep: close the connection if its partial request has been
        arriving longer than `request_timeout_s`, or its unsent replies stayed over the
        soft output limit too long."""
        limits = self.manager.limits
        since = self.partial_since
        timeout = limits.request_timeout_s
        if (
            since is not None
            and timeout > 0
            and now - since > timeout
            and self.cycle is _READING_PAYLOAD
            and not self._write_paused  # the peer is behind on our replies: theirs to do
        ):
            self.manager.request_timeouts += 1
            log.info("request timeout conn=%s timeout_s=%s", self, timeout)
            self.refuse(f"request not received whole within {timeout:g} s")
            return
        transport = self.transport
        if self._write_paused and transport is not None and self.cycle is not _CLOSED:
            self._check_output(transport, now)

    # -- what subclasses report --------------------------------------------------------

    def batch_done(self, outcome: ConnInput) -> None:
        """Record that every request started is handled; `outcome` is IDLE or PARTIAL.

        Closes the connection now if `close_when_done` asked for it. Outside a batch it
        changes nothing. Raises StateMachineError for any other outcome.
        """
        if outcome is not _IDLE and outcome is not _PARTIAL:
            raise StateMachineError(f"batch outcome must be idle or partial, got {outcome.value}")
        if self.cycle is not _PROCESSING:
            return
        self.cycle = _READING_HEADER if outcome is _IDLE else _READING_PAYLOAD
        # Idle time counts from the last reply, not from the request that started a slow one.
        now = self.last_active = self.manager.clock()
        if outcome is _PARTIAL:
            if not self._hold_partial(now):
                return
        elif self.partial_since is not None:
            self.partial_since = None
            if self._partial_held:
                self.manager.release_partial(self._partial_held)
                self._partial_held = 0
        if self._close_pending is not None:
            self.close(self._close_pending)

    def _hold_partial(self, now: float) -> bool:
        """A batch left a partial request: start its deadline if it is a new one, and
        reserve what it holds; refuse the connection (False) when over the budget."""
        if self.partial_since is None or self.requests != self._partial_mark:
            self.partial_since = now
            self._partial_mark = self.requests
        held = self.partial_bytes()
        more = held - self._partial_held
        manager = self.manager
        if more > 0:
            if not manager.reserve_partial(more):
                log.info(
                    "partial requests over budget conn=%s held=%d budget=%d",
                    self,
                    held,
                    manager.limits.max_partial_bytes,
                )
                self.refuse(
                    f"server busy: partial requests would hold more than"
                    f" {manager.limits.max_partial_bytes} bytes"
                )
                return False
        elif more < 0:
            manager.release_partial(-more)
        self._partial_held = held
        return True

    def close_when_done(self, reason: str, *, linger: bool = True) -> None:
        """Close once the requests in flight are answered (at once if none is): from now
        on the subclass starts no new request. The first reason given is kept."""
        if self.cycle is _PROCESSING:
            if self._close_pending is None:
                self._close_pending = reason
                self.closing = True
        else:
            self.close(reason, linger=linger)

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer; dropped silently once the connection is closed."""
        transport = self.transport
        cycle = self.cycle
        # The state, not only is_closing(): a lingering close has sent FIN with write_eof
        # and the transport is not closing yet, but it raises RuntimeError on write.
        if (
            transport is not None
            and cycle is not _CLOSING
            and cycle is not _CLOSED
            and not transport.is_closing()
        ):
            self.bytes_out += len(data)
            transport.write(data)
            if self._write_paused:  # past the high-water mark: are we past a limit?
                self._check_output(transport, None)

    def write_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """`write` of several buffers in one call, none copied into a joined one (a
        large value is sent from where it lies); dropped once the connection is closed."""
        transport = self.transport
        cycle = self.cycle
        if (
            transport is not None
            and cycle is not _CLOSING
            and cycle is not _CLOSED
            and not transport.is_closing()
        ):
            self.bytes_out += sum(map(len, parts))
            transport.writelines(parts)
            if self._write_paused:
                self._check_output(transport, None)

    def _check_output(self, transport: asyncio.Transport, now: float | None) -> None:
        """Close the connection, dropping its unsent replies, once they pass the hard
        output limit or have stayed over the soft one for longer than its seconds."""
        limits = self.manager.limits
        size = transport.get_write_buffer_size()
        hard = limits.output_hard_limit_bytes
        if hard and size > hard:
            self._output_limited(f"output buffer of {size} bytes exceeds hard limit {hard}")
            return
        soft = limits.output_soft_limit_bytes
        if not soft or size <= soft:
            self._soft_since = None
            return
        if now is None:
            now = self.manager.clock()
        if self._soft_since is None:
            self._soft_since = now
        elif now - self._soft_since > limits.output_soft_limit_s:
            self._output_limited(
                f"output buffer of {size} bytes over soft limit {soft}"
                f" for more than {limits.output_soft_limit_s:g} s"
            )

    def _output_limited(self, reason: str) -> None:
        self.manager.output_limited += 1
        log.info("output limit conn=%s reason=%r", self, reason)
        self.abort(reason)

    async def drained(self) -> None:
        """Wait until the peer has read enough of our replies (or the connection is gone)."""
        if not self._write_paused or self.transport is None:
            return
        if self._drained is None:
            self._drained = asyncio.Event()
        await self._drained.wait()

    def pause_reading(self) -> None:
        """Stop reading requests (the service's queue is full) until `resume_reading`."""
        was_paused = self._hold_reading or self._write_paused
        self._hold_reading = True
        self._sync_reading(was_paused=was_paused)

    def resume_reading(self) -> None:
        """Read requests again, unless the peer is still not reading our replies."""
        was_paused = self._hold_reading or self._write_paused
        self._hold_reading = False
        self._sync_reading(was_paused=was_paused)

    def _sync_reading(self, *, was_paused: bool) -> None:
        """Tell the transport when the two reasons to pause, taken together, changed."""
        paused = self._hold_reading or self._write_paused
        transport = self.transport
        if paused is not was_paused and transport is not None:
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def close(self, reason: str, *, linger: bool = True) -> None:
        """Flush what is queued, then close; idempotent.

        With `linger`, where the transport allows it, we send FIN after the last reply
        and drop whatever the peer still sends until it closes too (or LINGER_S passes).
        Closing outright while unread requests sit in our receive buffer would make the
        kernel send RST, and an RST can destroy the very error reply we just wrote.
        """
        cycle = self.cycle
        if cycle is _CLOSING or cycle is _CLOSED:
            return
        self.close_reason = reason
        self.cycle = next_state(cycle, ConnInput.CLOSE)
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if linger and transport.can_write_eof():
            transport.write_eof()
            if self._hold_reading or self._write_paused:
                transport.resume_reading()  # read (and drop) until the peer's FIN
            self._linger = asyncio.get_running_loop().call_later(LINGER_S, transport.close)
        else:
            transport.close()

    def abort(self, reason: str) -> None:
        """Close at once, dropping what is queued (shutdown deadline, broken peer)."""
        if self.cycle is not _CLOSED:
            if self.cycle is not _CLOSING:
                self.close_reason = reason
                self.cycle = next_state(self.cycle, ConnInput.CLOSE)
                self.closing = True
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
