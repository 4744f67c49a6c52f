"""Bus benchmark: our channel library against iceoryx2, pyzmq (ipc://) and zenoh, two
processes each, in one run; prints one JSON object with medians over rounds and ratios.

    bench/bus/.venv/bin/python bench/bus/run.py [--rounds 5] [--only ours --only pyzmq]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for benchkit

import benchkit
from benchkit import (
    EXIT_RUN_FAILED,
    BenchError,
    children_cpu_seconds,
    machine_busy_seconds,
    raise_on_sigterm,
    say,
)
from systems import (
    Barrier,
    Floor,
    Iceoryx2,
    Ours,
    Shape,
    System,
    Zenoh,
    Zmq,
)

from postoffice.bus import BusLocation

FORK: Final = multiprocessing.get_context("fork")
#: Our library: the flood's publisher batching with publish_many() and its reader
#: sleeping in wait(), the same with the reader spinning, and with one publish_bytes()
#: per message (reader sleeping).
OURS: Final = ("ours", "ours_spinning_reader", "ours_single_publish")
SMALL: Final = 64
LARGE: Final = 1 << 20
#: The PyPI distribution each peer comes from (what `import` name it has).
PEER_MODULES: Final = {"iceoryx2": "iceoryx2", "pyzmq": "zmq", "zenoh": "zenoh"}
PEER_DISTRIBUTIONS: Final = {"iceoryx2": "iceoryx2", "pyzmq": "pyzmq", "zenoh": "eclipse-zenoh"}
#: The first tenth of each ping-pong is warm-up and left out of the figures.
WARM_UP_FRACTION: Final = 0.1
#: A pair that has not finished after this long is killed and reported as failed.
PAIR_TIMEOUT_S: Final = 120.0
#: The goals the figures are read against.
GOAL_POLLING_US: Final = 5.0
GOAL_BLOCKING_US: Final = 15.0
GOAL_SMALL_RATE_OVER_PYZMQ: Final = 1.0
GOAL_LARGE_RATE_OVER_ICEORYX2: Final = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Measure:
    """One measurement: a ping-pong (polling or blocking) or a one-way flood."""

    name: str
    shape: Shape
    blocking: bool | None  # None: a flood

    @property
    def flood(self) -> bool:
        return self.blocking is None


MEASURES: Final = (
    Measure(name="pingpong_64B_polling", shape=Shape(payload=SMALL, depth=64), blocking=False),
    Measure(name="pingpong_64B_blocking", shape=Shape(payload=SMALL, depth=64), blocking=True),
    Measure(name="flood_64B", shape=Shape(payload=SMALL, depth=256), blocking=None),
    Measure(name="flood_1MiB", shape=Shape(payload=LARGE, depth=8), blocking=None),
)


def _child(side: Callable[[Barrier], Any], ready: Barrier, report: Any, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        result = side(ready)
    except BaseException as exc:
        ready.abort()  # type: ignore[attr-defined]
        if report is not None:
            report.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    if report is not None:
        report.send(("ok", result))


def run_pair(
    measured: Callable[[Barrier], Any], other: Callable[[Barrier], Any], cpus: list[int] | None
) -> tuple[Any, dict[str, float]]:
    """Run the two sides in two forked processes; the measured side's result, and the
    wall time, this pair's CPU time and the CPU time the rest of the machine used."""
    ready = FORK.Barrier(2)
    receiving, sending = FORK.Pipe(duplex=False)
    first_cpu, second_cpu = (cpus[0], cpus[1]) if cpus else (None, None)
    busy, ours_cpu, start = machine_busy_seconds(), children_cpu_seconds(), time.monotonic()
    processes = [
        FORK.Process(target=_child, args=(measured, ready, sending, first_cpu)),
        FORK.Process(target=_child, args=(other, ready, None, second_cpu)),
    ]
    for process in processes:
        process.start()
    sending.close()
    try:
        if not receiving.poll(PAIR_TIMEOUT_S):
            raise BenchError(f"no result within {PAIR_TIMEOUT_S} s")
        status, result = receiving.recv()
        for process in processes:
            process.join(PAIR_TIMEOUT_S)
    except EOFError as exc:
        raise BenchError("the measured side died without a result") from exc
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()  # by the pid of the process this function started
                process.join(5)
        receiving.close()
    if status != "ok":
        raise BenchError(result)
    wall = time.monotonic() - start
    pair_cpu = children_cpu_seconds() - ours_cpu
    others_cpu = max(0.0, machine_busy_seconds() - busy - pair_cpu)
    cost = {"wall_s": round(wall, 3), "pair_cpu_s": round(pair_cpu, 3),
            "other_cpu_s": round(others_cpu, 3)}  # fmt: skip
    return result, cost


