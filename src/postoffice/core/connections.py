"""The connection manager: limits, idle timeouts, request deadlines, statistics and
orderly shutdown.

Two-phase init: the constructor only sets memory up; `startup()` starts the sweeper on the
running loop. Connections register on `connection_made` (`admit`) and leave on
`connection_lost` (`release`); the manager never touches sockets itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol, final

from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.config import check_range, setting

log = logging.getLogger(__name__)

#: A connection lives at most this long past its idle timeout or request deadline.
MAX_SWEEP_INTERVAL_S: Final = 1.0
#: The transport's write high-water mark (core.transport.WRITE_HIGH_WATER_BYTES): the
#: output limits are checked only past it, so a lower limit could never be enforced.
MIN_OUTPUT_LIMIT_BYTES: Final = 256 * 1024

_MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """Limits one listener's connections share (docs/security.md says why each default).

    A timeout of 0 disables it; an output limit of 0 disables it. The output limits work
    as Redis's `client-output-buffer-limit`: a client whose unsent replies pass
    `output_hard_limit_bytes`, or stay over `output_soft_limit_bytes` for more than
    `output_soft_limit_s`, is closed and its replies dropped. `request_timeout_s` is how
    long a request may take to arrive whole once its first byte came, and
    `max_partial_bytes` what all partly received requests may hold together. Raises
    ConfigError naming the field out of range.
    """

    max_connections: int = 10_000
    idle_timeout_s: float = 300.0
    max_request_bytes: int = 16 * _MIB
    output_hard_limit_bytes: int = 64 * _MIB
    output_soft_limit_bytes: int = 16 * _MIB
    output_soft_limit_s: float = 60.0
    request_timeout_s: float = 60.0
    max_partial_bytes: int = 256 * _MIB

    def __post_init__(self) -> None:
        check_range("max_connections", self.max_connections, 1, 1_000_000)
        check_range("idle_timeout_s", self.idle_timeout_s, 0, 365 * 86400)
        check_range("max_request_bytes", self.max_request_bytes, 64, 1 << 31)
        for name in ("output_hard_limit_bytes", "output_soft_limit_bytes"):
            value = getattr(self, name)
            if value:
                check_range(name, value, MIN_OUTPUT_LIMIT_BYTES, 1 << 40)
        check_range("output_soft_limit_s", self.output_soft_limit_s, 0, 86400)
        check_range("request_timeout_s", self.request_timeout_s, 0, 86400)
        check_range("max_partial_bytes", self.max_partial_bytes, 0, 1 << 40)


_DEFAULTS: Final = ConnectionLimits()


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientLimitSettings:
    """The per-client limits of the connection layer as settings: one declaration (flag,
    help, range, default from ConnectionLimits) that every server's config inherits, so the
    command, store and ingest servers take them alike (docs/security.md)."""

    output_hard_limit_bytes: int = setting(
        _DEFAULTS.output_hard_limit_bytes,
        help="Close a client whose unsent replies pass this many bytes (0: no limit, else "
        "at least 256 KiB).",
        flag="--output-hard-limit",
        unit="bytes",
        low=0,
        high=1 << 40,
        live=True,
    )
    output_soft_limit_bytes: int = setting(
        _DEFAULTS.output_soft_limit_bytes,
        help="Close a client whose unsent replies stay over this many bytes for "
        "--output-soft-seconds (0: no limit, else at least 256 KiB).",
        flag="--output-soft-limit",
        unit="bytes",
        low=0,
        high=1 << 40,
        live=True,
    )
    output_soft_limit_s: float = setting(
        _DEFAULTS.output_soft_limit_s,
        help="How long a client's unsent replies may stay over --output-soft-limit.",
        flag="--output-soft-seconds",
        unit="seconds",
        low=0,
        high=86400,
        live=True,
    )
    request_timeout_s: float = setting(
        _DEFAULTS.request_timeout_s,
        help="Close a client whose request has not arrived whole this many seconds after "
        "its first byte (0: never).",
        unit="seconds",
        low=0,
        high=86400,
        live=True,
    )
    max_partial_bytes: int = setting(
        _DEFAULTS.max_partial_bytes,
        help="Bytes all partly received requests may hold together; the client whose "
        "request would pass it is refused (0: no limit).",
        flag="--max-partial-size",
        unit="bytes",
        low=0,
        high=1 << 40,
        live=True,
    )


class Managed(Protocol):
    """What the manager needs of a connection (core.transport.BaseProtocol has it all)."""

    conn_id: int
    last_active: float
    bytes_in: int
    bytes_out: int

    def can_idle_close(self) -> bool:
        """Whether an idle timeout may close it now."""
        ...

    def on_idle_timeout(self) -> None:
        """It sat idle past the timeout: close it."""
        ...

    def shutdown_requested(self) -> None:
        """The server is stopping: finish what is in flight, then close."""
        ...

    def abort(self, reason: str) -> None:
        """Close at once, dropping what is queued."""
        ...

    def check_deadlines(self, now: float) -> None:
        """Close it if a request has been arriving too long, or its unsent replies stayed
        over the soft output limit too long (`limits` of its manager)."""
        ...


@final
class ConnectionManager:
    """Admits, tracks, times out and drains the connections of one service.

    Limits may be replaced at run time (`limits = ...`): a lower maximum refuses new
    connections only; a new idle timeout applies at the next sweep.

    Connection ids are `first_id`, `first_id + id_step`, ...: several processes serving
    one port hand out disjoint ids that way (process i of N: first_id i + 1, id_step N).
    Raises ConfigError when either is below 1.
    """

    def __init__(
        self,
        limits: ConnectionLimits,
        *,
        clock: Clock = MONOTONIC,
        first_id: int = 1,
        id_step: int = 1,
    ) -> None:
        check_range("first_id", first_id, 1, None)
        check_range("id_step", id_step, 1, None)
        self.limits = limits
        self.clock = clock
        self._conns: dict[int, Managed] = {}
        self._next_id = first_id
        self._id_step = id_step
        self._sweeper: asyncio.Task[None] | None = None
        self._empty: asyncio.Event | None = None
        self.accepting = True
        self.accepted = 0
        self.rejected = 0
        self.timed_out = 0
        self.closed = 0
        #: Connections closed because a request did not arrive whole in time.
        self.request_timeouts = 0
        #: Connections closed because their unsent replies passed an output limit.
        self.output_limited = 0
        #: Connections refused because their partial request would pass max_partial_bytes.
        self.partial_refused = 0
        #: Bytes all partly received requests hold now (`reserve_partial`).
        self.partial_bytes = 0

    # -- lifecycle ---------------------------------------------------------------------

    def startup(self) -> None:
        """Start the idle sweeper on the running loop (phase two of init)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="idle-sweeper"
            )

    async def shutdown(self, *, deadline_s: float) -> None:
        """Stop admitting, let each connection finish what is in flight, then close all.

        Connections still open after `deadline_s` are aborted.
        """
        self.accepting = False
        for conn in list(self._conns.values()):
            conn.shutdown_requested()
        if self._conns:
            self._empty = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), deadline_s)
        for conn in list(self._conns.values()):
            log.warning("shutdown deadline passed conn=%s", conn)
            conn.abort("shutdown deadline")
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    # -- registration ------------------------------------------------------------------

    def admit(self, conn: Managed) -> str | None:
        """Register `conn`; return a refusal reason when it must be turned away."""
        if not self.accepting:
            self.rejected += 1
            return "server is shutting down"
        if len(self._conns) >= self.limits.max_connections:
            self.rejected += 1
            return "max number of clients reached"
        conn.conn_id = self._next_id
        self._next_id += self._id_step
        self._conns[conn.conn_id] = conn
        self.accepted += 1
        return None

    def release(self, conn: Managed) -> None:
        """Forget `conn` (called from connection_lost)."""
        if self._conns.pop(conn.conn_id, None) is not None:
            self.closed += 1
        if not self._conns and self._empty is not None:
            self._empty.set()

    def reserve_partial(self, nbytes: int) -> bool:
        """Count `nbytes` more held by a partly received request; False (and nothing
        counted) when that would pass `limits.max_partial_bytes` (0: no limit)."""
        cap = self.limits.max_partial_bytes
        if cap and self.partial_bytes + nbytes > cap:
            self.partial_refused += 1
            return False
        self.partial_bytes += nbytes
        return True

    def release_partial(self, nbytes: int) -> None:
        """Forget `nbytes` a partly received request held (it completed, or went)."""
        self.partial_bytes -= nbytes

    @property
    def active(self) -> int:
        """Connections currently admitted."""
        return len(self._conns)

    def __iter__(self) -> Iterator[Managed]:
        return iter(list(self._conns.values()))

    def get(self, conn_id: int) -> Managed | None:
        """The admitted connection with this id, if any."""
        return self._conns.get(conn_id)

    # -- idle timeouts -----------------------------------------------------------------

    def sweep(self) -> int:
        """Close every connection idle past the timeout, and let each other one check its
        request deadline and output limit (`Managed.check_deadlines`); return how many the
        idle timeout closed."""
        now = self.clock()
        timeout = self.limits.idle_timeout_s
        cutoff = now - timeout if timeout > 0 else None
        closed = 0
        for conn in list(self._conns.values()):
            if cutoff is not None and conn.last_active < cutoff and conn.can_idle_close():
                self.timed_out += 1
                closed += 1
                log.info("idle timeout conn=%s idle_s=%.1f", conn, now - conn.last_active)
                conn.on_idle_timeout()
            else:
                conn.check_deadlines(now)
        return closed

    def sweep_interval(self) -> float:
        """Seconds between sweeps: a quarter of the shortest timeout, at most 1 s."""
        limits = self.limits
        shortest = [t / 4 for t in (limits.idle_timeout_s, limits.request_timeout_s) if t > 0]
        return min([MAX_SWEEP_INTERVAL_S, *shortest])

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval())
            try:
                self.sweep()
            except Exception:
                log.exception("idle sweep failed")

    def stats(self) -> dict[str, int]:
        """Counters for STATS replies and /metrics."""
        return {
            "connections_accepted": self.accepted,
            "connections_active": len(self._conns),
            "connections_rejected": self.rejected,
            "connections_timed_out": self.timed_out,
            "connections_closed": self.closed,
        }

    def limit_stats(self) -> dict[str, int]:
        """Counters of the connections a limit closed or refused, and the bytes partial
        requests hold now."""
        return {
            "connections_request_timeout": self.request_timeouts,
            "connections_output_limited": self.output_limited,
            "connections_partial_refused": self.partial_refused,
            "partial_request_bytes": self.partial_bytes,
        }

    def __repr__(self) -> str:
        return (
            f"<ConnectionManager active={len(self._conns)} max={self.limits.max_connections}"
            f" accepting={self.accepting}>"
        )


__all__ = ["ClientLimitSettings", "ConnectionLimits", "ConnectionManager", "Managed"]
