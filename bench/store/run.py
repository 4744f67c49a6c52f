"""Benchmark: the store server against a real redis-server with AOF on, and the engine
against raw LMDB, in the same run, with 100-byte values.

A standalone script (never imported by pytest). Progress and a table go to stderr, one
JSON object (parameters, machine, results, goals) to stdout. See bench/store/README.md.
"""

# Design
# ------
# Three parts, all with the same keys (`key:%012d`, redis-benchmark's `-r` names) and the
# same 100-byte value:
#   client:  our AsyncClient against `postoffice store serve`, and redis-py's asyncio
#            client against `redis-server --appendonly yes`, each with C connections and
#            P requests in flight per connection, for a fixed time per run;
#   rb:      redis-benchmark -t set,get against the command server backed by the store
#            server (`postoffice command serve --store HOST:PORT`) and against redis-server;
#            skipped when the command server has no --store flag;
#   rb-embedded: the same against the command server with the store engine in its own
#            process (`postoffice command serve --store-dir DIR`), on the same data dir
#            once the store server is stopped; skipped without --store-dir;
#   engine:  postoffice.store.engine.Store in this process against the `lmdb` package alone.
# The servers run in two phases: durable (our `always`, redis `appendfsync always`) and
# interval (our `interval`, redis `appendfsync everysec`). In each phase both stores are
# prefilled with the same keys, so every GET hits. Every run against redis is paired with
# the run against ours in the same round, and ratios are taken within a pair.

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for benchkit

from benchkit import (
    EXIT_MISSING_TOOL,
    EXIT_RUN_FAILED,
    BenchError,
    Server,
    raise_on_sigterm,
    say,
)
from clientpart import client_run
from common import (
    DEFAULT_CLIENTS,
    DEFAULT_ENGINE_DURABLE_KEYS,
    DEFAULT_ENGINE_KEYS,
    DEFAULT_ENGINE_THREADS,
    DEFAULT_KEYS,
    DEFAULT_PIPELINE,
    DEFAULT_RB_REQUESTS,
    DEFAULT_ROUNDS,
    DEFAULT_SECONDS,
    INSTALL_HINT,
    LOOPS,
    MAX_CONNECTIONS,
    PARTS,
    PHASES,
    RB_PIPELINED_FACTOR,
    RB_TIMEOUT_S,
    VALUE_BYTES,
    Run,
    Scenario,
    make_keys,
)
from enginepart import ENGINE_WARMUP_KEYS, engine_round
from profiles import profile_store, py_spy, summarise_profile
from rbpart import command_has_store_flag, rb_argv, rb_run
from report import goals, human_line, machine_facts, python_loop_ms, summarise, table
from servers import (
    prefill_redis,
    prefill_store,
    start_command,
    start_redis,
    start_store,
    stop,
    warm_up,
)

# --- main ---------------------------------------------------------------------------------


