"""Benchmark: GET and SET of 1 KiB, 64 KiB and 1 MiB values, ours against redis-server.

Ours runs three ways: the store in-process (`--store-dir`), and behind a store server
(`--store`) with one and with N store connections. Redis runs twice: with an AOF fsynced
at every write (`appendfsync always`, the durability our `always` gives) and with its
default settings. Every system is driven by the same redis-benchmark line, in the same
run, round after round; the figures are medians over the rounds and the ratios are ours
over redis per size. Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import (
    EXIT_MISSING_TOOL,
    EXIT_RUN_FAILED,
    LOOPBACK,
    BenchError,
    Server,
    answers_ping,
    free_port,
    machine_facts,
    raise_on_sigterm,
    say,
    stop,
    tail,
)

SIZES: Final = (1024, 64 * 1024, 1024 * 1024)
#: Requests per redis-benchmark test, per value size: about the same bytes moved for the
#: two large sizes, and enough 1 KiB requests for a steady rate.
DEFAULT_REQUESTS: Final = {1024: 20_000, 64 * 1024: 4_000, 1024 * 1024: 400}
STARTUP_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
BENCH_TIMEOUT_S: Final = 600.0
SYSTEMS: Final = ("redis-aof-always", "redis-default", "ours-embedded", "ours-remote-1")


def _start(name: str, argv: list[str], tmp: Path, port: int) -> Server:
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp)
    server = Server(name=name, proc=proc, pid=proc.pid, port=port, log_path=log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        server.check_alive()
        if answers_ping(port):
            return server
        time.sleep(0.05)
    stop(server, STOP_TIMEOUT_S)
    raise BenchError(f"{name} did not answer PING within {STARTUP_TIMEOUT_S} s:\n{tail(log_path)}")


def _store_ready(ready: Path, server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready.exists():
        server.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"the store server never became ready:\n{tail(server.log_path)}")
        time.sleep(0.05)


@contextmanager
def system(name: str, tmp: Path, tools: dict[str, str], connections: int) -> Iterator[int]:
    """Start `name` in `tmp`; yield the port its clients use; stop everything after."""
    started: list[Server] = []
    port = free_port()
    try:
        if name.startswith("redis"):
            argv = [tools["redis-server"], "--port", str(port), "--bind", LOOPBACK]
            argv += ["--dir", str(tmp), "--daemonize", "no"]
            if name == "redis-aof-always":
                argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            started.append(_start(name, argv, tmp, port))
        else:
            ours = [sys.executable, "-m", "postoffice", "command", "serve", "--host", LOOPBACK]
            ours += ["--port", str(port), "--no-metrics"]
            if name == "ours-embedded":
                ours += ["--store-dir", str(tmp / "store")]
            else:
                store_port = free_port()
                ready = tmp / "store.ready.json"
                store_argv = [sys.executable, "-m", "postoffice", "store", "serve"]
                store_argv += ["--host", LOOPBACK, "--port", str(store_port), "--metrics-port", "0"]
                store_argv += ["--data-dir", str(tmp / "data"), "--ready-file", str(ready)]
                store = _start_plain("store", store_argv, tmp, store_port)
                started.append(store)
                _store_ready(ready, store)
                ours += ["--store", f"{LOOPBACK}:{store_port}"]
                ours += ["--store-connections", str(connections)]
            started.append(_start(name, ours, tmp, port))
        yield port
    finally:
        for server in reversed(started):
            stop(server, STOP_TIMEOUT_S)


def _start_plain(name: str, argv: list[str], tmp: Path, port: int) -> Server:
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp)
    return Server(name=name, proc=proc, pid=proc.pid, port=port, log_path=log_path)


def bench(
    redis_benchmark: str, port: int, size: int, requests: int, clients: int
) -> dict[str, float]:
    """One redis-benchmark run of SET then GET of `size`-byte values; rps per test."""
    argv = [redis_benchmark, "-h", LOOPBACK, "-p", str(port), "-c", str(clients)]
    argv += ["-n", str(requests), "-d", str(size), "-r", "1000", "-t", "set,get", "--csv"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"redis-benchmark failed ({done.returncode}): {done.stderr.strip()}")
    rates: dict[str, float] = {}
    for line in done.stdout.splitlines()[1:]:
        fields = [f.strip('"') for f in line.split(",")]
        if len(fields) >= 2 and fields[0] in ("SET", "GET"):
            rates[fields[0]] = float(fields[1])
    if set(rates) != {"SET", "GET"}:
        raise BenchError(f"redis-benchmark printed no SET/GET rates: {done.stdout!r}")
    return rates


def run(args: argparse.Namespace, tools: dict[str, str]) -> dict[str, object]:
    systems = [*SYSTEMS, f"ours-remote-{args.connections}"]
    samples: dict[str, dict[int, dict[str, list[float]]]] = {
        s: {size: {"SET": [], "GET": []} for size in SIZES} for s in systems
    }
    for round_ in range(1, args.rounds + 1):
        for name in systems:
            with (
                tempfile.TemporaryDirectory(prefix="bench-sizes-") as tmp_dir,
                system(name, Path(tmp_dir), tools, args.connections) as port,
            ):
                for size in SIZES:
                    requests = max(1, int(DEFAULT_REQUESTS[size] * args.scale))
                    rates = bench(tools["redis-benchmark"], port, size, requests, args.clients)
                    for test, rate in rates.items():
                        samples[name][size][test].append(rate)
                    say(f"round {round_} {name} {size} B: {rates}")
    medians = {
        name: {
            str(size): {test: statistics.median(v) for test, v in by_test.items()}
            for size, by_test in by_size.items()
        }
        for name, by_size in samples.items()
    }
    ratios = {
        name: {
            base: {
                str(size): {
                    test: round(medians[name][str(size)][test] / medians[base][str(size)][test], 3)
                    for test in ("SET", "GET")
                }
                for size in SIZES
            }
            for base in ("redis-aof-always", "redis-default")
        }
        for name in systems
        if name.startswith("ours")
    }
    return {
        "benchmark": "command-sizes",
        "parameters": {
            "sizes": list(SIZES),
            "requests": {str(s): max(1, int(DEFAULT_REQUESTS[s] * args.scale)) for s in SIZES},
            "clients": args.clients,
            "rounds": args.rounds,
            "store_connections": args.connections,
            "redis_benchmark": "-c C -n N -d SIZE -r 1000 -t set,get --csv",
        },
        "machine": machine_facts(),
        "rps_median": medians,
        "ratio_ours_over_redis": ratios,
        "samples": {n: {str(s): v for s, v in by.items()} for n, by in samples.items()},
    }


def tools_or_exit() -> dict[str, str]:
    found = {name: shutil.which(name) for name in ("redis-server", "redis-benchmark")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        say(
            f"missing: {', '.join(missing)}; install with: apt-get install redis-server redis-tools"
        )
        raise SystemExit(EXIT_MISSING_TOOL)
    return {name: path for name, path in found.items() if path is not None}


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians over them")
    parser.add_argument("--clients", type=int, default=20, help="redis-benchmark -c")
    parser.add_argument("--connections", type=int, default=4, help="N of ours-remote-N")
    parser.add_argument("--scale", type=float, default=1.0, help="times the default -n")
    args = parser.parse_args(argv)
    tools = tools_or_exit()
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        result = run(args, tools)
    except BenchError as exc:
        say(f"benchmark failed: {exc}")
        return EXIT_RUN_FAILED
    out(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
