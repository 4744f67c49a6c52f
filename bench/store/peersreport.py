"""The figures of `peers.py`: medians over rounds, ours against each peer, the goals, the
Markdown table and the py-spy profiles' summary per phase."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from peerchild import PHASE_PREFIX

#: The rows of the table: (phase, figure, what it is, higher is better, goal).
#: A goal "ahead" means ours beats sqlite and rocksdb; "lmdb" adds: gets within
#: GET_LMDB_FACTOR of raw LMDB; "-" is a figure without a goal.
ROWS: Final = (
    ("put_durable_x1", "ops_s", "durable put, 1 thread (puts/s)", True, "ahead"),
    ("put_durable_threads", "ops_s", "durable put, {threads} threads (puts/s)", True, "ahead"),
    ("batch_durable", "ops_s", "durable batches of 100 (puts/s)", True, "ahead"),
    ("put_interval_x1", "ops_s", "put, survives a process crash, 1 thread (puts/s)", True,
     "ahead"),
    ("get", "ops_s", "random get, warm (gets/s)", True, "lmdb"),
    ("get", "cpu_us_per_op", "random get, warm (CPU µs per get)", False, "lmdb"),
    ("scan", "ops_s", "10 % range scan (keys/s)", True, "ahead"),
    ("scan", "cpu_us_per_op", "10 % range scan (CPU µs per key)", False, "ahead"),
    ("scan", "seconds", "10 % range scan (s)", False, "-"),
    ("recover", "open_s", "open + first get after kill -9, 1M keys (s)", False, "ahead"),
    ("disk_per_live", None, "disk / live bytes, after 2 overwrites", False, "ahead"),
    ("disk_per_live_compacted", None, "disk / live bytes, compacted", False, "ahead"),
    ("load", "ops_s", "load, batches of 1000, interval (puts/s)", True, "-"),
    ("compact", "seconds", "compaction (s)", False, "-"),
    ("write_amplification", None, "bytes written / bytes put (load + 2 overwrites)", False, "-"),
    ("rss_anon_mib", None, "anonymous memory after the gets (MiB over the start)", False, "-"),
)  # fmt: skip
#: The goal for gets: at least 1 / this of raw LMDB's gets/s.
GET_LMDB_FACTOR: Final = 1.5
GOAL_PEERS: Final = ("sqlite", "rocksdb")


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 4)


def _figure(run: dict[str, object], phase: str, figure: str | None) -> float | None:
    phases = run["phases"]
    assert isinstance(phases, dict)
    entry = phases.get(phase)
    if entry is None:
        return None
    value = entry if figure is None else entry.get(figure)
    return None if value is None else float(value)


def summarise(
    runs: Sequence[dict[str, object]], peers: Sequence[str], threads: int
) -> list[dict[str, object]]:
    """One row per (value size, row of ROWS): each peer's median over rounds, and ours
    over each peer ("ahead" > 1 means ours better, whichever way the figure goes)."""
    rows: list[dict[str, object]] = []
    sizes = sorted({int(str(run["value_bytes"])) for run in runs})
    for size in sizes:
        for phase, figure, label, higher, goal in ROWS:
            medians: dict[str, float] = {}
            for peer in peers:
                found = [
                    _figure(run, phase, figure)
                    for run in runs
                    if run["peer"] == peer and run["value_bytes"] == size
                ]
                picked = [value for value in found if value is not None]
                if picked:
                    medians[peer] = _median(picked)
            if not medians:
                continue
            ours = medians.get("ours")
            ahead: dict[str, float | None] = {}
            for peer, value in medians.items():
                if peer == "ours" or ours is None:
                    continue
                if higher:
                    ahead[peer] = round(ours / value, 3) if value else None
                else:
                    ahead[peer] = round(value / ours, 3) if ours else None
            rows.append({
                "value_bytes": size, "phase": phase, "figure": figure,
                "row": label.format(threads=threads), "higher_is_better": higher, "goal": goal,
                "rounds": max(len([r for r in runs if r["peer"] == p and r["value_bytes"] == size])
                              for p in peers),
                "median": medians, "ours_ahead_of": ahead,
            })  # fmt: skip
    return rows


def goals(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Each goal row: ahead of sqlite and rocksdb (> 1.0 x), and gets within 1.5 x of lmdb."""
    found: list[dict[str, object]] = []
    for row in rows:
        if row["goal"] == "-":
            continue
        ahead = row["ours_ahead_of"]
        assert isinstance(ahead, dict)
        checks = {peer: ahead[peer] for peer in GOAL_PEERS if peer in ahead}
        met = all(value is not None and value > 1.0 for value in checks.values())
        entry: dict[str, object] = {
            "value_bytes": row["value_bytes"], "row": row["row"], "ahead_of": checks,
        }  # fmt: skip
        if row["goal"] == "lmdb" and "lmdb" in ahead:
            versus = ahead["lmdb"]
            entry["ours_over_lmdb"] = versus
            met = met and versus is not None and versus >= 1 / GET_LMDB_FACTOR
        entry["met"] = met
        found.append(entry)
    return found


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(rows: Sequence[dict[str, object]], peers: Sequence[str]) -> str:
    """The medians as a Markdown table, with ours' lead over each peer."""
    others = [peer for peer in peers if peer != "ours"]
    head = ["value", "row", *peers, *[f"ours vs {peer}" for peer in others]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "--:|" * (len(head) - 2)]
    for row in rows:
        median = row["median"]
        ahead = row["ours_ahead_of"]
        assert isinstance(median, dict)
        assert isinstance(ahead, dict)
        cells = [size_label(int(str(row["value_bytes"]))), str(row["row"])]
        cells += [fmt(median.get(peer)) for peer in peers]
        cells += ["-" if ahead.get(peer) is None else f"{ahead[peer]:.2f} x" for peer in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def size_label(size: int) -> str:
    return f"{size >> 10} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def summarise_profile(path: Path, top: int = 12) -> dict[str, object]:
    """Per phase of the child (the frames named _phase_*): its samples and its top
    innermost frames; and the same for the samples of no phase (other threads, setup)."""
    by_phase: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        phase = next(
            (frame.split(" ")[0] for frame in frames if frame.startswith(PHASE_PREFIX)), "(none)"
        )
        phase = phase.removesuffix("_worker")
        inner = frames[-1]
        by_phase.setdefault(phase, {})
        by_phase[phase][inner] = by_phase[phase].get(inner, 0) + int(count_text)
        totals[phase] = totals.get(phase, 0) + int(count_text)
    summary: dict[str, object] = {}
    for phase, own in by_phase.items():
        ranked = sorted(own.items(), key=lambda item: -item[1])[:top]
        summary[phase] = {
            "samples": totals[phase],
            "top_own_pct": {frame: round(100 * n / totals[phase], 1) for frame, n in ranked},
        }
    return summary


def goal_lines(met: Sequence[dict[str, object]]) -> str:
    """One line per goal: met or not, and the factors it was judged on."""
    lines = []
    for goal in met:
        verdict = "met" if goal["met"] else "NOT met"
        size = size_label(int(str(goal["value_bytes"])))
        versus = f" lmdb {goal['ours_over_lmdb']}" if "ours_over_lmdb" in goal else ""
        lines.append(f"goal {verdict}: {size} {goal['row']} {goal['ahead_of']}{versus}")
    return "\n".join(lines)
