"""The in-process driver: the engine's days run on the event loop, each simulated minute
taking N_NANO_SECS of real time (slept, never spun) or none; it is an OfficeHandle
(handle.py): users added, the clock held and let go, live settings taken. Office layer."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, final

from postoffice.office.engine import Simulation
from postoffice.office.errors import InvariantError
from postoffice.office.events import Cause, Event, RunEnded
from postoffice.office.handle import EventSink
from postoffice.office.rules import DAY_MINUTES
from postoffice.office.simconfig import OfficeConfig
from postoffice.office.tally import DayReport, Tally

__all__ = ["DaySink", "Driver", "Outcome", "end_of_day"]

#: Called with each day's events and its report (None when folding them failed).
DaySink = Callable[[list[Event], DayReport | None], None]


def end_of_day(
    tally: Tally,
    day: int,
    events: list[Event],
    *,
    cut: int | None,
    config: OfficeConfig,
    on_day: DaySink,
) -> RunEnded | None:
    """Fold day `day` (from 0) into `tally`, hand it to `on_day`, and say the ending it
    makes, if any: error (an invariant broken), signal (the day was cut at minute `cut`)
    or explode. Both drivers close their days with it."""
    try:
        report = None
        for event in events:
            report = tally.apply(event) or report
    except InvariantError as exc:
        on_day(events, None)
        return RunEnded(days=day + 1, cause=Cause.ERROR, detail=str(exc))
    on_day(events, report)
    assert report is not None  # close_day always ends with a DayEnded
    if cut is not None:
        return RunEnded(
            days=day + 1,
            cause=Cause.SIGNAL,
            detail=f"stopped by a signal during day {day + 1} at minute {cut}",
        )
    if report.waiting_users > config.explode_threshold:
        return RunEnded(
            days=day + 1,
            cause=Cause.EXPLODE,
            detail=f"{report.waiting_users} users still waiting at the end of day"
            f" {day + 1}, more than EXPLODE_THRESHOLD {config.explode_threshold}",
        )
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How a run ended, its last report, and how long its minutes took against plan."""

    ended: RunEnded
    last: DayReport | None
    minutes: int
    elapsed_s: float
    drift_s: float  # elapsed - minutes x N_NANO_SECS (0 when minutes are not paced)


