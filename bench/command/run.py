"""Benchmark: the command server against a real redis-server, measured by redis-benchmark.

A standalone script (never imported by pytest). It starts both servers on free loopback
ports, runs `redis-benchmark -t ping` in pairs (redis, then ours) for each scenario and
round, and prints one JSON object: parameters, machine and the median figures.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import io
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, cast, final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for benchkit

import benchkit
from benchkit import (
    EXIT_MISSING_TOOL,
    EXIT_RUN_FAILED,
    LOOPBACK,
    BenchError,
    Server,
    answers_ping,
    children_cpu_seconds,
    command_output,
    free_port,
    machine_busy_seconds,
    process_cpu_seconds,
    raise_on_sigterm,
    say,
    tail,
)

#: Non-pipelined requests per test: about 2-5 s per test on a 2-core machine.
DEFAULT_REQUESTS: Final = 200_000
#: Pipelined runs get this many times --requests: pipelining is about 10x faster.
PIPELINED_FACTOR: Final = 10
DEFAULT_ROUNDS: Final = 3
PIPELINE_DEPTH: Final = 16
#: redis-benchmark's test selector; "ping" runs both PING_INLINE and PING_MBULK.
TESTS: Final = "ping"
EXPECTED_TESTS: Final = ("PING_INLINE", "PING_MBULK")

#: How long a freshly started server may take to answer PING.
STARTUP_TIMEOUT_S: Final = 15.0
#: How long one redis-benchmark run may take before the benchmark gives up.
RUN_TIMEOUT_S: Final = 900.0
#: How long a server may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT_S: Final = 10.0
#: Our server refuses clients past this; well above the 1000 of the largest scenario.
OUR_MAX_CONNECTIONS: Final = 20_000
REDIS_MAX_CLIENTS: Final = 10_000
#: The contenders in run order; "floor" only with --floor.
SERVER_NAMES: Final = ("redis", "ours", "floor")

INSTALL_HINT: Final = (
    "install them with: apt-get install redis-server redis-tools "
    "(as root, or with sudo, on Debian/Ubuntu)"
)


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One redis-benchmark load shape."""

    name: str
    clients: int
    pipeline: int
    requests: int

    def describe(self) -> str:
        """The redis-benchmark flags that make this scenario, for humans."""
        flags = f"-c {self.clients}"
        if self.pipeline > 1:
            flags += f" -P {self.pipeline}"
        return f"{flags} -n {self.requests}"


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TestResult:
    """One CSV row of redis-benchmark: throughput and latency of one test."""

    rps: float
    avg_ms: float
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One redis-benchmark run against one server."""

    scenario: str
    round: int
    server: str
    wall_s: float
    requests: int
    cpu_s: float
    cpu_us_per_req: float
    user_us_per_req: float
    sys_us_per_req: float
    benchmark_cpu_s: float
    other_cpu_s: float
    tests: dict[str, TestResult]


def wait_ready(server: Server, ready_file: Path | None = None) -> None:
    """Wait until the server answers PING; raises BenchError on exit or timeout.

    With a ready file (our server writes one), its pid replaces the Popen pid, in case
    the console script ever becomes a wrapper process.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        server.check_alive()
        if ready_file is not None and ready_file.exists():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                server.pid = int(json.loads(ready_file.read_text())["pid"])
                ready_file = None
        if ready_file is None and answers_ping(server.port):
            return
        time.sleep(0.05)
    raise BenchError(
        f"{server.name} did not answer PING on port {server.port} within "
        f"{STARTUP_TIMEOUT_S} s; log tail:\n{tail(server.log_path)}"
    )


def start_redis(tmp: Path, redis_server: str) -> Server:
    """Start redis-server with persistence off on a free loopback port."""
    port = free_port()
    log_path = tmp / "redis-server.log"
    argv = [
        redis_server,
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--maxclients",
        str(REDIS_MAX_CLIENTS),
        "--dir",
        str(tmp),
    ]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp)
    server = Server(name="redis", proc=proc, pid=proc.pid, port=port, log_path=log_path)
    wait_ready(server)
    return server