def build_scenarios(clients: int, pipeline: int) -> list[Scenario]:
    """One request in flight per connection, then `pipeline` in flight per connection."""
    found = [Scenario(name=f"c{clients}", clients=clients, pipeline=1)]
    if pipeline > 1:
        found.append(Scenario(name=f"c{clients}-P{pipeline}", clients=clients, pipeline=pipeline))
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; see bench/store/README.md."""
    parser = argparse.ArgumentParser(
        description="Compare the store server with redis-server (AOF on) and the store "
        "engine with raw LMDB. Progress and a table go to stderr, one JSON object to stdout.",
    )
    add = parser.add_argument
    add("--part", action="append", choices=PARTS, help="run only this part (repeatable)")
    add("--rounds", type=int, default=DEFAULT_ROUNDS, help="paired rounds (default %(default)s)")
    add("--keys", type=int, default=DEFAULT_KEYS, help="keyspace, prefilled (default %(default)s)")
    add("--clients", type=int, default=DEFAULT_CLIENTS, help="connections (default %(default)s)")
    add(
        "--pipeline",
        type=int,
        default=DEFAULT_PIPELINE,
        help="requests in flight per connection in the second scenario; 1 skips it "
        "(default %(default)s)",
    )
    add(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help="seconds per client run (default %(default)s)",
    )
    add(
        "--rb-requests",
        type=int,
        default=DEFAULT_RB_REQUESTS,
        help="redis-benchmark -n per test without pipelining; with -P it is "
        f"{RB_PIPELINED_FACTOR} x this (default %(default)s)",
    )
    add(
        "--engine-keys",
        type=int,
        default=DEFAULT_ENGINE_KEYS,
        help="keys the engine part puts and gets (default %(default)s)",
    )
    add(
        "--engine-durable-keys",
        type=int,
        default=DEFAULT_ENGINE_DURABLE_KEYS,
        help="keys the engine part puts durably (default %(default)s)",
    )
    add(
        "--engine-threads",
        type=int,
        default=DEFAULT_ENGINE_THREADS,
        help="threads for the durable engine puts (default %(default)s)",
    )
    add(
        "--loop",
        choices=sorted(LOOPS),
        default="uvloop",
        help="event loop of both clients in the client part (default %(default)s)",
    )
    add("--work-dir", type=Path, default=None, help="parent of the temporary work dir")
    add(
        "--profile-dir",
        type=Path,
        default=None,
        help="after each phase's client rounds, profile our store server with py-spy "
        "during one extra run of each test and scenario; raw profiles go here",
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "keys", "clients", "pipeline", "rb_requests", "engine_keys"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.engine_durable_keys < 1 or args.engine_threads < 1 or args.seconds <= 0:
        parser.error("--engine-durable-keys, --engine-threads and --seconds must be positive")
    args.engine_durable_keys = min(args.engine_durable_keys, args.engine_keys)
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
    beside = Path(sys.executable).parent / "postoffice"
    postoffice = str(beside) if beside.exists() else shutil.which("postoffice")
    if postoffice is None:
        say("error: the postoffice command was not found; run `make setup` first")
        sys.exit(EXIT_MISSING_TOOL)
    return redis_server, redis_benchmark, postoffice


@contextlib.contextmanager
def started(servers: list[Server]) -> Iterator[list[Server]]:
    """Stop (SIGTERM by pid) every server appended to `servers`, in reverse, on the way out."""
    try:
        yield servers
    finally:
        for server in reversed(servers):
            stop(server)


def run_phase(
    args: argparse.Namespace,
    tools: tuple[str, str, str],
    work: Path,
    phase: str,
    durability: str,
    appendfsync: str,
    keys: Sequence[bytes],
    with_rb: bool,
    with_rbe: bool,
) -> tuple[list[Run], dict[str, object]]:
    """Start one phase's servers, prefill them, run the client and redis-benchmark parts."""
    redis_server, redis_benchmark, postoffice = tools
    scenarios = build_scenarios(args.clients, args.pipeline)
    parts = args.part or PARTS
    runs: list[Run] = []
    profiles: dict[str, object] = {}
    began = time.monotonic()
    prefill_store(work / f"store-{durability}", keys)
    with started([]) as servers:
        servers.append(start_redis(work, redis_server, appendfsync))
        servers.append(start_store(work, postoffice, durability))
        redis_srv, store = servers
        prefill_redis(redis_srv.port, keys)
        took = time.monotonic() - began
        say(f"{phase}: {redis_srv!r} and {store!r} hold {len(keys)} keys ({took:.1f} s)")
        if "client" in parts:
            ops = ("get", "put") if phase == "durable" else ("put",)
            for op in ops:
                for scenario in scenarios:
                    for round_no in range(1, args.rounds + 1):
                        for contender, server in (("redis", redis_srv), ("ours", store)):
                            run = client_run(
                                contender=contender,
                                server=server,
                                phase=phase,
                                op=op,
                                scenario=scenario,
                                keys=keys,
                                seconds=args.seconds,
                                round_no=round_no,
                                loop=args.loop,
                            )
                            runs.append(run)
                            say(human_line(run))
            if args.profile_dir is not None:
                for scenario in scenarios:
                    profiles.update(
                        profile_store(
                            store,
                            keys,
                            scenario,
                            args.seconds,
                            args.profile_dir,
                            args.loop,
                            phase,
                            ops,
                        )
                    )
        if with_rb:
            command = start_command(work, postoffice, durability, store=store)
            servers.append(command)
            runs += rb_rounds(args, "rb", phase, redis_benchmark, redis_srv, [command, store], keys)
        if with_rbe:
            # The store directory is open in one process at a time: the store server and
            # the command server in front of it go first.
            for server in servers[1:]:
                stop(server)
            del servers[1:]
            store_dir = work / f"store-{durability}" / "store"
            command = start_command(work, postoffice, durability, store_dir=store_dir)
            servers.append(command)
            runs += rb_rounds(
                args, "rb-embedded", phase, redis_benchmark, redis_srv, [command], keys
            )
            if args.profile_dir is not None:
                profiles.update(
                    profile_rb(command, redis_benchmark, scenarios, args, phase, len(keys))
                )
    return runs, profiles


