"""The connection manager: limits, idle timeouts, statistics and orderly shutdown.

Two-phase init: the constructor only sets memory up; `startup()` starts the idle sweeper
on the running loop. Connections register on `connection_made` (`admit`) and leave on
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
from postoffice.core.config import check_range

log = logging.getLogger(__name__)

MAX_SWEEP_INTERVAL_S: Final = 1.0  # an idle connection lives at most this long past its timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """Limits one listener's connections share.

    `idle_timeout_s` of 0 disables the idle timeout.
    """

    max_connections: int = 10_000
    idle_timeout_s: float = 300.0
    max_request_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        check_range("max_connections", self.max_connections, 1, 1_000_000)
        check_range("idle_timeout_s", self.idle_timeout_s, 0, 365 * 86400)
        check_range("max_request_bytes", self.max_request_bytes, 64, 1 << 31)


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
        """Close every connection idle past the timeout; return how many were closed."""
        timeout = self.limits.idle_timeout_s
        if timeout <= 0:
            return 0
        cutoff = self.clock() - timeout
        closed = 0
        for conn in list(self._conns.values()):
            if conn.last_active < cutoff and conn.can_idle_close():
                self.timed_out += 1
                closed += 1
                log.info("idle timeout conn=%s idle_s=%.1f", conn, self.clock() - conn.last_active)
                conn.on_idle_timeout()
        return closed

    async def _sweep_forever(self) -> None:
        while True:
            timeout = self.limits.idle_timeout_s
            interval = (
                MAX_SWEEP_INTERVAL_S if timeout <= 0 else min(MAX_SWEEP_INTERVAL_S, timeout / 4)
            )
            await asyncio.sleep(interval)
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

    def __repr__(self) -> str:
        return (
            f"<ConnectionManager active={len(self._conns)} max={self.limits.max_connections}"
            f" accepting={self.accepting}>"
        )


__all__ = ["ConnectionLimits", "ConnectionManager", "Managed"]
