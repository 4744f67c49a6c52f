"""The figures: medians, paired ratios, goals, and the machine they were taken on."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

from benchkit import (
    command_output,
    cpu_model,
    package_version,
)
from common import CONTENDERS, LARGE_KINDS
from contenders import Run


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _paired_ratio(
    runs: Sequence[Run], workload: str, top: str, bottom: str, field: str
) -> float | None:
    """Median over rounds of top/bottom, each ratio from runs of the same round."""
    by_round: dict[int, dict[str, Run]] = {}
    for run in runs:
        if run.workload == workload:
            by_round.setdefault(run.round, {})[run.contender] = run
    ratios = [
        getattr(pair[top], field) / getattr(pair[bottom], field)
        for pair in by_round.values()
        if top in pair and bottom in pair
    ]
    return _median(ratios)


def _paired_write_rate(runs: Sequence[Run], workload: str) -> float | None:
    """Median over rounds of ours_framed's disk write rate (all it wrote: patches and
    output) over dd's: 1.0 is the disk's limit for the bytes written."""
    rates = []
    for mine in runs:
        if mine.workload != workload or mine.contender != "ours_framed":
            continue
        floor = [
            r
            for r in runs
            if r.workload == workload and r.contender == "disk" and r.round == mine.round
        ]
        if not floor or mine.disk_written_mb is None or floor[0].disk_written_mb is None:
            continue
        ours = mine.disk_written_mb / mine.seconds
        dd = floor[0].disk_written_mb / floor[0].seconds
        rates.append(round(ours / dd, 3))
    return _median(rates)


def summarise(runs: Sequence[Run], workloads: Sequence[str]) -> dict[str, object]:
    """Medians per workload and contender, and the paired ratios."""
    summary: dict[str, object] = {}
    for workload in workloads:
        field = "files_per_s" if workload == "small" else "mb_per_s"
        mine = [run for run in runs if run.workload == workload]
        contenders: dict[str, object] = {}
        for contender in CONTENDERS:
            picked = [run for run in mine if run.contender == contender]
            if not picked:
                continue
            contenders[contender] = {
                field: _median([getattr(run, field) for run in picked]),
                "seconds": _median([run.seconds for run in picked]),
                "server_cpu_s": _median(
                    [run.server_cpu_s for run in picked if run.server_cpu_s is not None]
                ),
                "bench_cpu_s": _median([run.bench_cpu_s for run in picked]),
                "assembly_s": _median(
                    [run.assembly_s for run in picked if run.assembly_s is not None]
                ),
                "max_other_cpu_s": max(run.other_cpu_s for run in picked),
                "disk_written_mb": _median(
                    [run.disk_written_mb for run in picked if run.disk_written_mb is not None]
                ),
                "disk_busy_s": _median(
                    [run.disk_busy_s for run in picked if run.disk_busy_s is not None]
                ),
                "disk_flushes": _median(
                    [run.disk_flushes for run in picked if run.disk_flushes is not None]
                ),
                "load_avg_1m": [run.load_avg_1m for run in picked],
                "rounds": len(picked),
            }
        ratios = {
            "ours_over_limit": _paired_ratio(mine, workload, "ours", "limit", field),
            "ours_over_limit_py": _paired_ratio(mine, workload, "ours", "limit_py", field),
            "ours_over_peer": _paired_ratio(mine, workload, "ours", "peer", field),
            "ours_via_part_over_ours": _paired_ratio(
                mine, workload, "ours_via_part", "ours", field
            ),
            "ours_via_part_over_limit": _paired_ratio(
                mine, workload, "ours_via_part", "limit", field
            ),
            "ours_framed_over_limit": _paired_ratio(mine, workload, "ours_framed", "limit", field),
            "ours_framed_over_peer": _paired_ratio(mine, workload, "ours_framed", "peer", field),
            "ours_framed_over_ours": _paired_ratio(mine, workload, "ours_framed", "ours", field),
            "ours_framed_over_disk": _paired_ratio(mine, workload, "ours_framed", "disk", field),
            "ours_framed_write_rate_over_disk": _paired_write_rate(mine, workload),
        }
        summary[workload] = {
            "unit": field,
            "contenders": contenders,
            "ratios": {k: v for k, v in ratios.items() if v is not None},
        }
    return summary


def goals(summary: dict[str, object]) -> list[dict[str, object]]:
    """The issue's goals, met or not, from the paired ratios."""
    rows: list[dict[str, object]] = []

    def ratio(workload: str, key: str) -> float | None:
        entry = summary.get(workload)
        if not isinstance(entry, dict):
            return None
        value = entry["ratios"].get(key)
        return float(value) if value is not None else None

    for workload in (*LARGE_KINDS, "small"):
        targets = [("ours_over_peer", 4.0)]
        if workload != "small":
            targets.insert(0, ("ours_over_limit", 0.8))
        if workload == "log":
            targets += [("ours_framed_over_limit", 1.5), ("ours_framed_over_peer", 3.0)]
        if workload == "random":
            targets += [("ours_framed_write_rate_over_disk", 0.9)]
        for key, target in targets:
            value = ratio(workload, key)
            rows.append(
                {
                    "workload": workload,
                    "goal": f"{key} >= {target}",
                    "measured": value,
                    "met": None if value is None else value >= target,
                }
            )
    return rows


# --- machine -----------------------------------------------------------------------------


def machine_facts(zstd_cli: str | None, work: Path) -> dict[str, object]:
    """What the figures depend on: cores, memory, CPU, disk, versions, our commit."""
    repo = Path(__file__).resolve().parents[2]
    commit = command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    changes = command_output(["git", "-C", str(repo), "status", "--porcelain", "--", "src"])
    if commit and changes:
        commit += "+dirty"
    mount = command_output(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(work)])
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "work_dir_fs": mount or "unknown",
        "zstd_cli": (command_output([zstd_cli, "-V"]) if zstd_cli else None) or "missing",
        "versions": {
            name: package_version(name)
            for name in (
                "postoffice",
                "zstandard",
                "uvloop",
                "aiohttp",
                "aiohttp-tus",
                "tuspy",
                "requests",
            )
        },
        "git_commit": commit or "unknown",
        "loadavg_at_start": os.getloadavg(),
    }
