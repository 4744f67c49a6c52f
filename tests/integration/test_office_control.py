"""A real `postoffice office run` (in one process, and as processes) with a slow
clock, watched and steered from outside: `office status` shows the clock moving, `office
add-users` shows in the next day's users, SIGHUP changes N_NANO_SECS live, the control
socket survives hostile bytes and holds the clock on pause."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postoffice.core.framing import encode_parts
from postoffice.office.control import ErrorReply, Status, encode_request
from postoffice.office.controlsocket import ControlClient, control_path
from postoffice.office.errors import NotRunningError
from postoffice.office.simconfig import shipped_config
from tests.integration.conftest import OFFICE_SHM

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POSTOFFICE = [sys.executable, "-c", "from postoffice.cli import main; main()"]
BOTH_WAYS = [
    pytest.param(True, id="in-process"),
    pytest.param(False, id="processes", marks=OFFICE_SHM),
]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short directory: a Unix socket path holds at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="po-office-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(**office: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTOFFICE_")}
    env.update({f"POSTOFFICE_OFFICE_{k}": v for k, v in office.items()})
    return env


class Run:
    """A running `office run` process and its control socket."""

    def __init__(
        self, data_dir: Path, config: str | Path, env: dict[str, str], *, in_process: bool
    ) -> None:
        self.data_dir = data_dir
        self.err_path = data_dir / "run.err"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    *POSTOFFICE,
                    "office",
                    "run",
                    "--config",
                    str(config),
                    "--in-process" if in_process else "--users-per-process=2",
                    "--seed",
                    "5",
                    "--json",
                    "--data-dir",
                    str(data_dir / "var"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        self.client = ControlClient(control_path(data_dir / "var"), timeout_s=5)
        self.wait_for(lambda: self._answers(), "the control socket")

    def _answers(self) -> bool:
        try:
            self.client.status()
        except NotRunningError:
            return False
        return True

    def wait_for(self, check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.proc.poll() is not None:
                raise AssertionError(f"run exited {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} in {timeout_s} s: {self.stderr()}")
            time.sleep(0.05)

    def status(self) -> dict[str, object]:
        return self.client.status()

    def clock(self) -> tuple[int, int]:
        snap = self.status()
        day, minute = snap["day"], snap["minute"]
        assert isinstance(day, int)
        assert isinstance(minute, int)
        return day, minute

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start(data_dir: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def starter(config: str | Path = "timeout", *, in_process: bool = True, **office: str) -> Run:
        run = Run(data_dir, config, _env(**office), in_process=in_process)
        runs.append(run)
        return run

    yield starter
    for run in runs:
        run.stop()


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*POSTOFFICE, "office", *args, "--data-dir", str(data_dir / "var")],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
        check=False,
    )


def _minutes(day: int, minute: int) -> int:
    return day * 480 + minute


@pytest.mark.parametrize("in_process", BOTH_WAYS)
def test_status_shows_the_clock_advancing(
    start: Callable[..., Run], data_dir: Path, in_process: bool
) -> None:
    run = start(
        N_NANO_SECS="4000000", SIM_DURATION="1000", in_process=in_process
    )  # 4 ms a minute: ~2 s a day
    first = _cli(data_dir, "status", "--json")
    assert first.returncode == 0, first.stderr
    before = json.loads(first.stdout)
    run.wait_for(
        lambda: _minutes(*run.clock()) > _minutes(before["day"], before["minute"]) + 20,
        "clock moving",
    )
    human = _cli(data_dir, "status")
    assert human.returncode == 0, human.stderr
    assert "(seed 5): day " in human.stdout
    assert "parcels" in human.stdout
    assert "counter" in human.stdout
    after = json.loads(_cli(data_dir, "status", "--json").stdout)
    assert _minutes(after["day"], after["minute"]) > _minutes(before["day"], before["minute"])
    assert after["clock"] != before["clock"] or after["day"] > before["day"]
    assert after["run"] == before["run"]
    assert [s["service"] for s in after["services"]] == [
        "parcels",
        "letters",
        "bank",
        "bills",
        "finance",
        "watches",
    ]
    assert len(after["counters"]) == 10  # NOF_WORKER_SEATS of timeout.ini


@pytest.mark.parametrize("in_process", BOTH_WAYS)
def test_added_users_show_in_the_next_days_user_count(
    start: Callable[..., Run], data_dir: Path, in_process: bool
) -> None:
    run = start(N_NANO_SECS="4000000", SIM_DURATION="1000", in_process=in_process)
    added = _cli(data_dir, "add-users", "7")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("7 users more from day ")
    from_day = int(added.stdout.split()[-1])
    default = _cli(data_dir, "add-users")  # N_NEW_USERS of timeout.ini: 5
    assert default.returncode == 0, default.stderr
    assert default.stdout.startswith("5 users more from day ")
    same_day = int(default.stdout.split()[-1]) == from_day
    run.wait_for(lambda: run.clock()[0] >= from_day + 1, f"day {from_day + 1}", timeout_s=40)
    users = run.status()["users"]
    assert isinstance(users, dict)
    # both arrive from their next day; if the day turned between the two requests, the
    # second lands one day later, so wait for that one too
    if not same_day:
        run.wait_for(lambda: run.clock()[0] >= from_day + 2, f"day {from_day + 2}", timeout_s=40)
        users = run.status()["users"]
        assert isinstance(users, dict)
    assert users["total"] == 22


@pytest.mark.alone  # it reads the pace from the clock's rate: a starved run looks slow
@pytest.mark.parametrize("in_process", BOTH_WAYS)
def test_sighup_changes_n_nano_secs_live(
    start: Callable[..., Run], data_dir: Path, in_process: bool
) -> None:
    config = data_dir / "office.ini"
    text = shipped_config("timeout").read_text()
    slow = text.replace("N_NANO_SECS = 2500000", "N_NANO_SECS = 40000000")  # 40 ms a minute
    assert slow != text
    config.write_text(slow.replace("SIM_DURATION = 10", "SIM_DURATION = 1000"))
    run = start(config, in_process=in_process)

    def rate(window_s: float) -> float:
        first = _minutes(*run.clock())
        began = time.monotonic()
        time.sleep(window_s)
        return (_minutes(*run.clock()) - first) / (time.monotonic() - began)

    before = rate(1.0)  # about 25 minutes a second
    fast = slow.replace("N_NANO_SECS = 40000000", "N_NANO_SECS = 2000000")  # 2 ms
    config.write_text(
        fast.replace("SIM_DURATION = 10", "SIM_DURATION = 1000").replace(
            "NOF_USERS = 10", "NOF_USERS = 11"
        )
    )
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for(lambda: "config key applied key=N_NANO_SECS" in run.stderr(), "the reload")
    after = rate(1.0)  # about 500 minutes a second
    assert after > 4 * before, (before, after)
    err = run.stderr()
    assert "config key applied key=N_NANO_SECS old=40000000 new=2000000" in err
    assert "config key needs a restart, not applied key=NOF_USERS old=10 new=11" in err
    config.write_text(fast.replace("N_NANO_SECS = 2000000", "N_NANO_SECS = fast"))
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for(lambda: "config not reloaded" in run.stderr(), "the refusal")
    assert "key N_NANO_SECS" in run.stderr().split("config not reloaded")[1]
    assert "must be an integer, got 'fast'" in run.stderr()
    assert rate(0.5) > 4 * before  # the bad file changed nothing


@pytest.mark.parametrize("in_process", BOTH_WAYS)
def test_pause_holds_the_clock_until_resume(start: Callable[..., Run], in_process: bool) -> None:
    run = start(N_NANO_SECS="4000000", SIM_DURATION="1000", in_process=in_process)
    ok = run.client.pause()
    assert ok.fields["paused"] is True
    held = run.clock()
    time.sleep(0.5)
    assert run.clock() == held
    assert run.status()["paused"] is True
    run.client.resume()
    run.wait_for(lambda: run.clock() != held, "the clock going on")


def test_hostile_bytes_get_an_error_and_the_socket_keeps_serving(
    start: Callable[..., Run], data_dir: Path
) -> None:
    run = start(N_NANO_SECS="4000000", SIM_DURATION="1000")
    path = str(control_path(data_dir / "var"))

    def exchange(data: bytes, *, half_close: bool = False) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
            return got

    garbage = exchange(b"\x00" * 64)
    assert b'"code":"PROTO"' in garbage
    assert b"bad frame magic" in garbage
    oversize = exchange(encode_parts(1, 0, 1, b"{" * 10_000))
    assert b'"code":"LIMIT"' in oversize
    assert b"exceeds limit 4096" in oversize
    truncated = exchange(encode_request(1, Status())[:20], half_close=True)
    assert b"truncated frame" in truncated
    reply = run.client.request(Status())
    assert not isinstance(reply, ErrorReply)
    assert run.proc.poll() is None


def test_status_and_add_users_say_when_no_simulation_runs(data_dir: Path) -> None:
    for args in (("status",), ("status", "--json"), ("add-users", "3")):
        result = _cli(data_dir, *args)
        assert result.returncode == 1
        assert "no simulation is running: nothing answers on" in result.stderr
        assert result.stdout == ""


def test_the_socket_is_removed_when_the_run_ends(start: Callable[..., Run], data_dir: Path) -> None:
    run = start(N_NANO_SECS="4000000", SIM_DURATION="1")
    assert run.proc.wait(30) == 0
    assert not control_path(data_dir / "var").exists()


def test_a_second_run_leaves_the_first_ones_socket_alone(
    start: Callable[..., Run], data_dir: Path
) -> None:
    first = start(N_NANO_SECS="4000000", SIM_DURATION="1000")
    run_id = first.status()["run"]
    second = subprocess.run(
        [
            *POSTOFFICE,
            "office",
            "run",
            "--config",
            "timeout",
            "--in-process",
            "--json",
            "--data-dir",
            str(data_dir / "var"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(N_NANO_SECS="0", SIM_DURATION="2"),
        check=False,
    )
    assert second.returncode == 0, second.stderr
    assert "no control socket for this run" in second.stderr
    assert "another simulation is running" in second.stderr
    assert first.status()["run"] == run_id  # still the first run's socket


def test_a_stale_socket_file_is_replaced(start: Callable[..., Run], data_dir: Path) -> None:
    path = control_path(data_dir / "var")
    path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening, then closed: what a kill -9 leaves
    stale.close()
    assert path.exists()
    run = start(N_NANO_SECS="4000000", SIM_DURATION="1000")
    assert run.status()["day"] in (0, 1, 2)
