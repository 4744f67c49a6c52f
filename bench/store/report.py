"""The figures: medians, paired ratios, goals, the table, and the machine they were taken on."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from benchkit import (
    command_output,
    package_version,
)
from common import Run

from postoffice.core import sysinfo


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 4)


def summarise(runs: Sequence[Run]) -> list[dict[str, object]]:
    """Medians per (part, phase, test, scenario) and the medians of the paired ratios."""
    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.part, run.phase, run.test, run.scenario), []).append(run)
    rows: list[dict[str, object]] = []
    for (part, phase, test, scenario), mine in groups.items():
        peer = "lmdb" if part == "engine" else "redis"
        row: dict[str, object] = {"part": part, "phase": phase, "test": test, "scenario": scenario}
        for contender in (peer, "ours"):
            picked = [run for run in mine if run.contender == contender]
            if not picked:
                continue
            entry: dict[str, object] = {"ops_s": _median([run.ops_s for run in picked])}
            for name in ("p50_ms", "p99_ms", "server_cpu_us_per_op", "client_cpu_us_per_op"):
                values = [getattr(run, name) for run in picked if getattr(run, name) is not None]
                entry[name] = _median(values) if values else None
            group = [run.ops / run.fsyncs for run in picked if run.fsyncs]
            if group:
                entry["ops_per_fsync"] = _median(group)
            splits = [run.server_cpu_us_per_op_by_process for run in picked]
            if all(splits) and splits:
                entry["server_cpu_us_per_op_by_process"] = {
                    name: _median([split[name] for split in splits if split])
                    for name in splits[0] or {}
                }
            row[contender] = entry
        by_round: dict[int, dict[str, Run]] = {}
        for run in mine:
            by_round.setdefault(run.round, {})[run.contender] = run
        ratios = [
            pair["ours"].ops_s / pair[peer].ops_s
            for pair in by_round.values()
            if "ours" in pair and peer in pair and pair[peer].ops_s > 0
        ]
        row["peer"] = peer
        row["rounds"] = len(ratios)
        row["ratio_ops_ours_over_peer"] = _median(ratios) if ratios else None
        row["max_other_cpu_s"] = max(run.other_cpu_s for run in mine)
        rows.append(row)
    return rows


def goals(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The spec's goals: >= 1.0 x redis on GET and on durable PUT, per driver and scenario."""
    found: list[dict[str, object]] = []
    for row in rows:
        if row["part"] == "engine" or row["phase"] != "durable":
            continue
        ratio = row["ratio_ops_ours_over_peer"]
        what = "GET" if row["test"] == "GET" else "durable PUT"
        found.append(
            {
                "goal": f"{what} >= 1.0 x redis ({row['part']}, {row['scenario']})",
                "ratio": ratio,
                "met": isinstance(ratio, float) and ratio >= 1.0,
            }
        )
    return found


def _fmt_ops(value: object) -> str:
    return f"{value:,.0f}" if isinstance(value, float | int) else "-"


def _fmt_ms(entry: object) -> str:
    if not isinstance(entry, dict):
        return "-"
    p50, p99 = entry.get("p50_ms"), entry.get("p99_ms")
    if not isinstance(p50, float) or not isinstance(p99, float):  # the engine part: none
        return "-"
    return f"{p50:.3f} / {p99:.3f}"


