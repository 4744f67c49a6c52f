"""bench/ingest/cluster.py --quick: moto, two @tus/server instances, our single node and our
two cluster nodes (on three nats-servers) run every part on tiny sizes, and the JSON it
prints holds the figures of each."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster_harness import NATS_SERVER
from tests.integration.conftest import env_without_postoffice

#: The quick run starts about ten processes (a NATS cluster among them) and waits out one
#: of our nodes' heartbeat going stale in its failover, on 2 shared cores.
RUN_TIMEOUT_S = 150
pytestmark = [pytest.mark.integration, pytest.mark.timeout(RUN_TIMEOUT_S + 20)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "ingest" / "cluster.py"
PEER_MODULES = ROOT / "bench" / "ingest" / "tus-s3" / "node_modules" / "@tus" / "s3-store"
PEER = "peer_tus_s3_x2"
SINGLE_NODE = "ours_single_node"
OURS_CLUSTER = "ours_cluster"


def _missing() -> str | None:
    """Why the peer cannot run here, or None. The test never installs it: the script's
    `npm ci` would download, so without node_modules the test skips."""
    for program in ("node", "npm"):
        if shutil.which(program) is None:
            return f"{program} is not installed"
    if not (PEER_MODULES / "package.json").exists():
        return "the peer's npm packages are absent (cd bench/ingest/tus-s3 && npm ci)"
    if not (Path(sys.executable).parent / "moto_server").exists() and not shutil.which(
        "moto_server"
    ):
        return "moto_server is not installed (pip install 'moto[server]')"
    for module in ("boto3", "aiohttp"):
        if importlib.util.find_spec(module) is None:
            return f"the module {module} is not installed"
    return None


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


class QuickRun:
    """One --quick run of the script: its JSON, its stderr, and its work dir."""

    def __init__(self, result: dict[str, Any], stderr: str, work_dir: Path) -> None:
        self.result = result
        self.stderr = stderr
        self.work_dir = work_dir


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    missing = _missing()
    if missing is not None:
        pytest.skip(missing)
    work = tmp_path_factory.mktemp("cluster-bench")
    argv = [sys.executable, str(SCRIPT), "--quick", "--work-dir", str(work)]
    env = env_without_postoffice()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return QuickRun(json.loads(done.stdout), done.stderr, work)


def test_quick_run_reports_the_peer_the_single_node_and_the_failover(quick: QuickRun) -> None:
    result = quick.result
    assert result["benchmark"] == "ingest-cluster"
    assert result["parameters"]["quick"] is True
    assert result["parameters"]["rounds"] == 1
    by_name = {entry["name"]: entry for entry in result["contenders"]}
    assert by_name[PEER]["measured"] is True
    assert by_name[SINGLE_NODE]["measured"] is True
    # Our cluster is measured when nats-server is here, else listed with the reason.
    assert by_name[OURS_CLUSTER]["measured"] is (NATS_SERVER is not None)
    if NATS_SERVER is None:
        assert "nats-server" in by_name[OURS_CLUSTER]["why"]
        assert f"{OURS_CLUSTER}: not measured" in quick.stderr

    for workload, figure in (("small", "files_per_s"), ("large", "mb_per_s")):
        entry = result["results"][workload]
        assert entry["unit"] == figure
        assert {PEER, SINGLE_NODE} <= set(entry["contenders"])
        for name in (PEER, SINGLE_NODE):
            assert _positive(entry["contenders"][name][figure]), (workload, name)
            assert entry["contenders"][name]["rounds"] == 1
        peer = entry["contenders"][PEER]
        assert _positive(peer["server_cpu_s"]), workload
        assert _positive(peer["s3_cpu_s"]), workload
        assert _positive(peer["s3_requests"]), workload
        assert isinstance(peer["client_cpu_s"], int | float), workload
        assert _positive(entry["ratios"][f"{PEER}_over_{SINGLE_NODE}"]), workload

    failover = result["failover"]
    assert failover["rounds"] == 1
    [run] = result["failover_runs"]
    assert run["sent_before_kill"] >= run["size"] // 2
    assert run["survivor_head_status"] in range(100, 600)
    if run["served"]:
        assert _positive(failover["kill_to_first_patch_s"])
        assert run["verified"] is True
    else:
        assert run["refused"]
    two = result["probes"]["two_writers"]
    assert isinstance(two["second_accepted_while_first_wrote"], bool)
    assert two["object_check"] == "intact" or two["object_check"].startswith(
        ("differs from byte ", "object ends at byte ", "unreadable: ", "not complete")
    )
    assert list(quick.work_dir.iterdir()) == []  # the work dir is gone


@pytest.mark.skipif(NATS_SERVER is None, reason="nats-server is not installed (make tools)")
def test_quick_run_reports_our_cluster_against_the_peer_and_its_failover(
    quick: QuickRun,
) -> None:
    result = quick.result
    for workload, figure in (("small", "files_per_s"), ("large", "mb_per_s")):
        entry = result["results"][workload]
        ours = entry["contenders"][OURS_CLUSTER]
        assert _positive(ours[figure]), workload
        assert ours["rounds"] == 1
        # our nodes, NATS and moto each did work, and moto counted our S3 requests
        for field in ("server_cpu_s", "nats_cpu_s", "s3_cpu_s", "s3_requests"):
            assert _positive(ours[field]), (workload, field)
        for bottom in (PEER, SINGLE_NODE):
            assert _positive(entry["ratios"][f"{OURS_CLUSTER}_over_{bottom}"]), workload
        goal = result["goals"][workload]
        assert goal["ours_cluster_over_peer"] == entry["ratios"][f"{OURS_CLUSTER}_over_{PEER}"]
        assert isinstance(goal["met"], bool)
        assert _positive(goal["single_node_over_recorded"])

    [run] = result["ours_cluster_failover_runs"]
    assert run["error"] == ""
    assert run["verified"] is True  # the object in S3 holds the file's bytes
    assert run["acked_before_kill"] * 2 >= run["payload_bytes"]
    assert _positive(run["kill_to_survivor_s"])
    assert run["kill_to_survivor_s"] <= run["kill_to_done_s"]
    failover = result["goals"]["failover"]
    assert failover["ours_kill_to_survivor_s"] == run["kill_to_survivor_s"]
    assert isinstance(failover["met"], bool)
    assert f"[failover round 1/1] {OURS_CLUSTER}:" in quick.stderr
    assert "[goal small]" in quick.stderr