def start_ours(tmp: Path, postoffice: str, workers: int = 1) -> Server:
    """Start `postoffice command serve` on a free loopback port, metrics off; with
    `workers` > 1 as a primary and that many worker processes (the ready file, which
    `wait_ready` waits for, appears once every worker listens)."""
    port = free_port()
    log_path = tmp / "postoffice-command.log"
    ready_file = tmp / "command.ready.json"
    argv = [
        postoffice,
        "command",
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--no-metrics",
        "--max-connections",
        str(OUR_MAX_CONNECTIONS),
        "--ready-file",
        str(ready_file),
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp)
    server = Server(name="ours", proc=proc, pid=proc.pid, port=port, log_path=log_path)
    wait_ready(server, ready_file)
    return server


def start_floor(tmp: Path) -> Server:
    """Start floor.py (a bare uvloop server that answers +PONG unparsed) on a free port."""
    port = free_port()
    log_path = tmp / "floor.log"
    argv = [sys.executable, str(Path(__file__).with_name("floor.py")), str(port)]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp)
    server = Server(name="floor", proc=proc, pid=proc.pid, port=port, log_path=log_path)
    wait_ready(server)
    return server


def descendants(pid: int) -> list[int]:
    """`pid`'s children, their children, and so on (from /proc/PID/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(word) for word in (task / "children").read_text().split()]
                found.extend(kids)
                todo.extend(kids)
    return found


def tree_cpu_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """User and system CPU time of these processes together (a primary and its workers)."""
    user = system = 0.0
    for pid in pids:
        one = process_cpu_seconds(pid)
        user += one[0]
        system += one[1]
    return user, system


def stop(server: Server) -> None:
    """SIGTERM the server by pid, then SIGKILL it after STOP_TIMEOUT_S."""
    benchkit.stop(server, STOP_TIMEOUT_S)


def benchmark_argv(redis_benchmark: str, port: int, scenario: Scenario) -> list[str]:
    """The redis-benchmark command line for one run."""
    argv = [redis_benchmark, "-h", LOOPBACK, "-p", str(port), "-c", str(scenario.clients)]
    if scenario.pipeline > 1:
        argv += ["-P", str(scenario.pipeline)]
    argv += ["-n", str(scenario.requests), "-t", TESTS, "--csv"]
    return argv


def parse_csv(text: str) -> dict[str, TestResult]:
    """Parse redis-benchmark 7's --csv output; raises BenchError on anything else."""
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    header_at = next((i for i, row in enumerate(rows) if row and row[0] == "test"), None)
    if header_at is None:
        raise BenchError(f"no CSV header in redis-benchmark output: {text[:300]!r}")
    header = rows[header_at]
    wanted = (
        "rps",
        "avg_latency_ms",
        "min_latency_ms",
        "p50_latency_ms",
        "p95_latency_ms",
        "p99_latency_ms",
        "max_latency_ms",
    )
    missing = [name for name in wanted if name not in header]
    if missing:
        raise BenchError(f"redis-benchmark CSV lacks columns {missing}; header is {header}")
    col = {name: header.index(name) for name in wanted}
    results: dict[str, TestResult] = {}
    for row in rows[header_at + 1 :]:
        try:
            values = {name: float(row[index]) for name, index in col.items()}
        except (IndexError, ValueError) as exc:
            raise BenchError(f"bad redis-benchmark CSV row {row}") from exc
        results[row[0]] = TestResult(
            rps=values["rps"],
            avg_ms=values["avg_latency_ms"],
            min_ms=values["min_latency_ms"],
            p50_ms=values["p50_latency_ms"],
            p95_ms=values["p95_latency_ms"],
            p99_ms=values["p99_latency_ms"],
            max_ms=values["max_latency_ms"],
        )
    absent = [name for name in EXPECTED_TESTS if name not in results]
    if absent:
        raise BenchError(f"redis-benchmark reported no {absent}; got {sorted(results)}")
    return results


