"""Tests for core.runtime: backoff, the supervisor, run() and signals, fd limits, announce()."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from postoffice.core.errors import ClosedError
from postoffice.core.runtime import (
    Backoff,
    Supervisor,
    announce,
    announce_failure,
    raise_fd_limit,
    run,
    unless_stopped,
)

_WAIT_S = 5.0  # upper bound on waits that should end quickly


class TestBackoff:
    def test_doubles_up_to_the_cap(self) -> None:
        backoff = Backoff()
        delays = [backoff.next_delay() for _ in range(9)]
        assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])

    def test_reset_starts_again(self) -> None:
        backoff = Backoff(initial_s=1, max_s=100, factor=3)
        assert [backoff.next_delay() for _ in range(3)] == [1, 3, 9]
        backoff.reset()
        assert [backoff.next_delay() for _ in range(2)] == [1, 3]

    def test_initial_above_the_cap_is_capped(self) -> None:
        """Regression: the first delay ignored `max_s`."""
        backoff = Backoff(initial_s=10, max_s=2)
        assert [backoff.next_delay() for _ in range(2)] == [2, 2]


@pytest.fixture
def crash_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="postoffice.core.runtime")
    return caplog


def _restart_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        float(record.args[2])  # type: ignore[index, arg-type]  # (component, reason, delay, n)
        for record in caplog.records
        if record.getMessage().startswith("component crashed")
    ]


class TestSupervisor:
    async def test_restarts_a_crashing_component(self, crash_log: pytest.LogCaptureFixture) -> None:
        supervisor = Supervisor()
        calls = 0
        healthy = asyncio.Event()

        async def flaky() -> None:
            nonlocal calls
            calls += 1
            if calls <= 3:
                raise RuntimeError(f"crash {calls}")
            healthy.set()
            await asyncio.Event().wait()  # runs until stopped

        supervisor.start("flaky", flaky, backoff=Backoff(initial_s=0.001, max_s=0.001))
        await asyncio.wait_for(healthy.wait(), _WAIT_S)
        assert supervisor.restarts == {"flaky": 3}
        assert repr(supervisor) == "<Supervisor components=['flaky'] restarts={'flaky': 3}>"
        messages = [record.getMessage() for record in crash_log.records]
        assert messages[0] == (
            "component crashed component=flaky reason=RuntimeError('crash 1')"
            " restart_in_s=0.00 restarts=1"
        )
        await asyncio.wait_for(supervisor.stop(), _WAIT_S)
        assert calls == 4
        assert supervisor.restarts == {"flaky": 3}  # stopping is not a crash

    @pytest.mark.parametrize(
        ("options", "max_s", "delays"),
        [
            ({}, 0.004, [0.001, 0.002, 0.004]),
            ({"healthy_after_s": 0}, 10, [0.001, 0.001, 0.001]),  # every run counts as healthy
        ],
        ids=["backoff grows between crashes", "a healthy run resets the backoff"],
    )
    async def test_restart_delays(
        self,
        crash_log: pytest.LogCaptureFixture,
        options: dict[str, float],
        max_s: float,
        delays: list[float],
    ) -> None:
        supervisor = Supervisor(**options)
        done = asyncio.Event()
        calls = 0

        async def crashing() -> None:
            nonlocal calls
            calls += 1
            if calls == 4:
                done.set()
                return
            raise OSError("no route")

        supervisor.start("c", crashing, backoff=Backoff(initial_s=0.001, max_s=max_s))
        await asyncio.wait_for(done.wait(), _WAIT_S)
        assert _restart_delays(crash_log) == delays
        await supervisor.stop()

    async def test_a_component_that_returns_is_not_restarted(self) -> None:
        supervisor = Supervisor()
        calls = 0

        async def one_shot() -> None:
            nonlocal calls
            calls += 1

        supervisor.start("once", one_shot, backoff=Backoff(initial_s=0.001))
        for _ in range(20):
            await asyncio.sleep(0)
        assert calls == 1
        assert supervisor.restarts == {"once": 0}
        await asyncio.wait_for(supervisor.stop(), _WAIT_S)

    async def test_stop_cancels_a_component_in_backoff(self) -> None:
        supervisor = Supervisor()
        crashed = asyncio.Event()

        async def crashing() -> None:
            crashed.set()
            raise RuntimeError("down")

        supervisor.start("slow", crashing, backoff=Backoff(initial_s=3600))
        await asyncio.wait_for(crashed.wait(), _WAIT_S)
        await asyncio.sleep(0)
        await asyncio.wait_for(supervisor.stop(), _WAIT_S)
        assert supervisor.restarts == {"slow": 1}

    async def test_start_after_stop_is_refused(self) -> None:
        """Regression: the component silently never ran."""
        supervisor = Supervisor()
        await supervisor.stop()

        async def component() -> None:
            pass

        with pytest.raises(
            ClosedError, match=r"^supervisor is stopped, cannot start component 'x'$"
        ):
            supervisor.start("x", component)

    async def test_a_running_name_cannot_be_started_twice(self) -> None:
        """Regression: the first task was orphaned and stop() never cancelled it."""
        supervisor = Supervisor()
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.Event().wait()

        supervisor.start("x", forever)
        await asyncio.wait_for(started.wait(), _WAIT_S)
        with pytest.raises(ValueError, match=r"^component 'x' is already running$"):
            supervisor.start("x", forever)
        await asyncio.wait_for(supervisor.stop(), _WAIT_S)

    async def test_a_finished_name_can_start_again(self) -> None:
        supervisor = Supervisor()
        runs = 0

        async def one_shot() -> None:
            nonlocal runs
            runs += 1

        supervisor.start("x", one_shot)
        for _ in range(5):
            await asyncio.sleep(0)
        supervisor.start("x", one_shot)
        await asyncio.wait_for(supervisor.stop(), _WAIT_S)
        assert runs == 2


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("restore_signals")
class TestRun:
    def test_returns_what_main_returns(self) -> None:
        async def main(stop: asyncio.Event) -> int:
            return 7

        assert run(main) == 7

    def test_sigterm_sets_stop(self) -> None:
        async def main(stop: asyncio.Event) -> str:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), _WAIT_S)
            return "drained"

        assert run(main) == "drained"

    def test_second_signal_exits_at_once(self) -> None:
        async def main(stop: asyncio.Event) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), _WAIT_S)
            os.kill(os.getpid(), signal.SIGINT)
            never = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(never, _WAIT_S)  # the second signal ends the run first

        with pytest.raises(SystemExit) as exited:
            run(main)
        assert exited.value.code == 1

    def test_signal_handlers_are_removed_afterwards(self) -> None:
        """Regression: handlers of the closed loop stayed and swallowed later signals."""

        async def main(stop: asyncio.Event) -> None:
            pass

        run(main)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.fixture
def soft_fd_limit() -> Iterator[tuple[int, int]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield soft, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class TestFdLimit:
    def test_never_lowers_the_soft_limit(self, soft_fd_limit: tuple[int, int]) -> None:
        soft, _ = soft_fd_limit
        got = raise_fd_limit()
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert got == now
        if soft != resource.RLIM_INFINITY:
            assert got >= soft
        assert raise_fd_limit(16) == now

    def test_raises_towards_the_wanted_count(self, soft_fd_limit: tuple[int, int]) -> None:
        soft, hard = soft_fd_limit
        top = soft if hard == resource.RLIM_INFINITY else hard
        if top == resource.RLIM_INFINITY or top < 512:
            pytest.skip(f"fd limits soft={soft} hard={hard} leave no room to test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_fd_limit(384) == 384
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 384
        assert raise_fd_limit(top + 1000) == top  # capped by the hard limit


class TestAnnounce:
    def test_writes_json_atomically(self, tmp_path: Path) -> None:
        target = tmp_path / "run" / "command.json"
        announce(target, service="command", addresses={"command": ("127.0.0.1", 6380)})
        assert json.loads(target.read_text()) == {
            "service": "command",
            "pid": os.getpid(),
            "listeners": {"command": ["127.0.0.1", 6380]},
        }
        assert [p.name for p in target.parent.iterdir()] == ["command.json"]  # no temp left

    def test_replaces_an_older_file(self, tmp_path: Path) -> None:
        target = tmp_path / "command.json"
        target.write_text("stale")
        announce(
            str(target),
            service="command",
            addresses={"command": ("::1", 1), "metrics": ("127.0.0.1", 9100)},
        )
        body = json.loads(target.read_text())
        assert body["listeners"] == {"command": ["::1", 1], "metrics": ["127.0.0.1", 9100]}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["command.json"]


class TestAnnounceFailure:
    def test_writes_the_reason_where_the_listeners_would_be(self, tmp_path: Path) -> None:
        target = tmp_path / "run" / "store.ready.json"
        announce_failure(target, service="store", error="cannot listen for store on h:1: x")
        assert json.loads(target.read_text()) == {
            "service": "store",
            "pid": os.getpid(),
            "error": "cannot listen for store on h:1: x",
        }
        assert [p.name for p in target.parent.iterdir()] == ["store.ready.json"]


class TestUnlessStopped:
    async def test_returns_the_result_when_the_work_ends_first(self) -> None:
        async def work() -> int:
            return 5

        assert await unless_stopped(work(), asyncio.Event()) == (True, 5)

    async def test_a_stop_cancels_work_that_waits(self) -> None:
        """A start-up retrying a busy port must not hold a SIGTERM back."""
        cancelled = asyncio.Event()
        waiting = asyncio.Event()

        async def work() -> int:
            waiting.set()
            try:
                await asyncio.Event().wait()  # a bind that never succeeds
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return 5

        stop = asyncio.Event()
        outcome = asyncio.ensure_future(unless_stopped(work(), stop))
        await asyncio.wait_for(waiting.wait(), _WAIT_S)
        stop.set()
        assert await asyncio.wait_for(outcome, _WAIT_S) == (False, None)
        assert cancelled.is_set()

    async def test_the_works_error_is_raised(self) -> None:
        async def work() -> int:
            raise ClosedError("boom")

        with pytest.raises(ClosedError, match=r"^boom$"):
            await unless_stopped(work(), asyncio.Event())
