"""The in-process driver: the engine's days run on the event loop, each simulated minute
taking N_NANO_SECS of real time (slept, never spun) or none. Office layer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, final

from postoffice.office.engine import Simulation
from postoffice.office.errors import InvariantError
from postoffice.office.events import Cause, Event, RunEnded
from postoffice.office.rules import DAY_MINUTES
from postoffice.office.simconfig import OfficeConfig
from postoffice.office.tally import DayReport, Tally

__all__ = ["Driver", "Outcome"]

#: Called with each day's events and its report (None when folding them failed).
DaySink = Callable[[list[Event], DayReport | None], None]


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

    def __init__(self, config: OfficeConfig, *, seed: int, on_day: DaySink) -> None:
        self.config = config
        self.simulation = Simulation(config.roster, seed=seed)
        self.tally = Tally()
        self._on_day = on_day
        self._minutes = 0
        self._last_minute_at = 0.0

    def add_users(self) -> None:
        """The users manager's request: N_NEW_USERS more users from the next day on."""
        self.simulation.add_users(self.config.n_new_users)

    async def run(self, stop: asyncio.Event) -> Outcome:
        """Simulate until SIM_DURATION days pass (timeout), a day ends with too many
        users waiting (explode), `stop` is set (signal: the current day closes at once),
        or the run breaks an invariant (error)."""
        loop = asyncio.get_running_loop()
        step_s = self.config.n_nano_secs / 1e9
        started = loop.time()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            ended = await self._days(stop, stopper, step_s, started)
        finally:
            stopper.cancel()
        elapsed = loop.time() - started
        # Drift is measured when the last minute ended, not after the day's statistics
        # were printed: printing is not simulated time.
        late = self._last_minute_at - (started + self._minutes * step_s)
        return Outcome(
            ended=ended,
            last=self.tally.last,
            minutes=self._minutes,
            elapsed_s=elapsed,
            drift_s=late if step_s else 0.0,
        )

    async def _days(
        self,
        stop: asyncio.Event,
        stopper: asyncio.Future[Literal[True]],
        step_s: float,
        started: float,
    ) -> RunEnded:
        loop = asyncio.get_running_loop()
        sim, config = self.simulation, self.config
        for day in range(config.sim_duration):
            events = sim.start_day()
            cut = None
            for minute in range(DAY_MINUTES):
                if stop.is_set():
                    cut = minute
                    break
                found = sim.step(minute)
                if found:
                    events.extend(found)
                self._minutes += 1
                if step_s:
                    delay = started + self._minutes * step_s - loop.time()
                    if delay > 0:
                        await asyncio.wait((stopper,), timeout=delay)
                    self._last_minute_at = loop.time()
            events.extend(sim.close_day())
            try:
                report = None
                for event in events:
                    report = self.tally.apply(event) or report
            except InvariantError as exc:
                self._on_day(events, None)
                return RunEnded(days=day + 1, cause=Cause.ERROR, detail=str(exc))
            self._on_day(events, report)
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
            if not step_s:
                await asyncio.sleep(0)  # let a signal's handler run between days
            if stop.is_set() and day + 1 < config.sim_duration:
                return RunEnded(
                    days=day + 1,
                    cause=Cause.SIGNAL,
                    detail=f"stopped by a signal after day {day + 1}",
                )
        return RunEnded(
            days=config.sim_duration,
            cause=Cause.TIMEOUT,
            detail=f"{config.sim_duration} days simulated",
        )

    def __repr__(self) -> str:
        return f"<Driver {self.simulation!r} minutes={self._minutes}>"