def run_once(redis_benchmark: str, server: Server, scenario: Scenario, round_no: int) -> RunResult:
    """One redis-benchmark run, bracketed by the server's CPU time."""
    server.check_alive()
    argv = benchmark_argv(redis_benchmark, server.port, scenario)
    # A server with worker processes is measured as a whole: the primary and every worker.
    pids = [server.pid, *descendants(server.pid)]
    cpu_before = tree_cpu_seconds(pids)
    # The servers are reaped only at the end, so during the run the children's CPU
    # time grows by redis-benchmark's alone.
    bench_before = children_cpu_seconds()
    busy_before = machine_busy_seconds()
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=RUN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv)} ran past {RUN_TIMEOUT_S} s") from exc
    wall_s = time.monotonic() - started
    busy_after = machine_busy_seconds()
    cpu_after = tree_cpu_seconds(pids)
    bench_after = children_cpu_seconds()
    server.check_alive()
    stdout = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")
        raise BenchError(f"{' '.join(argv)} exited with status {done.returncode}: {stderr[-500:]}")
    tests = parse_csv(stdout)
    # -n counts requests per test, and "-t ping" runs every test in the CSV.
    requests = scenario.requests * len(tests)
    user_s = cpu_after[0] - cpu_before[0]
    sys_s = cpu_after[1] - cpu_before[1]
    cpu_s = user_s + sys_s
    benchmark_cpu_s = bench_after - bench_before
    return RunResult(
        scenario=scenario.name,
        round=round_no,
        server=server.name,
        wall_s=wall_s,
        requests=requests,
        cpu_s=cpu_s,
        cpu_us_per_req=cpu_s * 1e6 / requests,
        user_us_per_req=user_s * 1e6 / requests,
        sys_us_per_req=sys_s * 1e6 / requests,
        benchmark_cpu_s=benchmark_cpu_s,
        # Whatever else ran on the machine meanwhile: a large figure means a noisy run.
        other_cpu_s=max(0.0, busy_after - busy_before - cpu_s - benchmark_cpu_s),
        tests=tests,
    )


def human_line(run: RunResult, rounds: int) -> str:
    """One line per run for the operator watching stderr."""
    parts = [
        f"{name} {t.rps:>10,.0f} rps p50 {t.p50_ms:6.3f} p99 {t.p99_ms:6.3f} ms"
        for name, t in sorted(run.tests.items())
    ]
    return (
        f"[{run.scenario:<7} round {run.round}/{rounds}] {run.server:<5} "
        + " | ".join(parts)
        + f" | cpu {run.cpu_us_per_req:6.2f} us/req"
        + f" (user {run.user_us_per_req:.2f} sys {run.sys_us_per_req:.2f})"
        + f" | client {run.benchmark_cpu_s / run.wall_s:.0%} of a core"
        + f" ({run.wall_s:.1f} s, other load {run.other_cpu_s:.1f} cpu-s)"
    )


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 4)


