"""The dashboard: a Textual app showing the simulation (clock, queues, counters, users,
daily statistics plotted over the days, the ending) and every service of `postoffice up`
(up or down, requests/s, latency, connections). Office layer (UI)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Sparkline, Static

from postoffice.core.errors import PostOfficeError
from postoffice.office.dashboard.sources import DashboardData, DataSource, ServiceRow

log = logging.getLogger(__name__)

__all__ = ["REFRESH_S", "DashboardApp"]

#: Two refreshes a second: the clock of a paced run moves visibly, and a refresh costs
#: one status request and a few local scrapes.
REFRESH_S: Final = 0.5
#: The days plotted: the latest ones, as many as a sparkline shows well.
PLOT_DAYS: Final = 60


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _dicts(value: object) -> list[Mapping[str, object]]:
    return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class DashboardApp(App[None]):
    """Attaches to whatever runs under one data directory, through a DataSource."""

    TITLE = "postoffice dashboard"
    CSS = """
    #top { height: auto; }
    #clock { width: 1fr; text-style: bold; padding: 0 1; }
    #users { width: 2fr; padding: 0 1; }
    #middle { height: 1fr; }
    #left { width: 46; }
    #right { width: 1fr; }
    DataTable { height: auto; max-height: 16; border: round $primary-darken-1; }
    DataTable:focus { border: round $primary; }
    #counters { max-height: 16; }
    #days { max-height: 10; }
    #plots { height: auto; border: round $primary-darken-1; }
    Sparkline { height: 3; margin: 0 1; }
    .caption { padding: 0 1; color: $text-muted; }
    #ending { padding: 0 1; text-style: bold; }
    #note { padding: 0 1; color: $warning; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("a", "add_users", "add users"),
        Binding("p", "toggle_pause", "pause/resume"),
    ]

    def __init__(self, source: DataSource, *, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self.source = source
        self.refresh_s = refresh_s
        self.data: DashboardData | None = None
        self._fetching = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="top"):
            yield Static("simulation: -", id="clock")
            yield Static("", id="users")
        with Horizontal(id="middle"):
            with Vertical(id="left"):
                yield DataTable(id="queues", cursor_type="none")
                yield DataTable(id="counters", cursor_type="none")
            with Vertical(id="right"):
                yield DataTable(id="services", cursor_type="none")
                yield DataTable(id="days", cursor_type="none")
                with Vertical(id="plots"):
                    yield Static("users served per day", classes="caption")
                    yield Sparkline([], id="served-plot")
                    yield Static("average wait per day (minutes)", classes="caption")
                    yield Sparkline([], id="wait-plot")
        yield Static("", id="ending")
        yield Static("", id="note")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#queues", DataTable).add_columns("service", "queue", "counters")
        self.query_one("#counters", DataTable).add_columns(
            "counter", "service", "operator", "serving"
        )
        self.query_one("#services", DataTable).add_columns(
            "service", "state", "pid", "address", "req/s", "p50/p99 ms", "conns"
        )
        self.query_one("#days", DataTable).add_columns(
            "day", "served", "provided", "not provided", "avg wait", "avg service", "left waiting"
        )
        for selector, title in (
            ("#queues", "queues"),
            ("#counters", "counters"),
            ("#services", "services of postoffice up"),
            ("#days", "days, the latest first"),
            ("#plots", f"over the last {PLOT_DAYS} days at most"),
        ):
            self.query_one(selector).border_title = title
        self.set_interval(self.refresh_s, self.refresh_data)
        self.call_later(self.refresh_data)

    async def refresh_data(self) -> None:
        """Fetch (in a thread: the source blocks) and show; one fetch at a time."""
        if self._fetching:
            return
        self._fetching = True
        try:
            data = await asyncio.to_thread(self.source.fetch)
        except Exception as exc:  # the UI's boundary: show it, keep running
            log.exception("dashboard fetch failed")
            self.query_one("#note", Static).update(f"cannot read: {exc}")
            return
        finally:
            self._fetching = False
        self.show(data)

    # -- showing -------------------------------------------------------------------------

    def show(self, data: DashboardData) -> None:
        """Put one refresh on the screen."""
        self.data = data
        self._show_services(data.services)
        snap = data.simulation
        if snap is None:
            self.query_one("#clock", Static).update("simulation: not running")
            self.query_one("#users", Static).update(data.simulation_note)
            self.query_one("#ending", Static).update("")
            return
        state = "paused" if snap.get("paused") else ("open" if snap.get("open") else "closed")
        self.query_one("#clock", Static).update(
            f"day {_text(snap.get('day'))} {_text(snap.get('clock'))} {state}"
        )
        users = snap.get("users")
        if isinstance(users, dict):
            self.query_one("#users", Static).update(
                f"users {_text(users.get('total'))}: {_text(users.get('waiting'))} waiting,"
                f" {_text(users.get('being_served'))} being served,"
                f" {_text(users.get('served_today'))} served today"
                f" (run {_text(snap.get('run'))}, seed {_text(snap.get('seed'))})"
            )
        self._fill(
            "#queues",
            [
                (_text(s.get("service")), _text(s.get("queue")), _text(s.get("counters")))
                for s in _dicts(snap.get("services"))
            ],
        )
        self._fill(
            "#counters",
            [
                (
                    _text(c.get("counter")),
                    _text(c.get("service")),
                    _text(c.get("operator")),
                    "-" if c.get("ticket") is None else f"ticket {c.get('ticket')}",
                )
                for c in _dicts(snap.get("counters"))
            ],
        )
        days = _dicts(snap.get("days"))
        rows = []
        served, waits = [], []
        for day in days:
            daily = day.get("daily")
            figures = daily if isinstance(daily, dict) else {}
            rows.append(
                (
                    _text(day.get("day")),
                    _text(figures.get("users_served")),
                    _text(figures.get("provided")),
                    _text(figures.get("not_provided")),
                    _text(figures.get("avg_wait")),
                    _text(figures.get("avg_service")),
                    _text(day.get("waiting_users")),
                )
            )
            served.append(_number(figures.get("users_served")))
            waits.append(_number(figures.get("avg_wait")))
        self._fill("#days", rows[::-1])  # the latest day first
        self.query_one("#served-plot", Sparkline).data = served[-PLOT_DAYS:]
        self.query_one("#wait-plot", Sparkline).data = waits[-PLOT_DAYS:]
        ended = snap.get("ended")
        self.query_one("#ending", Static).update(
            f"ended: {_text(ended.get('cause'))} after {_text(ended.get('days'))} days"
            f" ({_text(ended.get('detail'))})"
            if isinstance(ended, dict)
            else ""
        )

    def _show_services(self, services: Sequence[ServiceRow]) -> None:
        rows = []
        for row in services:
            latency = (
                "-"
                if row.latency_ms is None
                else f"{row.latency_ms[0]:.2f}/{row.latency_ms[1]:.2f}"
            )
            rows.append(
                (
                    row.name,
                    row.state if not row.note or row.up else f"{row.state} ({row.note})",
                    _text(row.pid),
                    row.address,
                    "-" if row.requests_per_s is None else f"{row.requests_per_s:.1f}",
                    latency,
                    _text(row.connections),
                )
            )
        self._fill("#services", rows)

    def _fill(self, selector: str, rows: Sequence[tuple[str, ...]]) -> None:
        table = self.query_one(selector, DataTable)
        table.clear()
        table.add_rows(rows)

    # -- keys ----------------------------------------------------------------------------

    async def action_add_users(self) -> None:
        """a: N_NEW_USERS more users for the simulation."""
        await self._ask(self.source.add_users)

    async def action_toggle_pause(self) -> None:
        """p: hold the clock, or let it go on."""
        snap = self.data.simulation if self.data is not None else None
        paused = bool(snap.get("paused")) if snap is not None else False
        await self._ask(self.source.resume if paused else self.source.pause)
        await self.refresh_data()

    async def _ask(self, call: Callable[[], str]) -> None:
        try:
            answer = await asyncio.to_thread(call)
        except PostOfficeError as exc:
            self.query_one("#note", Static).update(str(exc))
            self.notify(str(exc), severity="error")
            return
        self.query_one("#note", Static).update(str(answer))
        self.notify(str(answer))
