"""What the workers of one command server report, merged: INFO sections and counters.

Pure: dicts in, dicts out (the primary, command/primary.py, gathers the reports). The
rules, also in ARCHITECTURE.md: counts are summed over the workers; memory and CPU are
summed over every process (the workers and the primary); settings (`maxclients`), the
server's facts and the keyspace section come once; commandstats add up per command.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

#: Sections taken once, from the worker that asked: the same for every worker.
SINGLE_SECTIONS: Final = frozenset({"keyspace"})
#: Keys that hold a setting, not a count: the same in every worker, never summed.
SETTING_KEYS: Final = frozenset({"maxclients"})
#: The index of Retired's report: no worker has it.
RETIRED_INDEX: Final = -1
#: CPU seconds INFO shows as decimal strings, summed and shown alike.
CPU_KEYS: Final = ("used_cpu_sys", "used_cpu_user")

Sections = dict[str, dict[str, object]]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerReport:
    """One worker's own INFO sections, as its CommandServer.info() gives them."""

    index: int
    pid: int
    sections: Mapping[str, Mapping[str, object]]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerState:
    """What the primary knows of one worker, for the INFO workers section."""

    index: int
    pid: int  # 0 while no process runs
    state: str  # starting | listening | restarting | stopping
    restarts: int
    last_exit: str  # "" before any exit, else "exit code 1" or "signal SIGKILL"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryUsage:
    """The primary process's own memory and CPU, added to the workers'."""

    rss_bytes: int
    peak_bytes: int
    cpu_sys_s: float
    cpu_user_s: float


@dataclass(slots=True, kw_only=True)
class Retired:
    """What the workers that have exited had counted, by their last heartbeat answer, so
    the server's totals do not fall back when a worker dies and is started again (only
    what it counted in its last second is lost). Zeroed by CONFIG RESETSTAT.

    `counters` names the cumulative entries of a worker's `stats` answer; gauges (active
    connections, busy threads) die with the worker and are never kept.
    """

    counters: tuple[str, ...]
    totals: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # per command name

    def add(self, stats: Mapping[str, object]) -> None:
        """Keep a dead worker's last `stats` answer (its counters and `calls`)."""
        for name in self.counters:
            value = stats.get(name)
            if type(value) is int:
                self.totals[name] = self.totals.get(name, 0) + value
        calls = stats.get("calls")
        if isinstance(calls, Mapping):
            for command, count in calls.items():
                if isinstance(command, str) and type(count) is int:
                    self.calls[command] = self.calls.get(command, 0) + count

    def clear(self) -> None:
        self.totals.clear()
        self.calls.clear()

    def report(self, shown_as: Sequence[tuple[str, str]]) -> WorkerReport:
        """The kept counts as one more report for merge_info: its `stats` section under
        INFO's names (`shown_as`: (INFO name, counter) pairs), and its commandstats."""
        stats: dict[str, object] = {shown: self.totals.get(name, 0) for shown, name in shown_as}
        commandstats: dict[str, object] = {
            f"cmdstat_{command}": f"calls={count}" for command, count in self.calls.items()
        }
        return WorkerReport(
            index=RETIRED_INDEX,
            pid=0,
            sections={"stats": stats, "commandstats": commandstats},
        )


