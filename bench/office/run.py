"""Simulated days per second of the office simulation in one process at N_NANO_SECS=0,
with 10, 100 and 500 users: the engine and its statistics alone, and with the run's event
log in a store engine as `postoffice office run --in-process` keeps it.

    python bench/office/run.py [--seconds 2] [--seed 1]

Prints one JSON object. The goal: at least 200 simulated days a second with 100 users.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import machine_facts, say  # bench/ is not a package

from postoffice.office.engine import Roster, Simulation
from postoffice.office.runlog import RunLog
from postoffice.office.tally import Tally

USERS = (10, 100, 500)
GOAL_DAYS_PER_S = 200  # with 100 users


def _roster(users: int) -> Roster:
    """explode.ini's office with `users` users (5 operators, 5 counters, 5 requests)."""
    return Roster(
        nof_users=users,
        p_serv_min=0.1,
        p_serv_max=0.9,
        n_requests=5,
        nof_workers=5,
        nof_worker_seats=5,
        nof_pause=2,
    )


def _measure(users: int, seconds: float, seed: int, log: RunLog | None) -> dict[str, float]:
    sim = Simulation(_roster(users), seed=seed)
    tally = Tally()
    days = events = 0
    started = time.perf_counter()
    cpu = time.process_time()
    while time.perf_counter() - started < seconds:
        day = sim.run_day()
        for event in day:
            tally.apply(event)
        if log is not None:
            log.append(day)
        days += 1
        events += len(day)
    wall = time.perf_counter() - started
    return {
        "days": days,
        "days_per_s": round(days / wall, 1),
        "cpu_days_per_s": round(days / (time.process_time() - cpu), 1),
        "events_per_day": round(events / days, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {"engine": {}, "engine_and_log": {}}
    for users in USERS:
        say(f"{users} users: engine and statistics")
        results["engine"][str(users)] = _measure(users, args.seconds, args.seed, None)
        with tempfile.TemporaryDirectory() as tmp:
            say(f"{users} users: with the event log")
            log = RunLog.create(Path(tmp), seed=args.seed, meta={"bench": True})
            try:
                results["engine_and_log"][str(users)] = _measure(
                    users, args.seconds, args.seed, log
                )
            finally:
                log.close()
    rate = results["engine"]["100"]["days_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "office in-process simulated days per second",
                "parameters": {"seconds": args.seconds, "seed": args.seed, "users": USERS},
                "machine": machine_facts(),
                "results": results,
                "goal_days_per_s_100_users": GOAL_DAYS_PER_S,
                "goal_met": rate >= GOAL_DAYS_PER_S,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
