"""Part "rb": redis-benchmark against the store-backed command server and against redis-server."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import time
from collections.abc import Sequence

import redis
from benchkit import (
    LOOPBACK,
    BenchError,
    Server,
    children_cpu_seconds,
    tail,
)
from common import KEY_FORMAT, RB_TIMEOUT_S, VALUE_BYTES, Run, Scenario
from servers import CpuWindow


def command_has_store_flag(postoffice: str, flag: str = "--store") -> bool:
    """Whether `postoffice command serve` accepts `flag` (--store: GET/SET on a store
    server; --store-dir: on a store engine in its own process)."""
    try:
        done = subprocess.run(
            [postoffice, "command", "serve", "--help"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(rb"(^|\s)" + re.escape(flag.encode()) + rb"(\s|$)", done.stdout) is not None


def check_command_store(command: Server, key: bytes, deadline_s: float = 10.0) -> None:
    """Check, through the command server, that `key` reads back as a 100-byte value: the
    store behind it is connected and serves the prefilled keys (which redis-benchmark's
    SET overwrites with values of its own). redis-benchmark counts error replies
    (TRYAGAIN) as answers, so without this check a broken backend would look fast.

    Raises BenchError.
    """
    client = redis.Redis(host=LOOPBACK, port=command.port, socket_timeout=5)
    last: object = None
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            command.check_alive()
            try:
                last = client.get(key)
            except redis.RedisError as exc:
                last = exc
            if isinstance(last, bytes) and len(last) == VALUE_BYTES:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    finally:
        client.close()
    raise BenchError(
        f"the store-backed command server answered GET {key!r} with {last!r}, not a "
        f"{VALUE_BYTES}-byte value; log tail:\n{tail(command.log_path)}"
    )


def rb_argv(
    redis_benchmark: str,
    port: int,
    scenario: Scenario,
    requests: int,
    keyspace: int,
    tests: str = "set,get",
) -> list[str]:
    """The redis-benchmark command line for one run."""
    argv = [redis_benchmark, "-h", LOOPBACK, "-p", str(port), "-c", str(scenario.clients)]
    if scenario.pipeline > 1:
        argv += ["-P", str(scenario.pipeline)]
    argv += ["-n", str(requests), "-r", str(keyspace), "-d", str(VALUE_BYTES)]
    return [*argv, "-t", tests, "--csv"]


def parse_rb_csv(text: str) -> dict[str, tuple[float, float, float]]:
    """redis-benchmark 7's --csv output: test -> (rps, p50 ms, p99 ms).

    Raises BenchError on anything else, or when SET or GET is missing.
    """
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    header_at = next((i for i, row in enumerate(rows) if row[0] == "test"), None)
    if header_at is None:
        raise BenchError(f"no CSV header in redis-benchmark output: {text[:300]!r}")
    header = rows[header_at]
    try:
        cols = [header.index(name) for name in ("rps", "p50_latency_ms", "p99_latency_ms")]
    except ValueError as exc:
        raise BenchError(f"redis-benchmark CSV header lacks a column: {header}") from exc
    found: dict[str, tuple[float, float, float]] = {}
    for row in rows[header_at + 1 :]:
        try:
            rps, p50, p99 = (float(row[col]) for col in cols)
        except (IndexError, ValueError) as exc:
            raise BenchError(f"bad redis-benchmark CSV row {row}") from exc
        found[row[0]] = (rps, p50, p99)
    if "SET" not in found or "GET" not in found:
        raise BenchError(f"redis-benchmark reported {sorted(found)}, not SET and GET")
    return found


def rb_run(
    *,
    part: str = "rb",
    contender: str,
    servers: Sequence[Server],
    phase: str,
    argv: Sequence[str],
    scenario: Scenario,
    requests: int,
    round_no: int,
) -> list[Run]:
    """One redis-benchmark run (SET then GET); server CPU is the sum over `servers`."""
    for server in servers:
        server.check_alive()
    if contender == "ours":
        check_command_store(servers[0], KEY_FORMAT % 0)
    window = CpuWindow([server.pid for server in servers])
    bench_before = children_cpu_seconds()
    window()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=RB_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv)} ran past {RB_TIMEOUT_S} s") from exc
    window()
    bench_cpu = children_cpu_seconds() - bench_before
    for server in servers:
        server.check_alive()
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")[-500:]
        raise BenchError(f"{' '.join(argv)} exited with status {done.returncode}: {stderr}")
    tests = parse_rb_csv(done.stdout.decode(errors="replace"))
    if contender == "ours":
        check_command_store(servers[0], KEY_FORMAT % 1, deadline_s=0.0)
    server_cpu, _, busy = window.deltas()
    total = requests * len(tests)
    split = {
        server.name: round(cpu * 1e6 / total, 2)
        for server, cpu in zip(servers, window.server_deltas(), strict=True)
    }
    return [
        Run(
            part=part,
            phase=phase,
            test=test,
            scenario=scenario.name,
            round=round_no,
            contender=contender,
            ops=requests,
            seconds=round(requests / rps, 3),
            ops_s=rps,
            p50_ms=p50,
            p99_ms=p99,
            # One CPU reading covers both tests: the same figure under each.
            server_cpu_us_per_op=round(server_cpu * 1e6 / total, 2),
            client_cpu_us_per_op=round(bench_cpu * 1e6 / total, 2),
            other_cpu_s=round(max(0.0, busy - server_cpu - bench_cpu), 2),
            server_cpu_us_per_op_by_process=split if len(servers) > 1 else None,
        )
        for test, (rps, p50, p99) in sorted(tests.items())
    ]