def merge_info(
    reports: Sequence[WorkerReport],
    *,
    origin: int,
    server: Mapping[str, object],
    primary: PrimaryUsage,
    roster: Sequence[WorkerState],
) -> Sections:
    """One INFO from the workers' reports; `origin` is the worker that asked.

    `server` is the primary's server section (its pid and uptime: the server's); it
    gains `workers` (how many there are), `worker_id` and `worker_process_id` (the
    worker that answered). A section only some workers report is merged from those.
    `roster` becomes the `workers` section, one line per worker.
    """
    first = next((r for r in reports if r.index == origin), reports[0] if reports else None)
    names: list[str] = []
    for report in reports:
        names.extend(name for name in report.sections if name not in names)
    merged: Sections = {}
    for name in names:
        parts = [report.sections[name] for report in reports if name in report.sections]
        own = first.sections.get(name, parts[0]) if first is not None else parts[0]
        if name == "server":
            merged[name] = {
                **server,
                "workers": len(roster),
                "worker_id": origin,
                "worker_process_id": first.pid if first is not None else 0,
            }
        elif name == "memory":
            merged[name] = _memory(parts, primary)
        elif name == "commandstats":
            merged[name] = merge_commandstats(parts)
        elif name in SINGLE_SECTIONS:
            merged[name] = dict(own)
        else:
            extra = {"used_cpu_sys": primary.cpu_sys_s, "used_cpu_user": primary.cpu_user_s}
            merged[name] = sum_section(parts, own, extra if name == "stats" else {})
    merged["workers"] = _roster(roster, {r.index: r for r in reports})
    return merged


def sum_section(
    parts: Sequence[Mapping[str, object]],
    own: Mapping[str, object],
    extra: Mapping[str, float],
) -> dict[str, object]:
    """Sum each key over `parts`: integers as integers, CPU seconds as 6-decimal strings
    (plus `extra[key]`); a setting or a value that is not a number comes from `own`."""
    keys: list[str] = []
    for part in parts:
        keys.extend(key for key in part if key not in keys)
    out: dict[str, object] = {}
    for key in keys:
        values = [part[key] for part in parts if key in part]
        if key in SETTING_KEYS:
            out[key] = own.get(key, values[0])
        elif all(type(v) is int for v in values):
            out[key] = sum(values)  # type: ignore[arg-type]  # every value is an int
        elif key in CPU_KEYS:
            total = sum(_seconds(v) for v in values) + extra.get(key, 0.0)
            out[key] = f"{total:.6f}"
        else:
            out[key] = own.get(key, values[0])
    return out


def merge_commandstats(parts: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """`cmdstat_<name>: calls=N` lines with N summed per command, sorted by name."""
    calls: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            calls[key] = calls.get(key, 0) + _calls(value)
    return {key: f"calls={calls[key]}" for key in sorted(calls)}


def merge_stats(parts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """The /metrics counters and gauges of every worker, summed key by key."""
    out: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, 0) + value
    return out


def _memory(parts: Sequence[Mapping[str, object]], primary: PrimaryUsage) -> dict[str, object]:
    rss = primary.rss_bytes + sum(_int(part.get("used_memory_rss")) for part in parts)
    peak = primary.peak_bytes + sum(_int(part.get("used_memory_peak")) for part in parts)
    return {
        "used_memory_rss": rss,
        "used_memory_rss_human": f"{rss / 1048576:.2f}M",
        "used_memory_peak": peak,
    }


def _roster(
    roster: Sequence[WorkerState], reports: Mapping[int, WorkerReport]
) -> dict[str, object]:
    lines: dict[str, object] = {}
    for worker in roster:
        report = reports.get(worker.index)
        clients = commands = 0
        if report is not None:
            clients = _int(report.sections.get("clients", {}).get("connected_clients"))
            commands = _int(report.sections.get("stats", {}).get("total_commands_processed"))
        lines[f"worker{worker.index}"] = (
            f"pid={worker.pid},state={worker.state},clients={clients},commands={commands},"
            f"restarts={worker.restarts},last_exit={worker.last_exit.replace(' ', '_') or 'none'}"
        )
    return lines


def _int(value: object) -> int:
    return value if type(value) is int else 0


def _seconds(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0


def _calls(value: object) -> int:
    if isinstance(value, str) and value.startswith("calls="):
        count = value[len("calls=") :].split(",", 1)[0]
        if count.isdigit():
            return int(count)
    return 0


__all__ = [
    "RETIRED_INDEX",
    "PrimaryUsage",
    "Retired",
    "WorkerReport",
    "WorkerState",
    "merge_commandstats",
    "merge_info",
    "merge_stats",
    "sum_section",
]
