"""Benchmark: the store engine (`postoffice.store.Store`) against what a Python user would
embed instead (sqlite3, py-lmdb, RocksDB through rocksdict), at equal durability.

A standalone script (never imported by pytest). Progress and a table go to stderr, one
JSON object to stdout. See bench/store/README.md ("Peers").
"""

# Design
# ------
# Every measurement runs in a fresh child process (this script with --child), one per
# (round, value size, peer): the peers' caches, threads and memory start equal, and the
# memory figure is that peer's alone. A child measures, in this order, for one value size:
#   put_durable_x1, put_durable_threads (8), batch_durable (100 a transaction), put_interval_x1,
#   each into a fresh directory; then, in one more directory opened `interval`: load (the
#   data set in batches of 1000), get (one untimed pass to warm, then a timed pass in
#   another random order), scan (10 % of the keys from a random key on), overwrite (every
#   key twice more), the directory's size closed, then compaction and its size again.
# The recovery row has its own children: a writer loads 1M keys, goes on overwriting, and
# gets SIGKILL mid-write; a fresh process then opens the directory and reads a key (timed).
# peerdbs.py holds the peers and the durability settings that make their rows comparable.

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for benchkit

from benchkit import (
    EXIT_MISSING_TOOL,
    EXIT_RUN_FAILED,
    BenchError,
    machine_facts,
    package_version,
    say,
)
from peerchild import (
    BATCH,
    CHILD_TIMEOUT_S,
    DEFAULT_ROUNDS,
    DEFAULT_THREADS,
    KEY_BYTES,
    LOAD_BATCH,
    RECOVER_KEYS,
    RECOVER_VALUE_BYTES,
    SCAN_FRACTION,
    VALUE_SIZES,
    child_recover,
    child_workload,
    child_writer,
    sizes_for,
)
from peerdbs import (
    INSTALL_HINT,
    PEERS,
    SETTINGS,
    remove,
    rocksdict_missing,
)
from peersreport import fmt, goal_lines, goals, summarise, summarise_profile, table

# --- the parent: rounds, children, the recovery row ---------------------------------------


def _child_argv(kind: str, spec: dict[str, object]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]


def _run_child(
    kind: str, spec: dict[str, object], profile: Path | None = None
) -> dict[str, object]:
    """Run one measuring child; its JSON line. Raises BenchError when it fails."""
    argv = _child_argv(kind, spec)
    if profile is not None:
        argv = [*_py_spy(), "record", "--format", "raw", "--idle", "--threads", "--rate", "250",
                "-o", str(profile), "--", *argv]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it by now
        raise BenchError(f"{kind} child for {spec['peer']} passed {CHILD_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise BenchError(f"{kind} child for {spec['peer']} failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"{kind} child for {spec['peer']} printed no result")
    found: dict[str, object] = json.loads(lines[-1])
    return found


def _py_spy() -> list[str]:
    beside = Path(sys.executable).parent / "py-spy"
    if not beside.exists():
        raise BenchError("--profile-dir needs py-spy: .venv/bin/pip install py-spy")
    return [str(beside)]


