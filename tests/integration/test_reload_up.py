"""`postoffice up` passes SIGHUP on to its children, which read their settings again and
go on serving under the same pids. A real director with real children on port 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_WAIT_S = 40.0  # two interpreters cold-starting on a loaded two-core machine


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTOFFICE_")}
    env.update(
        POSTOFFICE_COMMAND_PORT="0",
        POSTOFFICE_COMMAND_METRICS_PORT="0",
        POSTOFFICE_STORE_PORT="0",
        POSTOFFICE_STORE_METRICS_PORT="0",
    )
    return env


def _wait(what: str, check: Any) -> Any:
    deadline = time.monotonic() + _WAIT_S
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_up_forwards_sighup_to_every_child(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    stderr = tmp_path / "up.err"
    status_file = data_dir / "run" / "director.json"
    argv = [sys.executable, "-m", "postoffice", "up", "--data-dir", str(data_dir)]
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [*argv, "--only", "command"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env(),
        )
    pids: dict[str, int] = {}
    try:

        def all_ready() -> dict[str, Any] | None:
            assert process.poll() is None, f"director exited: {stderr.read_text()}"
            try:
                services: dict[str, Any] = json.loads(status_file.read_text())["services"]
            except (FileNotFoundError, json.JSONDecodeError):
                return None
            if sorted(services) != ["command", "store"]:
                return None
            if any(s["state"] != "ready" for s in services.values()):
                return None
            return services

        services = _wait("both services ready", all_ready)
        pids = {name: entry["pid"] for name, entry in services.items()}
        process.send_signal(signal.SIGHUP)
        for name, pid in pids.items():
            forwarded = f"SIGHUP forwarded child={name} pid={pid}"
            _wait(f"{forwarded!r}", lambda line=forwarded: line in stderr.read_text())
        # Each child read its settings again (the same environment and flags: nothing
        # changed) and still serves: no restart, the same pids.
        _wait(
            "both children's reloads",
            lambda: stderr.read_text().count("config reloaded: nothing changed") == 2,
        )
        after = all_ready()
        assert after is not None
        assert {name: entry["pid"] for name, entry in after.items()} == pids
        assert all(entry["restarts"] == 0 for entry in after.values())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
            for pid in pids.values():
                if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
                    os.kill(pid, signal.SIGKILL)