@final
class Driver:
    """Runs one simulation in this process; `run` returns once it has ended."""

    def __init__(
        self,
        config: OfficeConfig,
        *,
        seed: int,
        on_day: DaySink,
        on_events: EventSink | None = None,
    ) -> None:
        """`on_day` gets each day's events and report at its end; `on_events`, if given,
        each minute's events as they happen (handle.EventSink), and the RunEnded."""
        self.config = config
        self.simulation = Simulation(config.roster, seed=seed)
        self.tally = Tally()
        self._on_day = on_day
        self._on_events = on_events
        self._minutes = 0
        self._last_minute_at = 0.0
        self._due = 0.0  # loop time the current paced minute ends
        self._minute_of_day = 0
        self._running = asyncio.Event()
        self._running.set()

    @property
    def day(self) -> int:
        """The current day, counted from 1 (0 before the first day starts)."""
        return self.simulation.day + 1

    @property
    def minute(self) -> int:
        """The minute of the day simulated last (0 to 479), or the closing minute (480,
        or earlier after a signal) once the day has closed."""
        return self._minute_of_day

    @property
    def paused(self) -> bool:
        """True while the clock is held."""
        return not self._running.is_set()

    def add_users(self, count: int | None = None) -> None:
        """The users manager's request: `count` (None: N_NEW_USERS) more users from the
        next day on. Raises ValueError for a negative count."""
        self.simulation.add_users(self.config.n_new_users if count is None else count)

    def pause(self) -> None:
        """Hold the clock before the next minute; `run` waits (sleeping) until `resume`."""
        self._running.clear()

    def resume(self) -> None:
        """Let the clock go on; paced minutes start again from now, not catching up."""
        self._running.set()

    def apply_config(self, config: OfficeConfig) -> None:
        """Take N_NANO_SECS, EXPLODE_THRESHOLD and N_NEW_USERS from `config` from the next
        minute on (the day's end check uses the threshold of that moment)."""
        self.config = dataclasses.replace(
            self.config,
            n_nano_secs=config.n_nano_secs,
            explode_threshold=config.explode_threshold,
            n_new_users=config.n_new_users,
        )

    async def run(self, stop: asyncio.Event) -> Outcome:
        """Simulate until SIM_DURATION days pass (timeout), a day ends with too many
        users waiting (explode), `stop` is set (signal: the current day closes at once),
        or the run breaks an invariant (error)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._due = started
        stopper = asyncio.ensure_future(stop.wait())
        try:
            ended = await self._days(stop, stopper)
        finally:
            stopper.cancel()
        if self._on_events is not None:
            self._on_events([ended])
        elapsed = loop.time() - started
        # Drift is measured when the last minute ended, not after the day's statistics
        # were printed: printing is not simulated time.
        return Outcome(
            ended=ended,
            last=self.tally.last,
            minutes=self._minutes,
            elapsed_s=elapsed,
            drift_s=self._last_minute_at - self._due if self.config.n_nano_secs else 0.0,
        )

    async def _hold(self, stopper: asyncio.Future[Literal[True]]) -> None:
        """Wait while paused (or until stopped); the paced schedule restarts from now."""
        loop = asyncio.get_running_loop()
        resumed = asyncio.ensure_future(self._running.wait())
        try:
            await asyncio.wait((stopper, resumed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            resumed.cancel()
        self._due = loop.time()

    async def _days(self, stop: asyncio.Event, stopper: asyncio.Future[Literal[True]]) -> RunEnded:
        loop = asyncio.get_running_loop()
        sim = self.simulation
        on_events = self._on_events
        step_s = self.config.n_nano_secs / 1e9
        for day in range(self.config.sim_duration):
            events = sim.start_day()
            self._minute_of_day = 0
            if on_events is not None:
                on_events(list(events))
            cut = None
            for minute in range(DAY_MINUTES):
                if not self._running.is_set() and not stop.is_set():
                    await self._hold(stopper)
                if stop.is_set():
                    cut = minute
                    break
                if self.config.n_nano_secs / 1e9 != step_s:
                    # A new pace (SIGHUP) counts from now: the minutes before it are not
                    # owed at the new rate.
                    step_s = self.config.n_nano_secs / 1e9
                    self._due = loop.time()
                self._minute_of_day = minute
                found = sim.step(minute)
                if found:
                    events.extend(found)
                    if on_events is not None:
                        on_events(found)
                self._minutes += 1
                if step_s:
                    self._due += step_s
                    delay = self._due - loop.time()
                    if delay > 0:
                        await asyncio.wait((stopper,), timeout=delay)
                    self._last_minute_at = loop.time()
            closing = sim.close_day()
            self._minute_of_day = DAY_MINUTES if cut is None else cut
            events.extend(closing)
            if on_events is not None:
                on_events(closing)
            ended = end_of_day(
                self.tally, day, events, cut=cut, config=self.config, on_day=self._on_day
            )
            if ended is not None:
                return ended
            if not step_s:
                await asyncio.sleep(0)  # let a signal's handler run between days
            if stop.is_set() and day + 1 < self.config.sim_duration:
                return RunEnded(
                    days=day + 1,
                    cause=Cause.SIGNAL,
                    detail=f"stopped by a signal after day {day + 1}",
                )
        return RunEnded(
            days=self.config.sim_duration,
            cause=Cause.TIMEOUT,
            detail=f"{self.config.sim_duration} days simulated",
        )

    def __repr__(self) -> str:
        return f"<Driver {self.simulation!r} minutes={self._minutes}>"