def table(rows: Sequence[dict[str, object]]) -> str:
    """The results as a Markdown table (progress output; the JSON holds the same)."""
    labels = {
        ("client", "durable", "GET"): "GET",
        ("client", "durable", "PUT"): "PUT durable (always vs appendfsync always)",
        ("client", "interval", "GET"): "GET (interval servers)",
        ("client", "interval", "PUT"): "PUT interval (interval vs appendfsync everysec)",
        ("rb", "durable", "GET"): "GET",
        ("rb", "durable", "SET"): "SET durable (always vs appendfsync always)",
        ("rb", "interval", "GET"): "GET (interval servers)",
        ("rb", "interval", "SET"): "SET interval (interval vs appendfsync everysec)",
        ("rb-embedded", "durable", "GET"): "GET",
        ("rb-embedded", "durable", "SET"): "SET durable (always vs appendfsync always)",
        ("rb-embedded", "interval", "GET"): "GET (interval servers)",
        ("rb-embedded", "interval", "SET"): "SET interval (interval vs appendfsync everysec)",
    }
    head = (
        "| part | test | load | peer ops/s | ours ops/s | ours/peer | peer p50 / p99 ms "
        "| ours p50 / p99 ms | peer CPU µs/op | ours CPU µs/op |"
    )
    lines = [head, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        part, phase, test = str(row["part"]), str(row["phase"]), str(row["test"])
        peer_name = str(row["peer"])
        peer, ours = row.get(peer_name, {}), row.get("ours", {})
        ratio = row["ratio_ops_ours_over_peer"]
        cpu_key = "client_cpu_us_per_op" if part == "engine" else "server_cpu_us_per_op"

        def cpu(entry: object, key: str = cpu_key) -> str:
            value = entry.get(key) if isinstance(entry, dict) else None
            return f"{value:.1f}" if isinstance(value, float) else "-"

        label = labels.get((part, phase, test), test)
        driver = {
            "client": "AsyncClient vs redis-py",
            "rb": "redis-benchmark, --store",
            "rb-embedded": "redis-benchmark, --store-dir",
            "engine": "Store vs raw LMDB",
        }[part]
        peer_ops = peer.get("ops_s") if isinstance(peer, dict) else None
        ours_ops = ours.get("ops_s") if isinstance(ours, dict) else None
        shown = f"**{ratio:.2f}**" if isinstance(ratio, float) else "-"
        lines.append(
            f"| {driver} | {label} | {row['scenario']} | {_fmt_ops(peer_ops)} "
            f"| {_fmt_ops(ours_ops)} | {shown} | {_fmt_ms(peer)} | {_fmt_ms(ours)} "
            f"| {cpu(peer)} | {cpu(ours)} |"
        )
    return "\n".join(lines)


def human_line(run: Run) -> str:
    """One progress line per run, for the operator watching stderr."""
    latency = ""
    if run.p50_ms is not None and run.p99_ms is not None:
        latency = f" p50 {run.p50_ms:.3f} p99 {run.p99_ms:.3f} ms"
    server = "" if run.server_cpu_us_per_op is None else f" server {run.server_cpu_us_per_op:.1f}"
    client = "" if run.client_cpu_us_per_op is None else f" client {run.client_cpu_us_per_op:.1f}"
    if run.fsyncs:
        client += f" | {run.ops / run.fsyncs:.1f} ops/fsync"
    return (
        f"[{run.part} {run.phase} {run.test} {run.scenario} round {run.round}] "
        f"{run.contender:<5} {run.ops_s:>10,.0f} ops/s{latency} |"
        f" cpu us/op{server}{client} | {run.seconds:.2f} s, other {run.other_cpu_s:.1f} cpu-s"
    )


# --- machine ------------------------------------------------------------------------------


def fdatasync_ms(work: Path, count: int = 200) -> float:
    """Median time of a 128-byte append plus fdatasync in the work dir, in ms: the cost
    under every durable write on this disk."""
    path = work / "fsync-probe"
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(count):
            began = time.perf_counter()
            os.write(fd, b"x" * 128)
            os.fdatasync(fd)
            times.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    return round(statistics.median(times) * 1e3, 4)


def python_loop_ms() -> float:
    """Milliseconds this machine takes for a fixed pure-Python loop (best of 3): a speed
    probe, taken at the start and the end, that shows a host slowing its VM mid-run."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - began)
    return round(best * 1e3, 1)


def _src_fingerprint(repo: Path) -> str:
    """A short hash of the uncommitted changes under src/ (diff and new files), so a run
    on a dirty tree can be tied to the exact code it measured."""
    digest = hashlib.sha256()
    diff = subprocess.run(
        ["git", "-C", str(repo), "diff", "HEAD", "--", "src"], capture_output=True, check=False
    )
    digest.update(diff.stdout)
    listed = command_output(
        ["git", "-C", str(repo), "ls-files", "--others", "--exclude-standard", "src"]
    )
    for name in sorted((listed or "").splitlines()):
        with contextlib.suppress(OSError):
            digest.update(name.encode() + b"\0" + (repo / name).read_bytes())
    return digest.hexdigest()[:12]


def machine_facts(redis_server: str, work: Path) -> dict[str, object]:
    """What the figures depend on: cores, CPU, kernel, disk, versions, our commit."""
    repo = Path(__file__).resolve().parents[2]
    commit = command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    changes = command_output(["git", "-C", str(repo), "status", "--porcelain", "src"])
    if commit and changes:
        commit += "+dirty"
    return {
        "src_changes_sha256": _src_fingerprint(repo) if changes else None,
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": sysinfo.snapshot(root="/").cpu.model or platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": command_output([redis_server, "--version"]) or "unknown",
        "versions": {
            name: package_version(name)
            for name in ("postoffice", "redis", "hiredis", "lmdb", "uvloop")
        },
        "git_commit": commit or "unknown",
        "work_dir_filesystem": (
            command_output(["df", "--output=source,fstype", str(work)]) or "unknown"
        ).splitlines()[-1],
        "fdatasync_ms_median": fdatasync_ms(work),
        "python_loop_ms_at_start": python_loop_ms(),
        "loadavg_at_start": os.getloadavg(),
    }
