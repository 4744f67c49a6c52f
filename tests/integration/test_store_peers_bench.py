"""bench/store/peers.py --quick: every peer runs every row on tiny sizes, in child processes
(one killed mid-write), and the JSON it prints holds a median per peer for every row."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import env_without_postoffice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "store" / "peers.py"
#: (phase, figure) of every row the table has, as the script names them.
ROWS = {
    ("put_durable_x1", "ops_s"), ("put_durable_threads", "ops_s"), ("batch_durable", "ops_s"),
    ("put_interval_x1", "ops_s"), ("get", "ops_s"), ("get", "cpu_us_per_op"), ("scan", "ops_s"),
    ("scan", "cpu_us_per_op"), ("scan", "seconds"),
    ("recover", "open_s"), ("disk_per_live", None), ("disk_per_live_compacted", None),
    ("load", "ops_s"), ("compact", "seconds"), ("write_amplification", None),
    ("rss_anon_mib", None),
}  # fmt: skip
#: Rows with a goal: ours ahead of sqlite and rocksdb (gets: and within 1.5 x of lmdb).
GOAL_PHASES = {
    "put_durable_x1", "put_durable_threads", "batch_durable", "put_interval_x1", "get", "scan",
    "recover", "disk_per_live", "disk_per_live_compacted",
}  # fmt: skip


def test_quick_run_reports_every_row_for_every_peer(tmp_path: Path) -> None:
    peers = ["ours", "sqlite", "lmdb"]
    if importlib.util.find_spec("rocksdict") is not None:  # an optional peer (`.[bench]`)
        peers.append("rocksdb")
    argv = [sys.executable, str(SCRIPT), "--quick", "--value-bytes", "100"]
    argv += ["--work-dir", str(tmp_path)]
    for peer in peers:
        argv += ["--peer", peer]
    env = env_without_postoffice()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=200, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    assert result["parameters"]["peers"] == peers
    assert result["parameters"]["rounds"] == 1
    assert set(result["parameters"]["settings"]) == set(peers)
    rows = result["results"]
    assert {(row["phase"], row["figure"]) for row in rows} == ROWS
    for row in rows:
        assert row["value_bytes"] == 100
        assert set(row["median"]) == set(peers), row["row"]
        for peer, value in row["median"].items():
            assert math.isfinite(value), (row["row"], peer)
            if (
                row["phase"] not in {"rss_anon_mib", "scan", "recover"}
                and row["figure"] != "cpu_us_per_op"
            ):
                assert value > 0, (row["row"], peer)
        assert set(row["ours_ahead_of"]) == set(peers) - {"ours"}
    assert {goal["row"] for goal in result["goals"]} == {
        row["row"] for row in rows if row["phase"] in GOAL_PHASES and row["goal"] != "-"
    }
    assert all(isinstance(goal["met"], bool) for goal in result["goals"])
    # Every workload child and every recovery (writer killed, then reopened) is in `runs`.
    assert sorted(run["peer"] for run in result["runs"]) == sorted(peers * 2)
    recovered = [run["phases"]["recover"] for run in result["runs"] if "recover" in run["phases"]]
    assert all(found["disk_bytes"] > 0 for found in recovered)
    assert "| 100 B | durable put, 1 thread (puts/s) |" in done.stderr
    assert list(tmp_path.iterdir()) == []  # the work dir is gone
