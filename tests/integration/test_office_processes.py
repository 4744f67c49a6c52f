"""`postoffice office run` as separate processes: the same statistics and events as in
one process, every ending leaves no process, socket or shared-memory file behind, and
waiting costs no CPU."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.office.events import DayEnded, DayStarted, Event
from postoffice.office.inprocess import Driver
from postoffice.office.procdriver import ProcessDriver
from postoffice.office.simconfig import OfficeConfig, load_config, shipped_config
from postoffice.office.tally import DayReport
from tests.integration.conftest import OFFICE_SHM

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), OFFICE_SHM]

POSTOFFICE = [sys.executable, "-c", "from postoffice.cli import main; main()"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SHM = Path("/dev/shm")
WAIT_S = 20.0


# -- looking at processes ----------------------------------------------------------------


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def _descendants(pid: int) -> set[int]:
    parents = _parents()
    tree: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        children = {p for p, pp in parents.items() if pp == parent}
        todo.extend(children - tree)
        tree |= children
    return tree


def _alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _office_shm() -> set[str]:
    return {p.name for p in SHM.iterdir() if p.name.startswith("po-office-")}


# -- runs through the CLI ----------------------------------------------------------------


def _env(**keys: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTOFFICE_OFFICE_")}
    env.update({f"POSTOFFICE_OFFICE_{k}": v for k, v in keys.items()})
    return env


def _run(
    tmp_path: Path, config: str, seed: int, *extra: str, **keys: str
) -> list[dict[str, object]]:
    done = subprocess.run(
        [
            *POSTOFFICE, "office", "run", "--config", config, "--seed", str(seed), "--json",
            "--data-dir", str(tmp_path / "var"), *extra,
        ],
        capture_output=True, text=True, timeout=50, env=_env(**keys),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _report(tmp_path: Path, run: object) -> list[dict[str, object]]:
    done = subprocess.run(
        [*POSTOFFICE, "office", "report", str(run), "--json", "--data-dir", str(tmp_path / "var")],
        capture_output=True, text=True, timeout=50, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize(
    ("config", "seed", "per_process", "keys"),
    [
        ("timeout", 1, ("1", "1"), {"SIM_DURATION": "3"}),
        (
            "timeout",
            2,
            ("4", "4"),
            {"SIM_DURATION": "3", "NOF_WORKERS": "6", "NOF_WORKER_SEATS": "4"},
        ),
        (
            "explode",
            3,
            ("1", "2"),
            {"NOF_USERS": "10", "SIM_DURATION": "3", "EXPLODE_THRESHOLD": "100"},
        ),
        ("explode", 4, ("3", "1"), {"NOF_USERS": "25"}),
    ],
)
def test_processes_give_the_in_process_statistics_and_events(
    tmp_path: Path, config: str, seed: int, per_process: tuple[str, str], keys: dict[str, str]
) -> None:
    """`per_process`: users and operators to a process."""
    keys = {"N_NANO_SECS": "0", **keys}
    before = _office_shm()
    users, operators = per_process
    apart = _run(
        tmp_path,
        config,
        seed,
        "--users-per-process",
        users,
        "--operators-per-process",
        operators,
        **keys,
    )
    alone = _run(tmp_path, config, seed, "--in-process", **keys)
    assert apart[1:-1] == alone[1:-1]  # every day's statistics and the ending
    assert apart[-2]["type"] == "end"
    assert _report(tmp_path, apart[0]["run"])[1:] == _report(tmp_path, alone[0]["run"])[1:]
    assert _office_shm() == before


def _config(**changes: int) -> OfficeConfig:
    return replace(load_config(shipped_config("timeout"), env={}), **changes)


def test_added_users_give_the_same_events_as_in_one_process() -> None:
    config = _config(n_nano_secs=0, sim_duration=4, nof_users=6, n_new_users=3)

    drivers: list[Driver | ProcessDriver] = []

    def record(into: list[Event]) -> Callable[[list[Event], DayReport | None], None]:
        def on_day(events: list[Event], report: DayReport | None) -> None:
            into.extend(events)
            if isinstance(events[-1], DayEnded) and events[-1].day in (0, 1):
                drivers[-1].add_users()  # N_NEW_USERS more from the next day on

        return on_day

    alone: list[Event] = []
    drivers.append(Driver(config, seed=8, on_day=record(alone)))
    asyncio.run(drivers[-1].run(asyncio.Event()))
    apart: list[Event] = []
    drivers.append(ProcessDriver(config, seed=8, on_day=record(apart), users_per_process=2))
    asyncio.run(drivers[-1].run(asyncio.Event()))
    starts = [e for e in apart if isinstance(e, DayStarted)]
    assert [s.users for s in starts] == [6, 9, 12, 12]
    assert apart == alone


# -- endings and what they leave ---------------------------------------------------------


class _Run:
    """A paced `office run` (multi-process) and the processes it started."""

    def __init__(self, tmp_path: Path, nano_secs: int, **keys: str) -> None:
        self.shm_before = _office_shm()
        self.proc = subprocess.Popen(
            [
                *POSTOFFICE, "office", "run", "--config", "timeout", "--seed", "5", "--json",
                "--data-dir", str(tmp_path / "var"),
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(N_NANO_SECS=str(nano_secs), SIM_DURATION="1000", **keys),
        )  # fmt: skip
        self.children: set[int] = set()
        self.run_dir: Path | None = None
        self.done = False
        self.err = ""

    def wait_ready(self, users: int) -> None:
        """Until the bus server, the issuer, the operators, the manager and `users` user
        processes run; remember them and the run directory."""

        def ready() -> bool:
            self.children = _descendants(self.proc.pid)
            # the bus server, the issuer, 10 operators, the manager, the users
            return len(self.children) >= 1 + 1 + 10 + 1 + users

        _until(ready, "every process of the run")
        for pid in self.children:
            line = _cmdline(pid)
            if "--run-dir" in line:
                self.run_dir = Path(line[line.index("--run-dir") + 1])
        assert self.run_dir is not None
        assert (self.run_dir / "bus.sock").exists()
        assert (self.run_dir / "director.sock").exists()
        assert _office_shm() - self.shm_before

    def pid_of(self, role: str) -> int:
        """A process whose command line names `role` (`operators`), or a user process
        (`users`: a child of the manager)."""
        parents = _parents()
        if role == "users":  # forked: the manager's command line, its own parent
            manager = self.pid_of("manager")
            return next(p for p in self.children if parents.get(p) == manager)
        return next(
            p for p in self.children if parents.get(p) == self.proc.pid and role in _cmdline(p)
        )

    def finish(self) -> list[dict[str, object]]:
        """Wait for the run's end (bounded); its JSON lines."""
        out, self.err = self.proc.communicate(timeout=30)
        self.done = True
        return [json.loads(line) for line in out.splitlines()]

    def assert_nothing_left(self) -> None:
        _until(lambda: not any(_alive(p) for p in self.children), "the children to be gone", 10)
        assert self.run_dir is not None
        assert not self.run_dir.exists()
        assert _office_shm() == self.shm_before

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if not self.done:
            self.proc.communicate(timeout=30)
            self.done = True