def rb_rounds(
    args: argparse.Namespace,
    part: str,
    phase: str,
    redis_benchmark: str,
    redis_srv: Server,
    ours: Sequence[Server],
    keys: Sequence[bytes],
) -> list[Run]:
    """redis-benchmark against redis, then against `ours[0]` (CPU summed over `ours`), for
    each scenario and round, after an untimed read of every key through each."""
    for server in (redis_srv, ours[0]):
        began = time.monotonic()
        warm_up(server, keys)
        say(f"{part}: {server!r} read every key once ({time.monotonic() - began:.1f} s)")
    runs: list[Run] = []
    for scenario in build_scenarios(args.clients, args.pipeline):
        requests = args.rb_requests * (RB_PIPELINED_FACTOR if scenario.pipeline > 1 else 1)
        for round_no in range(1, args.rounds + 1):
            for contender, measured in (("redis", [redis_srv]), ("ours", list(ours))):
                argv = rb_argv(redis_benchmark, measured[0].port, scenario, requests, len(keys))
                for run in rb_run(
                    part=part,
                    contender=contender,
                    servers=measured,
                    phase=phase,
                    argv=argv,
                    scenario=scenario,
                    requests=requests,
                    round_no=round_no,
                ):
                    runs.append(run)
                    say(human_line(run))
    return runs