def recover_round(peer: str, work: Path, keys: int, seed: int) -> dict[str, object]:
    """Load `keys` keys in a writer process, SIGKILL it mid-overwrite, time the reopen."""
    path = work / f"recover-{peer}"
    spec: dict[str, object] = {"peer": peer, "path": str(path), "keys": keys, "seed": seed}
    writer = subprocess.Popen(
        _child_argv("writer", spec), stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    load_s = None
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        assert writer.stdout is not None
        for line in writer.stdout:  # "loaded N S", then "overwriting"
            if line.startswith("loaded"):
                load_s = float(line.split()[2])
            if line.startswith("overwriting") or time.monotonic() > deadline:
                break
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=60)
    if load_s is None:
        raise BenchError(f"the {peer} writer stopped before it loaded (status {writer.returncode})")
    found = _run_child("recover", spec)
    found["writer_load_s"] = load_s
    remove(path)
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; see bench/store/README.md."""
    parser = argparse.ArgumentParser(
        description="Compare the store engine with sqlite3, py-lmdb and RocksDB (rocksdict) "
        "in-process at equal durability. A table goes to stderr, one JSON object to stdout.",
    )
    add = parser.add_argument
    add("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds (default %(default)s)")
    add("--threads", type=int, default=DEFAULT_THREADS, help="threads of the threaded row")
    add("--value-bytes", type=int, action="append", help="value sizes (default 100 4096 65536)")
    add("--peer", action="append", choices=PEERS, help="peers to run (default all)")
    add("--recover-keys", type=int, default=RECOVER_KEYS, help="keys of the recovery row")
    add("--no-recover", action="store_true", help="skip the recovery row")
    add("--quick", action="store_true", help="tiny sizes and 1 round: checks that it runs")
    add("--work-dir", type=Path, default=None, help="parent of the temporary work dir")
    add("--profile-dir", type=Path, default=None,
        help="after the rounds, run ours' child once more per value size under py-spy")  # fmt: skip
    add("--report", type=Path, default=None,
        help="print the table and goals of a JSON this script printed, and exit")  # fmt: skip
    add("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.recover_keys = min(args.recover_keys, 3000)
    for name in ("rounds", "threads", "recover_keys"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for size in args.value_bytes or ():
        if size < 1:
            parser.error(f"--value-bytes must be at least 1, not {size}")
    return args


def _child_main(kind: str, spec_text: str) -> int:
    spec = json.loads(spec_text)
    if kind == "workload":
        print(json.dumps(child_workload(spec)), flush=True)
    elif kind == "writer":
        child_writer(spec)
    elif kind == "recover":
        print(json.dumps(child_recover(spec)), flush=True)
    else:
        raise BenchError(f"unknown child kind {kind!r}")
    return 0


def _versions() -> dict[str, str]:
    import sqlite3

    import lmdb

    return {
        "sqlite": sqlite3.sqlite_version,
        "lmdb": ".".join(str(part) for part in lmdb.version()),
        "py-lmdb": package_version("lmdb"),
        "rocksdict": package_version("rocksdict"),
        "postoffice": package_version("postoffice"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds; print the table to stderr and the JSON to stdout."""
    args = parse_args(argv)
    if args.child:
        return _child_main(*args.child)
    if args.report is not None:
        return _report_again(args.report)
    peers: list[str] = args.peer or list(PEERS)
    if "rocksdb" in peers and rocksdict_missing():
        say(f"error: {INSTALL_HINT}")
        return EXIT_MISSING_TOOL
    sizes = [
        sizes_for(size, quick=args.quick, threads=args.threads)
        for size in (args.value_bytes or VALUE_SIZES)
    ]
    from report import fdatasync_ms, python_loop_ms  # here: the children need none of it

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="po-peers-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        machine = {**machine_facts(), "versions": _versions(),
                   "fdatasync_ms_median": fdatasync_ms(work, 20 if args.quick else 200),
                   "python_loop_ms_at_start": python_loop_ms()}  # fmt: skip
        runs: list[dict[str, object]] = []
        for round_no in range(args.rounds):
            turn = peers[round_no % len(peers) :] + peers[: round_no % len(peers)]
            for sized in sizes:
                for peer in turn:
                    spec = {"peer": peer, "sizes": asdict(sized), "seed": 1000 + round_no,
                            "work": str(work / f"{peer}-{sized.value_bytes}")}  # fmt: skip
                    found = _run_child("workload", spec)
                    found["round"] = round_no
                    runs.append(found)
                    phases = found["phases"]
                    assert isinstance(phases, dict)
                    figures = ", ".join(
                        f"{phase} {_brief(entry)}" for phase, entry in phases.items()
                    )
                    say(f"round {round_no} {sized.value_bytes} B {peer}: {figures}")
            if not args.no_recover:
                for peer in turn:
                    found = recover_round(peer, work, args.recover_keys, 2000 + round_no)
                    say(f"round {round_no} recover {peer}: open {found['open_s']} s "
                        f"(load {found['writer_load_s']} s)")  # fmt: skip
                    runs.append({"peer": peer, "value_bytes": RECOVER_VALUE_BYTES,
                                 "round": round_no, "phases": {"recover": found}})  # fmt: skip
        profiles: dict[str, object] = {}
        if args.profile_dir is not None:
            args.profile_dir.mkdir(parents=True, exist_ok=True)
            for sized in sizes:
                out = args.profile_dir / f"ours-{sized.value_bytes}.txt"
                spec = {"peer": "ours", "sizes": asdict(sized), "seed": 3000,
                        "work": str(work / f"profile-{sized.value_bytes}")}  # fmt: skip
                _run_child("workload", spec, profile=out)
                profiles[str(sized.value_bytes)] = summarise_profile(out)
        machine["loadavg_at_end"] = os.getloadavg()
        machine["python_loop_ms_at_end"] = python_loop_ms()
    rows = summarise(runs, peers, args.threads)
    met = goals(rows)
    say(table(rows, peers))
    say(goal_lines(met))
    result = {
        "parameters": {
            "argv": sys.argv[1:], "rounds": args.rounds, "threads": args.threads, "peers": peers,
            "sizes": [asdict(sized) for sized in sizes], "batch": BATCH, "load_batch": LOAD_BATCH,
            "key_bytes": KEY_BYTES, "scan_fraction": SCAN_FRACTION,
            "recover_keys": None if args.no_recover else args.recover_keys,
            "settings": {peer: SETTINGS[peer] for peer in peers},
            "seconds": round(time.time() - started, 1),
        },
        "machine": machine, "results": rows, "goals": met, "profiles": profiles, "runs": runs,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    return 0


def _report_again(path: Path) -> int:
    """The table and goals of an earlier run's JSON, from its runs (with today's rows)."""
    try:
        before = json.loads(path.read_text())
        runs, parameters = before["runs"], before["parameters"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{path} is not a JSON this script printed: {exc}") from exc
    rows = summarise(runs, parameters["peers"], parameters["threads"])
    say(table(rows, parameters["peers"]))
    say(goal_lines(goals(rows)))
    return 0


def _brief(entry: object) -> str:
    if isinstance(entry, dict):
        return fmt(float(entry["ops_s"])) + "/s" if "ops_s" in entry else str(entry)
    return str(entry)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        say(f"error: {exc}")
        sys.exit(EXIT_RUN_FAILED)