def measure_once(
    system: System, measure: Measure, args: argparse.Namespace, scratch: Path, tag: str
) -> dict[str, Any]:
    """One run of one measurement for one system: its figures and what it cost."""
    setup = system.prepare(scratch, tag, measure.shape)
    if measure.flood:
        count = args.messages if measure.shape.payload == SMALL else args.large_messages
        (seconds, timed, lost), cost = run_pair(
            lambda ready: system.receive(setup, count, ready),
            lambda ready: system.send(setup, count, ready),
            args.cpus,
        )
        rate = timed / seconds
        gb_per_s = rate * measure.shape.payload / 1e9
        return {"messages_per_s": round(rate), "gb_per_s": round(gb_per_s, 3),
                "messages_timed": timed, "messages_lost": lost, **cost}  # fmt: skip
    blocking = bool(measure.blocking)
    samples, cost = run_pair(
        lambda ready: system.ping(setup, args.pings, blocking, ready),
        lambda ready: system.echo(setup, args.pings, blocking, ready),
        args.cpus,
    )
    warm = sorted(samples[int(len(samples) * WARM_UP_FRACTION) :])
    return {
        "median_one_way_us": round(statistics.median(warm) / 2000, 3),
        "p99_one_way_us": round(warm[int(len(warm) * 0.99)] / 2000, 3),
        **cost,
    }