def summarise(scenarios: Sequence[Scenario], runs: Sequence[RunResult]) -> list[object]:
    """Medians per scenario and test, and medians of the pairwise ours/redis ratios."""
    summary: list[object] = []
    for scenario in scenarios:
        mine = [run for run in runs if run.scenario == scenario.name]
        by_round: dict[int, dict[str, RunResult]] = {}
        for run in mine:
            by_round.setdefault(run.round, {})[run.server] = run
        pairs = [
            (pair["redis"], pair["ours"])
            for _, pair in sorted(by_round.items())
            if "redis" in pair and "ours" in pair
        ]
        tests: dict[str, object] = {}
        for test in EXPECTED_TESTS:
            per_server: dict[str, object] = {}
            for name in SERVER_NAMES:
                picked = [run for run in mine if run.server == name]
                if not picked:
                    continue
                picked = [run for run in mine if run.server == name]
                per_server[name] = {
                    "rps": _median([run.tests[test].rps for run in picked]),
                    "p50_ms": _median([run.tests[test].p50_ms for run in picked]),
                    "p99_ms": _median([run.tests[test].p99_ms for run in picked]),
                    "cpu_us_per_req": _median([run.cpu_us_per_req for run in picked]),
                    "user_us_per_req": _median([run.user_us_per_req for run in picked]),
                    "sys_us_per_req": _median([run.sys_us_per_req for run in picked]),
                    # How busy the load generator was: near 1.0, redis-benchmark's own
                    # core is the bound, and no server can be measured past it.
                    "client_core_share": round(
                        _median([run.benchmark_cpu_s / run.wall_s for run in picked]), 2
                    ),
                }
            tests[test] = {
                **per_server,
                "ratio_rps_ours_over_redis": _median(
                    [ours.tests[test].rps / redis.tests[test].rps for redis, ours in pairs]
                ),
                "ratio_cpu_per_req_ours_over_redis": _median(
                    [ours.cpu_us_per_req / redis.cpu_us_per_req for redis, ours in pairs]
                ),
            }
            floors = [
                (pair["redis"], pair["floor"])
                for _, pair in sorted(by_round.items())
                if "redis" in pair and "floor" in pair
            ]
            if floors:
                tests[test] = {
                    **cast("dict[str, object]", tests[test]),
                    "ratio_cpu_per_req_floor_over_redis": _median(
                        [floor.cpu_us_per_req / redis.cpu_us_per_req for redis, floor in floors]
                    ),
                }
        summary.append(
            {
                "scenario": scenario.name,
                "clients": scenario.clients,
                "pipeline": scenario.pipeline,
                "requests_per_test": scenario.requests,
                "rounds": len(pairs),
                "max_other_cpu_s": round(max((run.other_cpu_s for run in mine), default=0.0), 2),
                "tests": tests,
            }
        )
    return summary


def machine_facts(redis_server: str) -> dict[str, object]:
    """The shared machine facts plus the Redis version."""
    return {
        **benchkit.machine_facts(),
        "redis": command_output([redis_server, "--version"]) or "unknown",
    }


