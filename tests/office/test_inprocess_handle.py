"""The in-process Driver as an OfficeHandle: events as they happen, users added from the
next day, the clock held and let go, live settings taken at the next minute."""

from __future__ import annotations

import asyncio
import dataclasses

from postoffice.office.events import Cause, DayEnded, DayStarted, Event, RunEnded
from postoffice.office.handle import OfficeHandle
from postoffice.office.inprocess import Driver
from postoffice.office.live import LiveView
from postoffice.office.rules import DAY_MINUTES
from postoffice.office.simconfig import OfficeConfig, load_config, shipped_config
from postoffice.office.tally import DayReport

FAST: dict[str, str] = {"POSTOFFICE_OFFICE_N_NANO_SECS": "0"}


def _config(name: str = "timeout", **changes: int) -> OfficeConfig:
    return dataclasses.replace(load_config(shipped_config(name), env=FAST), **changes)


def _no_day(events: list[Event], report: DayReport | None) -> None:
    pass


def test_the_driver_is_an_office_handle() -> None:
    handle: OfficeHandle = Driver(_config(), seed=1, on_day=_no_day)
    assert (handle.day, handle.minute) == (0, 0)


async def test_events_arrive_minute_by_minute_and_fold_like_the_days() -> None:
    batches: list[list[Event]] = []
    days: list[list[Event]] = []
    driver = Driver(
        _config(sim_duration=2),
        seed=5,
        on_day=lambda events, report: days.append(list(events)),
        on_events=batches.append,
    )
    outcome = await driver.run(asyncio.Event())
    assert outcome.ended.cause is Cause.TIMEOUT
    flat = [e for batch in batches for e in batch]
    assert flat[-1] == outcome.ended
    assert flat[:-1] == days[0] + days[1]
    # whole minutes: no minute's events are split over two calls
    minutes = [
        (getattr(b[0], "day", None), getattr(b[0], "minute", None))
        for b in batches
        if not isinstance(b[0], DayStarted | RunEnded)
    ]
    assert len(minutes) == len(set(minutes))


async def test_added_users_come_from_the_next_day() -> None:
    driver: Driver

    def on_events(events: list[Event]) -> None:
        for event in events:
            if isinstance(event, DayEnded) and event.day == 0:
                driver.add_users(7)

    starts: list[int] = []
    driver = Driver(
        _config(sim_duration=2),
        seed=2,
        on_day=lambda events, report: starts.extend(
            e.users for e in events if isinstance(e, DayStarted)
        ),
        on_events=on_events,
    )
    await driver.run(asyncio.Event())
    assert starts == [10, 17]


async def test_add_users_without_a_count_adds_n_new_users_as_last_applied() -> None:
    view = LiveView()
    driver = Driver(
        _config(sim_duration=2, n_new_users=5), seed=2, on_day=_no_day, on_events=view.apply
    )
    driver.apply_config(_config(n_new_users=9))
    driver.add_users()
    await driver.run(asyncio.Event())
    assert view.snapshot().users == 19


async def test_a_paused_clock_holds_between_minutes_until_resumed() -> None:
    held = asyncio.Event()
    seen: list[tuple[int, int]] = []
    driver: Driver

    def on_events(events: list[Event]) -> None:
        seen.append((driver.day, driver.minute))
        if not held.is_set() and driver.minute >= 100:
            driver.pause()
            held.set()

    driver = Driver(_config(sim_duration=1), seed=3, on_day=_no_day, on_events=on_events)
    task = asyncio.ensure_future(driver.run(asyncio.Event()))
    await held.wait()
    at = (driver.day, driver.minute)
    for _ in range(50):  # the loop runs other work; the clock does not move
        await asyncio.sleep(0)
    assert (driver.day, driver.minute) == at
    assert not task.done()
    driver.resume()
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.ended.cause is Cause.TIMEOUT
    assert outcome.minutes == DAY_MINUTES
    assert driver.minute == DAY_MINUTES


async def test_a_stop_while_paused_ends_the_run_with_signal() -> None:
    stop = asyncio.Event()
    driver: Driver

    def on_events(events: list[Event]) -> None:
        if driver.minute >= 10:
            driver.pause()

    driver = Driver(_config(sim_duration=3), seed=3, on_day=_no_day, on_events=on_events)
    task = asyncio.ensure_future(driver.run(stop))
    for _ in range(20):
        await asyncio.sleep(0)
    assert driver.day == 1
    stop.set()
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.ended.cause is Cause.SIGNAL
    assert outcome.ended.days == 1


async def test_a_new_explode_threshold_is_taken_during_the_run() -> None:
    """With the threshold the run started with it times out; lowered to 0 during the
    first day, it explodes at the end of the first day that left users waiting."""
    base = _config("explode", sim_duration=3, explode_threshold=10_000)
    waiting: list[int] = []
    first = await Driver(
        base,
        seed=1,
        on_day=lambda events, report: waiting.append(report.waiting_users if report else -1),
    ).run(asyncio.Event())
    assert first.ended.cause is Cause.TIMEOUT
    assert any(waiting)
    driver: Driver

    def on_events(events: list[Event]) -> None:
        if driver.minute >= 200 and driver.config.explode_threshold:
            driver.apply_config(dataclasses.replace(base, explode_threshold=0))

    driver = Driver(base, seed=1, on_day=_no_day, on_events=on_events)
    outcome = await driver.run(asyncio.Event())
    assert outcome.ended.cause is Cause.EXPLODE
    assert outcome.ended.days == next(day for day, n in enumerate(waiting, 1) if n > 0)
    assert "EXPLODE_THRESHOLD 0" in outcome.ended.detail


async def test_apply_config_ignores_the_keys_that_need_a_restart() -> None:
    driver = Driver(_config(), seed=1, on_day=_no_day)
    driver.apply_config(_config(nof_users=99, sim_duration=1, n_nano_secs=7))
    assert (driver.config.nof_users, driver.config.sim_duration) == (10, 10)
    assert driver.config.n_nano_secs == 7
