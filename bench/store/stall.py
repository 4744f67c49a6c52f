"""Benchmark: the embedded command server's tail latency against redis-server, per round.

A standalone script (never imported by pytest). It starts one redis-server (AOF on) and
one `postoffice command serve --store-dir` per source tree given (`--src`, each on its own
`PYTHONPATH`, so a tree before a change and one after it meet the same weather), runs
`redis-benchmark --precision 3` against each in turn, round after round, and prints the
progress to stderr and one JSON object (medians and every run) to stdout.
"""

# Design
# ------
# run.py's rb-embedded part measures throughput and p50/p99 with a fixed redis-benchmark
# command; this script adds what the stall needs: the worst latency (redis-benchmark's
# max with --precision 3), several trees in one run (the before/after of one change,
# alternating within each round with redis, on a machine shared with other work), and
# the server's CPU per request. Every server gets the same prefill (redis-benchmark SETs
# of every key twice over, untimed) before the first timed run.

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for benchkit

from benchkit import (
    LOOPBACK,
    BenchError,
    Server,
    answers_ping,
    free_port,
    machine_facts,
    process_cpu_seconds,
    say,
    stop,
)

_SRC = Path(__file__).resolve().parents[2] / "src"
_READY_TIMEOUT_S = 60.0
_RB_TIMEOUT_S = 900.0
_STOP_TIMEOUT_S = 10.0
_VALUE_BYTES = 100


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Run:
    """One redis-benchmark test against one server in one round."""

    round: int
    server: str
    test: str
    ops_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_us_per_op: float
    load_1min: float


_FIELDS = ("ops_s", "p50_ms", "p99_ms", "max_ms", "server_cpu_us_per_op")


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not answers_ping(server.port):
        server.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name} did not answer PING in {_READY_TIMEOUT_S} s")
        time.sleep(0.1)


def _start_redis(work: Path, durability: str) -> Server:
    port = free_port()
    fsync = "always" if durability == "always" else "everysec"
    argv = ["redis-server", "--appendonly", "yes", "--appendfsync", fsync]
    argv += ["--auto-aof-rewrite-percentage", "0", "--save", "", "--bind", LOOPBACK]
    argv += ["--port", str(port), "--dir", str(work), "--maxclients", "10000"]
    log_path = work / "redis.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(name="redis", proc=proc, pid=proc.pid, port=port, log_path=log_path)
    _wait_ready(server)
    return server


def _start_ours(work: Path, index: int, src: Path, durability: str) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "postoffice", "command", "serve", "--host", LOOPBACK]
    argv += ["--port", str(port), "--no-metrics", "--max-connections", "10000"]
    argv += ["--store-dir", str(work / f"store{index}"), "--durability", durability]
    argv += ["--log-level", "WARNING"]
    env = dict(os.environ, PYTHONPATH=str(src))
    log_path = work / f"ours{index}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = Server(name=f"ours{index}", proc=proc, pid=proc.pid, port=port, log_path=log_path)
    _wait_ready(server)
    return server


def _redis_benchmark(
    port: int, clients: int, pipeline: int, test: str, requests: int, keys: int
) -> list[dict[str, str]]:
    argv = ["redis-benchmark", "-h", LOOPBACK, "-p", str(port), "-c", str(clients)]
    if pipeline > 1:
        argv += ["-P", str(pipeline)]
    argv += ["-n", str(requests), "-r", str(keys), "-d", str(_VALUE_BYTES), "-t", test]
    argv += ["--csv", "--precision", "3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_RB_TIMEOUT_S, check=False)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    if done.returncode != 0 or not rows:
        raise BenchError(f"redis-benchmark failed ({done.returncode}): {done.stderr[-500:]}")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the JSON; exit status 1 if a server misbehaves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", type=Path, help="a tree's src/ (repeatable)")
    parser.add_argument("--durability", choices=("always", "interval"), default="always")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--scenario",
        action="append",
        help="CLIENTS:PIPELINE:TEST:REQUESTS, e.g. 50:16:set:200000 (repeatable)",
    )
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)
    srcs: list[Path] = args.src or [_SRC]
    scenarios = [s.split(":") for s in (args.scenario or ["50:16:set:200000"])]
    for missing in ("redis-server", "redis-benchmark"):
        if shutil.which(missing) is None:
            say(f"error: {missing} is not on PATH (apt-get install redis-server redis-tools)")
            return 2
    work = Path(tempfile.mkdtemp(prefix="po-stall-", dir=args.work_dir))
    servers: list[Server] = []
    runs: list[_Run] = []
    try:
        servers.append(_start_redis(work, args.durability))
        servers += [_start_ours(work, i, src, args.durability) for i, src in enumerate(srcs)]
        for server in servers:  # prefill: every key written, twice over on average
            _redis_benchmark(server.port, 50, 16, "set", args.keys * 2, args.keys)
        for round_ in range(args.rounds):
            for clients, pipeline, test, requests in scenarios:
                for server in servers:
                    before = sum(process_cpu_seconds(server.pid))
                    rows = _redis_benchmark(
                        server.port, int(clients), int(pipeline), test, int(requests), args.keys
                    )
                    cpu_s = sum(process_cpu_seconds(server.pid)) - before
                    server.check_alive()
                    for row in rows:
                        run = _Run(
                            round=round_,
                            server=server.name,
                            test=f"{row['test']} c{clients} P{pipeline}",
                            ops_s=float(row["rps"]),
                            p50_ms=float(row["p50_latency_ms"]),
                            p99_ms=float(row["p99_latency_ms"]),
                            max_ms=float(row["max_latency_ms"]),
                            server_cpu_us_per_op=cpu_s * 1e6 / int(requests) / len(rows),
                            load_1min=os.getloadavg()[0],
                        )
                        runs.append(run)
                        say(
                            f"round {round_} {run.test:16} {run.server:6}"
                            f" {run.ops_s:9.0f}/s p50 {run.p50_ms:7.3f}"
                            f" p99 {run.p99_ms:8.3f} max {run.max_ms:8.3f} ms"
                            f" cpu {run.server_cpu_us_per_op:5.1f} us/op load {run.load_1min:.1f}"
                        )
    except BenchError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        for server in servers:
            stop(server, _STOP_TIMEOUT_S)
        shutil.rmtree(work, ignore_errors=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for test in dict.fromkeys(r.test for r in runs):
        row: dict[str, dict[str, float]] = {}
        redis_ops = [r.ops_s for r in runs if r.test == test and r.server == "redis"]
        for server in servers:
            mine = [r for r in runs if r.test == test and r.server == server.name]
            medians = {f: statistics.median(getattr(r, f) for r in mine) for f in _FIELDS}
            if server.name != "redis":
                ratios = [r.ops_s / o for r, o in zip(mine, redis_ops, strict=True)]
                medians["ratio_ops_over_redis"] = statistics.median(ratios)
            row[server.name] = medians
        results[test] = row
    parameters = {
        "durability": args.durability,
        "rounds": args.rounds,
        "scenarios": [":".join(s) for s in scenarios],
        "keys": args.keys,
        "src": {f"ours{i}": str(src) for i, src in enumerate(srcs)},
    }
    machine = machine_facts()
    every = [dataclasses.asdict(r) for r in runs]
    print(
        json.dumps(
            {"parameters": parameters, "machine": machine, "results": results, "runs": every}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