def available(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The peers whose module is installed here, and why each other one is left out."""
    present, missing = [], {}
    for name in names:
        if name in OURS or name == "floor":
            present.append(name)
        elif importlib.util.find_spec(PEER_MODULES[name]) is None:
            missing[name] = (
                f"module {PEER_MODULES[name]!r} not installed (pip install "
                f"{PEER_DISTRIBUTIONS[name]}; see bench/bus/README.md)"
            )
        else:
            present.append(name)
    return present, missing


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def summarize(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Medians per system and measurement, and the medians of the per-round ratios
    ours / peer (for latency lower is better for ours, for rates higher)."""
    figures: dict[str, dict[str, Any]] = {}
    keys = ("median_one_way_us", "p99_one_way_us", "messages_per_s", "gb_per_s",
            "messages_lost", "other_cpu_s")  # fmt: skip
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        if "error" not in run:
            grouped.setdefault((run["system"], run["measure"]), []).append(run)
    for (system, measure), picked in grouped.items():
        entry = {key: _median([run[key] for run in picked]) for key in keys if key in picked[0]}
        entry["rounds"] = len(picked)
        figures.setdefault(system, {})[measure] = entry
    ratios: dict[str, dict[str, float]] = {}
    for (system, measure), picked in grouped.items():
        if system in OURS:
            continue
        key = "median_one_way_us" if "median_one_way_us" in picked[0] else "messages_per_s"
        for variant in OURS:
            ours = {run["round"]: run[key] for run in grouped.get((variant, measure), [])}
            per_round = [ours[run["round"]] / run[key] for run in picked if run["round"] in ours]
            if per_round:
                named = ratios.setdefault(f"{variant}_over_{system}", {})
                named[f"{measure}.{key}"] = _median(per_round)
    return figures, ratios


def judge(figures: dict[str, Any], ratios: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal, what was measured against it, and whether it is met."""
    ours = figures.get("ours", {})

    def latency(measure: str) -> float | None:
        entry = ours.get(measure)
        return None if entry is None else float(entry["median_one_way_us"])

    # (goal, measured, threshold, whether the figure must stay at or below it)
    goals: list[tuple[str, float | None, float, bool]] = [
        ("64 B one-way latency, polling, median (us)", latency("pingpong_64B_polling"),
         GOAL_POLLING_US, True),
        ("64 B one-way latency, blocking, median (us)", latency("pingpong_64B_blocking"),
         GOAL_BLOCKING_US, True),
    ]  # fmt: skip
    hows = ("publish_many, read_all + wait", "publish_many, read_all spinning",
            "publish_bytes, read_all + wait")  # fmt: skip
    for variant, how in zip(OURS, hows, strict=True):
        goals += [
            (f"64 B messages/s, ours ({how}) / pyzmq",
             ratios.get(f"{variant}_over_pyzmq", {}).get("flood_64B.messages_per_s"),
             GOAL_SMALL_RATE_OVER_PYZMQ, False),
            (f"1 MiB GB/s, ours ({how}) / iceoryx2",
             ratios.get(f"{variant}_over_iceoryx2", {}).get("flood_1MiB.messages_per_s"),
             GOAL_LARGE_RATE_OVER_ICEORYX2, False),
        ]  # fmt: skip
    return [
        {"goal": name, "target": f"{'<=' if at_most else '>='} {threshold}", "measured": value,
         "met": None if value is None else (value <= threshold if at_most else value >= threshold)}
        for name, value, threshold, at_most in goals
    ]  # fmt: skip


def make_system(name: str, scratch: Path) -> System:
    # Each variant of ours is a bus session of its own, so their channel ids never meet.
    systems: dict[str, Callable[[], System]] = {
        "ours": lambda: Ours(BusLocation.new(scratch)),
        "ours_spinning_reader": lambda: Ours(BusLocation.new(scratch), spinning_reader=True),
        "ours_single_publish": lambda: Ours(BusLocation.new(scratch), single_publish=True),
        "iceoryx2": Iceoryx2, "pyzmq": Zmq, "zenoh": Zenoh, "floor": Floor,
    }  # fmt: skip
    return systems[name]()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each measurement")
    parser.add_argument("--pings", type=int, default=20_000, help="round trips per ping-pong")
    parser.add_argument("--messages", type=int, default=200_000, help="64 B messages per flood")
    parser.add_argument("--large-messages", type=int, default=10_000,
                        help="1 MiB messages per flood")  # fmt: skip
    parser.add_argument("--only", action="append", choices=[*OURS, *PEER_MODULES, "floor"],
                        help="run only these systems (repeatable)")  # fmt: skip
    parser.add_argument("--measure", action="append", choices=[m.name for m in MEASURES],
                        help="run only these measurements (repeatable)")  # fmt: skip
    parser.add_argument("--pin", action="store_true",
                        help="pin the measured side to CPU 0 and the other to CPU 1")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for option in ("pings", "messages", "large_messages"):
        if getattr(args, option) < 2:
            parser.error(f"--{option.replace('_', '-')} must be at least 2")
    args.cpus = [0, 1] if args.pin else None
    if args.pin and not {0, 1} <= os.sched_getaffinity(0):
        parser.error("--pin needs CPUs 0 and 1")
    signal.signal(signal.SIGTERM, raise_on_sigterm)

    names, skipped = available(args.only or [*OURS, *PEER_MODULES, "floor"])
    for name, why in skipped.items():
        say(f"skipping {name}: {why}")
    measures = [m for m in MEASURES if not args.measure or m.name in args.measure]
    machine = benchkit.machine_facts()
    started = datetime.datetime.now(datetime.UTC)
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    scratch = Path(tempfile.mkdtemp(prefix="po-bus-peers-", dir=base))
    runs: list[dict[str, Any]] = []
    try:
        systems = {name: make_system(name, scratch) for name in names}
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for measure in measures:
                for name in order:
                    if not measure.flood and not systems[name].pingpong:
                        continue
                    tag = f"r{round_index}-{measure.name}-{name}"
                    tag = ("pp-" if not measure.flood else "fl-") + tag
                    say(f"round {round_index + 1}/{args.rounds}: {measure.name} {name}")
                    entry: dict[str, Any] = {"round": round_index, "system": name,
                                             "measure": measure.name}  # fmt: skip
                    try:
                        entry |= measure_once(systems[name], measure, args, scratch, tag)
                    except BenchError as exc:
                        say(f"  failed: {exc}")
                        entry["error"] = str(exc)
                    runs.append(entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures, ratios = summarize(runs)
    failures = [run for run in runs if "error" in run]
    print(json.dumps({
        "benchmark": "bus-peers",
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1),
        "parameters": {"rounds": args.rounds, "pings": args.pings, "messages": args.messages,
                       "large_messages": args.large_messages, "pinned": args.pin,
                       "measures": {m.name: {"payload_bytes": m.shape.payload,
                                             "depth": m.shape.depth} for m in measures}},
        "machine": machine | {"loadavg_at_end": os.getloadavg()},
        "peers": {name: benchkit.package_version(PEER_DISTRIBUTIONS[name])
                  for name in names if name in PEER_DISTRIBUTIONS},
        "skipped": skipped,
        "results": figures,
        "ratios": ratios,
        "goals": judge(figures, ratios),
        "failures": failures,
        "runs": runs,
    }, indent=2))  # fmt: skip
    return EXIT_RUN_FAILED if failures else 0


if __name__ == "__main__":
    sys.exit(main())