def build_scenarios(requests: int, pipelined_requests: int) -> list[Scenario]:
    """The three load shapes of docs/benchmarks.md, in the order they run."""
    return [
        Scenario(name="c50", clients=50, pipeline=1, requests=requests),
        Scenario(name="c50-P16", clients=50, pipeline=PIPELINE_DEPTH, requests=pipelined_requests),
        Scenario(name="c1000", clients=1000, pipeline=1, requests=requests),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; see bench/command/README.md."""
    parser = argparse.ArgumentParser(
        description="Compare `postoffice command serve` with redis-server using "
        "redis-benchmark -t ping. Progress goes to stderr, one JSON object to stdout.",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help="requests per test (-n) in the non-pipelined scenarios (default %(default)s)",
    )
    parser.add_argument(
        "--pipelined-requests",
        type=int,
        default=None,
        help=f"requests per test (-n) with -P {PIPELINE_DEPTH} "
        f"(default {PIPELINED_FACTOR} x --requests)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help="paired runs (redis, then ours) per scenario (default %(default)s)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run floor.py (a bare uvloop server, no parsing) after ours in each round",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run ours as `command serve --workers N` (a primary and N worker processes; "
        "their CPU is summed) (default %(default)s: one process)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[s.name for s in build_scenarios(1, 1)],
        help="run only this scenario (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rounds < 1 or args.workers < 1:
        parser.error("--requests, --rounds and --workers must be at least 1")
    if args.pipelined_requests is None:
        args.pipelined_requests = args.requests * PIPELINED_FACTOR
    elif args.pipelined_requests < 1:
        parser.error("--pipelined-requests must be at least 1")
    return args


def find_tools() -> tuple[str, str, str]:
    """Paths of redis-server, redis-benchmark and postoffice; exits 2 if one is missing."""
    redis_server = shutil.which("redis-server")
    redis_benchmark = shutil.which("redis-benchmark")
    if redis_server is None or redis_benchmark is None:
        missing = [
            name
            for name, path in (("redis-server", redis_server), ("redis-benchmark", redis_benchmark))
            if path is None
        ]
        say(f"error: {' and '.join(missing)} not found on PATH; {INSTALL_HINT}")
        sys.exit(EXIT_MISSING_TOOL)
    # The console script next to this interpreter, so `.venv/bin/python` uses the venv's.
    beside = Path(sys.executable).parent / "postoffice"
    postoffice = str(beside) if beside.exists() else shutil.which("postoffice")
    if postoffice is None:
        say("error: the postoffice command was not found; run `make setup` first")
        sys.exit(EXIT_MISSING_TOOL)
    return redis_server, redis_benchmark, postoffice


@contextlib.contextmanager
def servers(
    tmp: Path, redis_server: str, postoffice: str, *, floor: bool, workers: int = 1
) -> Iterator[list[Server]]:
    """The servers (redis, ours, and the floor if asked), stopped by pid after the body."""
    started: list[Server] = []
    try:
        started.append(start_redis(tmp, redis_server))
        started.append(start_ours(tmp, postoffice, workers))
        if floor:
            started.append(start_floor(tmp))
        yield list(started)
    finally:
        for server in reversed(started):
            stop(server)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print progress to stderr and one JSON object to stdout."""
    args = parse_args(argv)
    redis_server, redis_benchmark, postoffice = find_tools()
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    scenarios = [
        s
        for s in build_scenarios(args.requests, args.pipelined_requests)
        if args.scenario is None or s.name in args.scenario
    ]
    machine = machine_facts(redis_server)
    started_at = datetime.datetime.now(datetime.UTC)
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-command-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            with servers(
                tmp, redis_server, postoffice, floor=args.floor, workers=args.workers
            ) as started:
                say("started " + ", ".join(repr(server) for server in started))
                for scenario in scenarios:
                    for round_no in range(1, args.rounds + 1):
                        for server in started:
                            run = run_once(redis_benchmark, server, scenario, round_no)
                            runs.append(run)
                            say(human_line(run, args.rounds))
        except BenchError as exc:
            say(f"error: {exc}")
            return EXIT_RUN_FAILED
    result = {
        "benchmark": "command",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.datetime.now(datetime.UTC) - started_at).total_seconds(), 1),
        "parameters": {
            "command": "redis-benchmark -h 127.0.0.1 -p PORT -c C [-P 16] -n N -t ping --csv",
            "rounds": args.rounds,
            "requests": args.requests,
            "pipelined_requests": args.pipelined_requests,
            "order": "per scenario, per round: redis, ours, then the floor if --floor",
            "cpu_us_per_req": "server utime+stime over the whole run (both tests) / "
            "(N x tests); the same figure is repeated under each test; "
            "user_us_per_req and sys_us_per_req split it",
            "other_cpu_s": "machine busy time during a run minus the server's and "
            "redis-benchmark's: CPU used by anything else (noise)",
            "client_core_share": "redis-benchmark's CPU time / wall time: 1.0 means the "
            "load generator used a whole core, so the run measured it, not the server",
            "scenarios": [{**dataclasses.asdict(s), "flags": s.describe()} for s in scenarios],
            "redis_server_flags": "--save '' --appendonly no --daemonize no "
            f"--maxclients {REDIS_MAX_CLIENTS}",
            "ours_flags": f"--no-metrics --max-connections {OUR_MAX_CONNECTIONS}"
            + (f" --workers {args.workers}" if args.workers > 1 else ""),
            "workers": args.workers,
        },
        "machine": machine,
        "results": summarise(scenarios, runs),
        "runs": [dataclasses.asdict(run) for run in runs],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
