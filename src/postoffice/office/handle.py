"""The seam a running simulation is controlled through (OfficeHandle), whichever driver
runs it: the in-process Driver or the multi-process director. Office layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from postoffice.office.events import Event
from postoffice.office.simconfig import OfficeConfig

__all__ = ["EventSink", "OfficeHandle"]

#: Called with the events of one or more whole simulated minutes, as they happen (the
#: start of a day with its first minute or alone, and a day's close with its DayEnded in
#: one call), and last with the RunEnded.
EventSink = Callable[[list[Event]], object]


class OfficeHandle(Protocol):
    """A running simulation, as the control socket and SIGHUP drive it."""

    @property
    def day(self) -> int:
        """The current day, counted from 1 (0 before the first day starts)."""
        ...

    @property
    def minute(self) -> int:
        """The minute of the day simulated last (0 to 479), or the closing minute (480,
        or earlier after a signal) once the day has closed."""
        ...

    def add_users(self, count: int) -> None:
        """Add `count` users from the next day on. Raises ValueError for a negative count."""
        ...

    def pause(self) -> None:
        """Hold the simulated clock before its next minute (no busy waiting)."""
        ...

    def resume(self) -> None:
        """Let the simulated clock go on."""
        ...

    def apply_config(self, config: OfficeConfig) -> None:
        """Take N_NANO_SECS, EXPLODE_THRESHOLD and N_NEW_USERS from `config` at the next
        minute; its other keys are ignored (they need a restart)."""
        ...
