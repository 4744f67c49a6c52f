"""`postoffice office run` as a real process: SIGINT mid-run ends with cause signal and the
final statistics, the report agrees, and paced minutes are slept, not spun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

POSTOFFICE = [sys.executable, "-c", "from postoffice.cli import main; main()"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _start(tmp_path: Path, nano_secs: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "POSTOFFICE_OFFICE_N_NANO_SECS": str(nano_secs),
        "POSTOFFICE_OFFICE_SIM_DURATION": "1000",
    }
    return subprocess.Popen(
        [
            *POSTOFFICE,
            "office",
            "run",
            "--config",
            "timeout",
            "--in-process",
            "--seed",
            "11",
            "--json",
            "--data-dir",
            str(tmp_path / "var"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _first_line(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the run's header, printed before the first minute
    assert line, proc.stderr.read() if proc.stderr else ""
    header: dict[str, object] = json.loads(line)
    assert header["type"] == "run"
    return header


def test_sigint_mid_run_ends_with_signal_and_the_final_statistics(tmp_path: Path) -> None:
    proc = _start(tmp_path, 2_000_000)  # 2 ms a minute: a day takes about a second
    try:
        header = _first_line(proc)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]  # the header was read already
    end = next(line for line in lines if line["type"] == "end")
    assert end["cause"] == "signal"
    assert "stopped by a signal" in end["detail"]
    days = [line for line in lines if line["type"] == "day"]
    assert days, "the interrupted day is closed and reported"
    assert end["final"] == days[-1]["totals"]
    assert 1 <= end["days"] < 1000
    report = subprocess.run(
        [
            *POSTOFFICE,
            "office",
            "report",
            str(header["run"]),
            "--json",
            "--data-dir",
            str(tmp_path / "var"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    again = [json.loads(line) for line in report.stdout.splitlines()]
    assert again[1:] == lines[:-1]  # the same days and ending; no header, no timing


def test_paced_minutes_cost_almost_no_cpu(tmp_path: Path) -> None:
    proc = _start(tmp_path, 200_000_000)  # 0.2 s a minute
    try:
        _first_line(proc)
        before = _cpu_s(proc.pid)
        time.sleep(2.0)  # about 10 minutes of the simulation
        spent = _cpu_s(proc.pid) - before
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert spent < 0.2, f"{spent:.2f} s of CPU in 2 s of waiting for minutes"
    timing = json.loads(out.splitlines()[-1])
    assert timing["type"] == "timing"
    assert 5 <= timing["minutes"] <= 12
