"""How a run's statistics are shown: rich tables, JSON lines and CSV files, the same for
the live run and for `postoffice office report`. Office layer (CLI output)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import IO, Final, final

from rich.console import Console
from rich.table import Table

from postoffice.office.events import RunEnded
from postoffice.office.rules import DAY_MINUTES, SERVICES
from postoffice.office.tally import DayReport, Figures, Stats

__all__ = ["CsvWriter", "ending_line", "figures_record", "print_day", "print_end", "report_json"]

_COLUMNS: Final = (
    ("users served", "users_served"),
    ("provided", "provided"),
    ("not provided", "not_provided"),
    ("avg wait", "avg_wait"),
    ("avg service", "avg_service"),
    ("active ops", "active_operators"),
    ("breaks", "breaks"),
    ("ops/counter", "operators_per_counter"),
    ("tickets", "tickets_issued"),
    ("not served", "tickets_not_served"),
)
_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Figures))


def _cell(value: int | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _scopes(stats: Stats) -> list[tuple[str, Figures]]:
    return [("all", stats.overall), *((s.label, stats.services[s]) for s in SERVICES)]


def stats_table(title: str, stats: Stats) -> Table:
    """One table: a row for the whole office and one per service; minutes for times."""
    table = Table(title=title, title_justify="left")
    table.add_column("scope")
    for header, _ in _COLUMNS:
        table.add_column(header, justify="right")
    for name, figures in _scopes(stats):
        table.add_row(name, *(_cell(getattr(figures, attr)) for _, attr in _COLUMNS))
    return table


def _counters_line(stats: Stats) -> str:
    return "operators per counter: " + (
        " ".join(f"c{i}={_cell(n)}" for i, n in enumerate(stats.counters)) or "-"
    )


def print_day(console: Console, report: DayReport) -> None:
    """A day's statistics and the running totals, as tables."""
    cut = "" if report.closed_at >= DAY_MINUTES else f", closed early at minute {report.closed_at}"
    console.print(
        stats_table(
            f"day {report.day + 1}{cut}: {report.waiting_users} users still waiting at the close",
            report.daily,
        )
    )
    console.print(_counters_line(report.daily), highlight=False)
    console.print(stats_table(f"running totals after day {report.day + 1}", report.totals))
    console.print(_counters_line(report.totals), highlight=False)


def ending_line(ended: RunEnded) -> str:
    """`run ended: timeout (10 days simulated)`."""
    return f"run ended: {ended.cause} ({ended.detail})"


def print_end(console: Console, ended: RunEnded, last: DayReport | None) -> None:
    """The cause of the end and the final statistics (the last running totals)."""
    console.print(ending_line(ended), highlight=False, soft_wrap=True)
    if last is None:
        console.print("final statistics: no day was simulated", highlight=False)
        return
    days = last.day + 1
    title = f"final statistics after {days} day{'s' if days != 1 else ''}"
    console.print(stats_table(title, last.totals))
    console.print(_counters_line(last.totals), highlight=False)


def figures_record(figures: Figures) -> dict[str, object]:
    """A Figures as a JSON-ready dict."""
    return {name: getattr(figures, name) for name in _FIELDS}


def _stats_record(stats: Stats) -> dict[str, object]:
    return {
        "overall": figures_record(stats.overall),
        "services": {s.label: figures_record(stats.services[s]) for s in SERVICES},
        "counters": list(stats.counters),
    }


def report_json(report: DayReport | None, ended: RunEnded | None = None) -> str:
    """One JSON line: a day's report, or (with `ended`) the run's end and final totals."""
    if ended is not None:
        record: dict[str, object] = {
            "type": "end",
            "cause": str(ended.cause),
            "detail": ended.detail,
            "days": ended.days,
            "final": None if report is None else _stats_record(report.totals),
        }
    else:
        assert report is not None
        record = {
            "type": "day",
            "day": report.day + 1,
            "closed_at": report.closed_at,
            "waiting_users": report.waiting_users,
            "daily": _stats_record(report.daily),
            "totals": _stats_record(report.totals),
        }
    return json.dumps(record, separators=(",", ":"))


@final
class CsvWriter:
    """daily.csv and totals.csv in a directory: per day a row per scope (all, each
    service, each counter's operators), of that day and of the running totals."""

    HEADER: Final = ("day", "scope", *_FIELDS)

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._files: list[IO[str]] = []
        self._daily = self._open("daily.csv")
        self._totals = self._open("totals.csv")

    def _open(self, name: str) -> csv.DictWriter[str]:
        handle = (self.directory / name).open("w", newline="", encoding="utf-8")
        self._files.append(handle)
        writer = csv.DictWriter(handle, fieldnames=self.HEADER)
        writer.writeheader()
        return writer

    def write(self, report: DayReport) -> None:
        """Append a day's rows to both files."""
        for writer, stats in ((self._daily, report.daily), (self._totals, report.totals)):
            for name, figures in _scopes(stats):
                writer.writerow({"day": report.day + 1, "scope": name, **figures_record(figures)})
            for counter, ratio in enumerate(stats.counters):
                writer.writerow(
                    {
                        "day": report.day + 1,
                        "scope": f"counter {counter}",
                        "operators_per_counter": ratio,
                    }
                )
        for handle in self._files:
            handle.flush()

    def close(self) -> None:
        """Close both files."""
        for handle in self._files:
            handle.close()

    def __repr__(self) -> str:
        return f"<CsvWriter {self.directory}>"