@pytest.fixture
def paced(tmp_path: Path) -> Iterator[Callable[..., _Run]]:
    runs: list[_Run] = []

    def start(nano_secs: int = 2_000_000, **keys: str) -> _Run:
        run = _Run(tmp_path, nano_secs, **keys)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()


def test_sigint_mid_run_ends_with_signal_and_leaves_nothing(paced: Callable[..., _Run]) -> None:
    run = paced()
    run.wait_ready(users=10)
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGINT)
    lines = run.finish()
    assert run.proc.returncode == 0, run.err
    end = next(line for line in lines if line["type"] == "end")
    assert end["cause"] == "signal", end
    assert "stopped by a signal" in str(end["detail"])
    run.assert_nothing_left()


@pytest.mark.parametrize(
    ("role", "named"),
    [("users", "user process"), ("operators", "operator process"), ("issuer", "the issuer")],
)
def test_a_role_process_killed_ends_the_run_with_error_naming_it(
    paced: Callable[..., _Run], role: str, named: str
) -> None:
    run = paced()
    run.wait_ready(users=10)
    victim = run.pid_of(role)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    lines = run.finish()
    assert time.monotonic() - killed_at < 10
    assert run.proc.returncode == 1, run.err
    end = next(line for line in lines if line["type"] == "end")
    assert end["cause"] == "error"
    assert named in str(end["detail"]), end
    assert f"pid {victim}" in str(end["detail"]), end
    assert "SIGKILL" in str(end["detail"]) or "gone" in str(end["detail"])
    run.assert_nothing_left()


def test_the_director_killed_takes_every_child_with_it(paced: Callable[..., _Run]) -> None:
    run = paced()
    run.wait_ready(users=10)
    run.kill()
    _until(lambda: not any(_alive(p) for p in run.children), "the orphans to die", 10)
    assert run.run_dir is not None
    _until(lambda: not run.run_dir.exists(), "the run directory to go", 10)  # type: ignore[union-attr]
    assert _office_shm() == run.shm_before


def test_paced_minutes_cost_almost_no_cpu_in_any_process(paced: Callable[..., _Run]) -> None:
    run = paced(nano_secs=200_000_000)  # 0.2 s a minute
    run.wait_ready(users=10)
    pids = [run.proc.pid, *run.children]
    time.sleep(0.5)  # the start-up's own work done
    before = sum(_cpu_s(p) for p in pids)
    time.sleep(2.0)
    spent = sum(_cpu_s(p) for p in pids) - before
    run.proc.send_signal(signal.SIGINT)
    run.finish()
    assert spent < 0.3, f"{spent:.2f} s of CPU in 2 s of waiting across {len(pids)} processes"


