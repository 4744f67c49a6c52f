"""Failover of a clustered upload, run many times: the owner killed -9 after half the ACKs
(alone, and with the NATS claims leader), checked and timed. Prints one JSON object.

A standalone script (never imported by pytest). It starts the cluster tests' servers (three
nats-servers, moto_server, two `postoffice ingest serve --cluster` nodes per run) through
tests/integration/cluster_harness.py and runs tests/integration/cluster_failover.py's one
failover per run. Run it from the repository root; bench/ingest/README.md says how.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # for benchkit
sys.path.insert(0, str(ROOT))  # for the tests' harness

import boto3  # type: ignore[import-untyped]  # noqa: E402  # moto brings it, untyped
import xxhash  # noqa: E402
from benchkit import (  # noqa: E402
    EXIT_MISSING_TOOL,
    EXIT_RUN_FAILED,
    machine_facts,
    raise_on_sigterm,
    say,
)
from tests.integration.cluster_failover import (  # noqa: E402
    Failover,
    fail_over_once,
    random_file,
    set_s3_credentials,
    start_node,
)
from tests.integration.cluster_harness import (  # noqa: E402
    NATS_SERVER,
    S3_KEY_ID,
    S3_SECRET,
    MotoServer,
    NatsCluster,
    moto_server,
    nats_cluster,
)
from tests.integration.conftest import ServerProcess  # noqa: E402
from tests.integration.test_ingest import Ingest  # noqa: E402

MIB: Final = 1024 * 1024
CHUNKS: Final = 64
KILL_AFTER: Final = 32
DEFAULT_SIZE_MIB: Final = 256
DEFAULT_RUNS: Final = 20
QUICK_SIZE_MIB: Final = 16
PARALLEL: Final = 2
#: Bounds one reply, the wait for the publish, and the failover itself.
TIMEOUT_S: Final = 120.0
#: Seconds from the kill to the survivor's first ACK: the owner alone, and with the leader.
GOALS_S: Final = {"owner": 10.0, "owner+nats-leader": 15.0}


def _hash_file(path: Path) -> bytes:
    digest = xxhash.xxh3_128()
    with path.open("rb") as fh:
        while block := fh.read(8 * MIB):
            digest.update(block)
    return digest.digest()


def _s3_digest_and_drop(s3: MotoServer, name: str) -> bytes:
    """The published file's digest in S3; then the file goes, so moto's memory stays small."""
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    key = f"files/{name}"
    body = client.get_object(Bucket=s3.bucket, Key=key)["Body"]
    digest = xxhash.xxh3_128()
    while block := body.read(8 * MIB):
        digest.update(block)
    client.delete_object(Bucket=s3.bucket, Key=key)
    return digest.digest()


async def _one_run(
    nats: NatsCluster, s3: MotoServer, base: Path, mode: str, run: int, size: int
) -> dict[str, object]:
    """One failover; its figures, or its error."""
    where = base / f"{mode}-{run}"
    a, b = Ingest(where / "a", x=1), Ingest(where / "b", x=1)
    tag = f"{'nats' if mode != 'owner' else 'owner'}-{run}"
    source = random_file(where / f"failover-{tag}.bin", size, seed=f"bench-{tag}")
    started: list[ServerProcess] = []
    try:
        node_a = start_node(a, nats, s3, f"bench-{tag}-a")
        started.append(node_a)
        started.append(start_node(b, nats, s3, f"bench-{tag}-b"))
        began = time.monotonic()
        done: Failover = await fail_over_once(
            nats=nats,
            s3=s3,
            owner=node_a,
            nodes=[a, b],
            source=source,
            work_dir=where / "work",
            chunk_size=size // CHUNKS,
            kill_after=KILL_AFTER,
            kill_nats_leader=mode != "owner",
            parallel=PARALLEL,
            timeout_s=TIMEOUT_S,
        )
        seconds = time.monotonic() - began
        want = await asyncio.to_thread(_hash_file, source)
        in_s3 = await asyncio.to_thread(_s3_digest_and_drop, s3, source.name)
        return {
            "run": run,
            "seconds": round(seconds, 2),
            "digests_match": done.result.digest == want == in_s3 and done.result.size == size,
            "chunks": done.chunks,
            "acked_before_kill": done.acked_before_kill,
            "acked_by_owner": done.acked_by_owner,
            "lost": done.lost,
            "in_flight_at_kill": done.in_flight_at_kill,
            "resent": done.resent,
            "unacked_by_owner": done.unacked_by_owner,
            "resent_beyond_in_flight": max(0, done.resent - done.unacked_by_owner),
            "resent_beyond_window": max(0, done.resent - done.window),
            "window": done.window,
            "failover_s": round(done.failover_s, 3),
            "nats_killed": done.nats_killed,
        }
    except Exception as exc:  # one failed run is a figure of the report, not its end
        return {"run": run, "error": repr(exc)}
    finally:
        for node in started:
            node.stop()
        if nats.killed:
            nats.restart_killed()
        shutil.rmtree(where, ignore_errors=True)


def _summary(mode: str, runs: list[dict[str, object]]) -> dict[str, object]:
    ok = [r for r in runs if "error" not in r]
    times = [float(str(r["failover_s"])) for r in ok]
    goal = GOALS_S[mode]
    return {
        "runs": len(runs),
        "completed_with_matching_digests": sum(bool(r["digests_match"]) for r in ok),
        "acked_chunks_lost": sum(int(str(r["lost"])) for r in ok),
        "resent_beyond_in_flight": sum(int(str(r["resent_beyond_in_flight"])) for r in ok),
        "resent_beyond_window": sum(int(str(r["resent_beyond_window"])) for r in ok),
        "resent": sum(int(str(r["resent"])) for r in ok),
        "failover_s_median": round(statistics.median(times), 2) if times else None,
        "failover_s_max": round(max(times), 2) if times else None,
        "goal_s": goal,
        "goal_met": bool(times)
        and max(times) <= goal
        and len(ok) == len(runs)
        and all(r["digests_match"] and r["lost"] == r["resent_beyond_in_flight"] == 0 for r in ok),
        "errors": [r["error"] for r in runs if "error" in r],
    }


async def _main(args: argparse.Namespace) -> dict[str, object]:
    size = (QUICK_SIZE_MIB if args.quick else args.size_mib) * MIB
    runs = 1 if args.quick else args.runs
    modes = [m for m in GOALS_S if args.only in (None, m)]
    set_s3_credentials()
    facts = machine_facts()
    report: dict[str, object] = {
        "benchmark": "ingest-cluster-failover",
        "parameters": {
            "size_mib": size // MIB,
            "chunks": CHUNKS,
            "kill_after_acks": KILL_AFTER,
            "runs": runs,
            "parallel": PARALLEL,
            "modes": modes,
        },
        "machine": facts,
    }
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="po-failover-") as tmp:
        base = Path(tmp)
        (base / "nats").mkdir()
        (base / "moto").mkdir()
        with nats_cluster(base / "nats") as nats, moto_server(base / "moto") as s3:
            for mode in modes:
                figures = []
                for run in range(runs):
                    figure = await _one_run(nats, s3, base, mode, run, size)
                    say(f"{mode} run {run}: {json.dumps(figure)}")
                    figures.append(figure)
                results[mode] = {"summary": _summary(mode, figures), "runs": figures}
    report["results"] = results
    report["loadavg_at_end"] = list(os.getloadavg())
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=DEFAULT_SIZE_MIB, help="file size")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="runs of each mode")
    parser.add_argument("--quick", action="store_true", help="one 16 MiB run of each mode")
    parser.add_argument("--only", choices=list(GOALS_S), help="run one mode only")
    args = parser.parse_args()
    if args.size_mib < 1 or args.runs < 1:
        parser.error("--size-mib and --runs must be at least 1")
    if NATS_SERVER is None:
        say("nats-server is not installed (make tools installs it)")
        return EXIT_MISSING_TOOL
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    report = asyncio.run(_main(args))
    print(json.dumps(report, indent=2))
    results = report["results"]
    assert isinstance(results, dict)
    met = all(bool(entry["summary"]["goal_met"]) for entry in results.values())
    return 0 if met else EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
