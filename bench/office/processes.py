"""Simulated days per second of `postoffice office run` as separate processes (the
director, a bus server, the ticket issuer, the operators, the users manager and the user
processes) at N_NANO_SECS=0 with 10, 100 and 500 users, beside the same run in one
process (--in-process) for the ratio; with the wall time, the CPU time and the peak RSS
summed over every process of the run.

    python bench/office/processes.py [--seed 1] [--repeat 3]

Prints one JSON object. The goals: at least 10 simulated days a second with 100 users,
and 500 users under 1 GiB of RSS in all.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import machine_facts, say  # bench/ is not a package

GOAL_DAYS_PER_S = 10  # with 100 users
GOAL_RSS_BYTES = 1 << 30  # with 500 users
# users -> (days simulated, users per process): each run lasts about a second or more
CASES = {10: (100, 1), 100: (30, 1), 500: (10, 25)}
SAMPLE_S = 0.05


def _env(users: int, days: int) -> dict[str, str]:
    """explode.ini's office (5 operators, 5 counters, 5 requests, P_SERV 0.1..0.9) with
    `users` users, unpaced, for `days` days whatever the queues."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTOFFICE_OFFICE_")}
    env.update(
        POSTOFFICE_OFFICE_NOF_USERS=str(users),
        POSTOFFICE_OFFICE_SIM_DURATION=str(days),
        POSTOFFICE_OFFICE_N_NANO_SECS="0",
        POSTOFFICE_OFFICE_EXPLODE_THRESHOLD="10000000",
    )
    return env


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, todo = [root], [root]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found.extend(children)
        todo.extend(children)
    return found


def _hwm_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _RssWatch(threading.Thread):
    """Samples every process of the run: each one's peak RSS (VmHWM) as last seen, and
    the largest sum of their PSS (shared pages divided among the processes sharing them:
    the memory the run really takes, as forked user processes share most of theirs)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[int, int] = {}
        self.pss = 0
        self.most = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_S):
            tree = _tree(self.root)
            self.most = max(self.most, len(tree))
            for pid in tree:
                self.peaks[pid] = max(self.peaks.get(pid, 0), _hwm_bytes(pid))
            self.pss = max(self.pss, sum(_pss_bytes(pid) for pid in tree))


def _measure(users: int, days: int, per_process: int, seed: int, in_process: bool) -> dict:
    mode = ["--in-process"] if in_process else ["--users-per-process", str(per_process)]
    with tempfile.TemporaryDirectory() as data:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "postoffice", "office", "run", "--config", "explode",
                "--seed", str(seed), "--json", "--data-dir", data, *mode,
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(users, days),
        )  # fmt: skip
        watch = _RssWatch(proc.pid)
        watch.start()
        out, err = proc.communicate(timeout=600)
        wall = time.perf_counter() - started
        watch.done.set()
        watch.join()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"the run failed: {err}")
    lines = [json.loads(line) for line in out.splitlines()]
    end = next(line for line in lines if line["type"] == "end")
    timing = lines[-1]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "days": end["days"],
        "days_per_s": round(end["days"] / timing["elapsed_s"], 1),
        "simulation_s": timing["elapsed_s"],
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "processes": watch.most,
        "peak_rss_mib_summed": round(sum(watch.peaks.values()) / 2**20, 1),
        "peak_pss_mib_summed": round(watch.pss / 2**20, 1),
        "users_per_process": None if in_process else per_process,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is kept")
    args = parser.parse_args()
    results: dict[str, dict[str, dict]] = {"processes": {}, "in_process": {}}
    for users, (days, per_process) in CASES.items():
        for key, in_process in (("processes", False), ("in_process", True)):
            say(f"{users} users, {key}")
            runs = [
                _measure(users, days, per_process, args.seed, in_process)
                for _ in range(args.repeat)
            ]
            results[key][str(users)] = max(runs, key=lambda r: r["days_per_s"])
    for users in CASES:
        apart, alone = results["processes"][str(users)], results["in_process"][str(users)]
        apart["in_process_over_processes"] = round(alone["days_per_s"] / apart["days_per_s"], 1)
    rate = results["processes"]["100"]["days_per_s"]
    rss = results["processes"]["500"]["peak_rss_mib_summed"] * 2**20
    print(
        json.dumps(
            {
                "benchmark": "office multi-process simulated days per second",
                "parameters": {"seed": args.seed, "repeat": args.repeat, "cases": CASES},
                "machine": machine_facts(),
                "results": results,
                "goal_days_per_s_100_users": GOAL_DAYS_PER_S,
                "goal_rss_bytes_500_users": GOAL_RSS_BYTES,
                "goal_met": rate >= GOAL_DAYS_PER_S and rss < GOAL_RSS_BYTES,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
