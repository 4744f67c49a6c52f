"""Clocks: the monotonic time source every timeout reads, injectable so tests need no sleeps."""

from __future__ import annotations

import time
from typing import Protocol, final


class Clock(Protocol):
    """A source of monotonic seconds."""

    def __call__(self) -> float: ...


#: The real clock: `time.monotonic` itself, so a call costs one C function call.
MONOTONIC: Clock = time.monotonic


@final
class FakeClock:
    """A clock that moves only when told to, for tests of timeouts and rate limits."""

    __slots__ = ("now",)

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        self.now += seconds

    def __repr__(self) -> str:
        return f"<FakeClock now={self.now:.3f}>"
