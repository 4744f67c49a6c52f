"""`postoffice up` runs the bus server, and `postoffice bus ls` lists its channels."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from tests.bus.rig import shm_directory
from tests.integration.conftest import POSTOFFICE, env_without_postoffice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

READY_S = 30.0


def test_up_runs_the_bus_and_bus_ls_lists_its_channels(tmp_path: Path) -> None:
    shm = shm_directory()
    env = {**env_without_postoffice(), "POSTOFFICE_BUS_SHM_DIR": str(shm)}
    data = tmp_path / "var"
    up = subprocess.Popen(
        [*POSTOFFICE, "up", "--only", "bus", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        status_file = data / "run" / "director.json"
        deadline = time.monotonic() + READY_S
        while True:
            assert up.poll() is None, up.communicate()[1].decode()
            assert time.monotonic() < deadline, "postoffice up did not get ready"
            if status_file.exists():
                status = json.loads(status_file.read_text())
                bus = status["services"].get("bus", {})
                if bus.get("state") == "ready":
                    break
            time.sleep(0.05)
        socket_path = str((data / "run" / "bus.sock").absolute())
        assert bus["listeners"] == {"bus": [socket_path, 0]}
        listed = subprocess.run(
            [*POSTOFFICE, "bus", "ls", "--json"],
            capture_output=True,
            timeout=30,
            env={**env, "POSTOFFICE_DATA_DIR": str(data)},
        )
        assert listed.returncode == 0, listed.stderr.decode()
        names = [json.loads(line)["name"] for line in listed.stdout.decode().splitlines()]
        assert names == ["/bus/directory", "/bus/stats"]
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=30)
    assert up.returncode == 0
    assert list(shm.iterdir()) == []
    shutil.rmtree(shm)