# -- the handle -----------------------------------------------------------------------------


def test_pause_holds_the_clock_without_cpu_and_resume_lets_it_go() -> None:
    config = _config(n_nano_secs=1_000_000, sim_duration=1000)  # 1 ms a minute: 2 days/s
    batches: list[tuple[int, int]] = []

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(200):  # 10 s
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("timed out")

    async def drive() -> None:
        stop = asyncio.Event()
        driver = ProcessDriver(config, seed=2, on_day=lambda e, r: None)
        driver.on_events = lambda events: batches.append((driver.day, driver.minute))
        task = asyncio.ensure_future(driver.run(stop))
        await until(lambda: len(batches) > 20 or task.done())
        assert not task.done(), task.result()
        driver.pause()
        await asyncio.sleep(0.1)  # the minute under way ends
        assert driver.paused
        held, count = (driver.day, driver.minute), len(batches)
        cpu = time.process_time()
        await asyncio.sleep(1.0)  # two days' worth of minutes
        assert (driver.day, driver.minute) == held
        assert len(batches) == count
        assert time.process_time() - cpu < 0.1
        driver.resume()
        await until(lambda: driver.day > held[0] + 1)
        stop.set()
        outcome = await asyncio.wait_for(task, 20)
        assert outcome.ended.cause.value == "signal"

    asyncio.run(drive())


def test_a_child_killed_while_the_clock_sleeps_is_noticed_at_once(
    paced: Callable[..., _Run],
) -> None:
    run = paced(nano_secs=5_000_000_000)  # 5 s a minute: the clock sleeps between events
    run.wait_ready(users=10)
    time.sleep(0.5)
    victim = run.pid_of("operators")
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    lines = run.finish()
    assert time.monotonic() - killed_at < 3
    end = next(line for line in lines if line["type"] == "end")
    assert end["cause"] == "error"
    assert f"pid {victim}) killed by SIGKILL" in str(end["detail"]), end
    run.assert_nothing_left()


def test_sigint_while_the_clock_sleeps_ends_the_run_at_once(paced: Callable[..., _Run]) -> None:
    run = paced(nano_secs=5_000_000_000)  # 5 s a minute
    run.wait_ready(users=10)
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGINT)
    signalled_at = time.monotonic()
    lines = run.finish()
    assert time.monotonic() - signalled_at < 5
    end = next(line for line in lines if line["type"] == "end")
    assert end["cause"] == "signal"
    assert "during day 1 at minute 1" in str(end["detail"]), end  # minute 0 had run
    run.assert_nothing_left()


def test_apply_config_takes_the_new_pace_at_the_next_minute() -> None:
    config = _config(n_nano_secs=50_000_000, sim_duration=3)  # 72 s at this pace

    async def drive() -> float:
        driver = ProcessDriver(config, seed=4, on_day=lambda e, r: None)
        seen = asyncio.Event()
        driver.on_events = lambda events: seen.set()
        task = asyncio.ensure_future(driver.run(asyncio.Event()))
        await asyncio.wait_for(seen.wait(), 20)
        driver.apply_config(replace(config, n_nano_secs=0, sim_duration=99, nof_users=1))
        assert driver.config.sim_duration == 3  # only the live keys are taken
        assert driver.config.n_nano_secs == 0
        started = time.monotonic()
        outcome = await asyncio.wait_for(task, 20)
        assert outcome.ended.cause.value == "timeout"
        assert outcome.ended.days == 3
        return time.monotonic() - started

    assert asyncio.run(drive()) < 10


def test_on_events_gets_every_event_as_it_happens_then_the_ending() -> None:
    config = _config(n_nano_secs=0, sim_duration=2)
    by_day: list[Event] = []
    live: list[list[Event]] = []
    clock: list[tuple[int, int]] = []
    driver = ProcessDriver(config, seed=6, on_day=lambda events, _: by_day.extend(events))

    def on_events(events: list[Event]) -> None:
        live.append(events)
        clock.append((driver.day, driver.minute))

    driver.on_events = on_events
    outcome = asyncio.run(driver.run(asyncio.Event()))
    assert live[-1] == [outcome.ended]
    assert [e for batch in live[:-1] for e in batch] == by_day
    assert len(live) > 2 * 3  # the days' starts and ends, and minutes between
    assert clock[0] == (1, 0)
    assert clock[-2] == (2, 480)  # the second day's close
    assert (driver.day, driver.minute) == (2, 480)
    minutes = [m for d, m in clock[:-1] if d == 1]
    assert minutes == sorted(minutes)