def profile_rb(
    command: Server,
    redis_benchmark: str,
    scenarios: Sequence[Scenario],
    args: argparse.Namespace,
    phase: str,
    keyspace: int,
) -> dict[str, object]:
    """One extra, untimed redis-benchmark run per test (-t get, -t set) and scenario
    against the embedded command server, with py-spy attached to it."""
    out_dir: Path = args.profile_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, object] = {}
    for scenario in scenarios:
        requests = args.rb_requests * (RB_PIPELINED_FACTOR if scenario.pipeline > 1 else 1)
        for test in ("get", "set"):
            out = out_dir / f"command-embedded-{phase}-{test}-{scenario.name}.txt"
            argv = rb_argv(redis_benchmark, command.port, scenario, requests, keyspace, test)
            spy = py_spy(command.pid, out, args.seconds)
            time.sleep(1.0)  # py-spy attaches
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:  # keep the load on for py-spy's whole window
                subprocess.run(argv, capture_output=True, timeout=RB_TIMEOUT_S, check=True)
            try:
                _, err = spy.communicate(timeout=args.seconds + 31)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            summary = summarise_profile(out)
            if spy.returncode != 0:
                summary["py_spy_error"] = err.decode(errors="replace")[-300:]
            found[f"command-embedded/{phase}/{test}/{scenario.name}"] = summary
            say(f"profiled embedded command server {phase} {test} {scenario.name}: {out}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; progress and the table to stderr, one JSON object to stdout."""
    args = parse_args(argv)
    tools = find_tools()
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    parts = args.part or PARTS
    started_at = datetime.datetime.now(datetime.UTC)
    runs: list[Run] = []
    profiles: dict[str, object] = {}
    rb_status = "not asked for"
    if "rb" in parts:
        rb_status = "ran" if command_has_store_flag(tools[2]) else "skipped"
        if rb_status == "skipped":
            say(
                "part rb skipped: `postoffice command serve --help` has no --store flag "
                "(the store-backed command server is not there yet)"
            )
    with_rb = rb_status == "ran"
    rbe_status = "not asked for"
    if "rb-embedded" in parts:
        rbe_status = "ran" if command_has_store_flag(tools[2], "--store-dir") else "skipped"
        if rbe_status == "skipped":
            say("part rb-embedded skipped: `postoffice command serve --help` has no --store-dir")
    with_rbe = rbe_status == "ran"
    keys = make_keys(args.keys)
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.work_dir) as tmp_name:
        work = Path(tmp_name)
        machine = machine_facts(tools[0], work)
        try:
            if "client" in parts or with_rb or with_rbe:
                for phase, durability, appendfsync in PHASES:
                    found, profiled = run_phase(
                        args, tools, work, phase, durability, appendfsync, keys, with_rb, with_rbe
                    )
                    runs += found
                    profiles.update(profiled)
            if "engine" in parts:
                # The same keys for both, in one shuffled order: LMDB's B-tree and our
                # index see random inserts, as a server would.
                order = make_keys(args.engine_keys)
                random.Random(7).shuffle(order)
                durable = order[: args.engine_durable_keys]
                warmup = order[:ENGINE_WARMUP_KEYS]
                engine_round(work, warmup, warmup[:500], args.engine_threads, 0, quiet=True)
                for round_no in range(1, args.rounds + 1):
                    runs += engine_round(work, order, durable, args.engine_threads, round_no)
        except (BenchError, redis.RedisError, OSError) as exc:
            say(f"error: {exc}")
            return EXIT_RUN_FAILED
    machine["python_loop_ms_at_end"] = python_loop_ms()
    rows = summarise(runs)
    say("\n" + table(rows))
    result = {
        "benchmark": "store",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.datetime.now(datetime.UTC) - started_at).total_seconds(), 1),
        "parameters": {
            "argv": sys.argv[1:] if argv is None else list(argv),
            "parts": list(parts),
            "rb": rb_status,
            "rb_embedded": rbe_status,
            "rounds": args.rounds,
            "keys": args.keys,
            "value_bytes": VALUE_BYTES,
            "scenarios": [
                dataclasses.asdict(s) for s in build_scenarios(args.clients, args.pipeline)
            ],
            "seconds_per_client_run": args.seconds,
            "client_loop": args.loop,
            "rb_requests": args.rb_requests,
            "rb_pipelined_requests": args.rb_requests * RB_PIPELINED_FACTOR,
            "rb_command": "redis-benchmark -h 127.0.0.1 -p PORT -c C [-P P] -n N -r KEYS "
            "-d 100 -t set,get --csv",
            "engine_keys": args.engine_keys,
            "engine_durable_keys": args.engine_durable_keys,
            "engine_threads": args.engine_threads,
            "redis_server_flags": "--appendonly yes --appendfsync always|everysec "
            f"--auto-aof-rewrite-percentage 0 --save '' --maxclients {MAX_CONNECTIONS}",
            "store_server_flags": "--durability always|interval "
            f"--max-connections {MAX_CONNECTIONS} --log-level WARNING",
            "command_server_flags": "--no-metrics "
            f"--max-connections {MAX_CONNECTIONS} --log-level WARNING, then --store "
            "127.0.0.1:P (rb) or --store-dir D/store --durability always|interval "
            "(rb-embedded, on the store server's data dir once it is stopped)",
            "order": "per test, scenario and round: redis (or lmdb) then ours",
            "cpu_us_per_op": "server: utime+stime of the server process(es) over the timed "
            "window / ops; client: this process (client parts) or redis-benchmark; "
            "engine: this process",
            "latency": "client part: time of one request, or of one pipeline of P; "
            "rb part: redis-benchmark's p50/p99",
        },
        "machine": machine,
        "results": rows,
        "goals": goals(rows),
        "profiles": profiles,
        "runs": [dataclasses.asdict(run) for run in runs],
    }
    print(json.dumps(result, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
