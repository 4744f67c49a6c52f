"""The dashboard headless (Textual's pilot) against a fake data source: what each widget
shows, the keys (q, a, p), nothing running, the ending; and the pure parts of the live
source (metrics text, director document and ready files)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Sparkline, Static

from postoffice.office.control import Ok
from postoffice.office.dashboard.app import DashboardApp
from postoffice.office.dashboard.sources import (
    DashboardData,
    LiveSource,
    ServiceRow,
    parse_metrics,
)
from postoffice.office.engine import Simulation
from postoffice.office.errors import ControlRefusedError
from postoffice.office.events import Cause, RunEnded
from postoffice.office.live import LiveView
from tests.office.fakes import roster

SIZE = (180, 50)


def _snapshot(days: int = 3, *, ended: bool = False, minute: int = 200) -> dict[str, object]:
    sim = Simulation(roster(users=40, operators=4, counters=4), seed=11)
    view = LiveView(run_id="20260101T000000Z-s11", seed=11)
    for _ in range(days):
        view.apply(sim.run_day())
    view.apply(sim.start_day())
    for m in range(minute):
        found = sim.step(m)
        if found:
            view.apply(found)
    if ended:
        view.apply([RunEnded(days=days, cause=Cause.EXPLODE, detail="12 users still waiting")])
    return view.snapshot().to_json()


SERVICES = (
    ServiceRow(
        name="store",
        state="ready",
        pid=101,
        address="127.0.0.1:7400",
        requests_per_s=12.5,
        latency_ms=(0.25, 1.5),
        connections=2,
    ),
    ServiceRow(name="command", state="ready", pid=102, address="127.0.0.1:6380", connections=0),
    ServiceRow(name="ingest", state="backoff", pid=None, note="killed by SIGKILL"),
    ServiceRow(name="bus", state="down", note="not running"),
)


@dataclass
class FakeSource:
    """A DataSource serving canned data and recording the keys' requests."""

    data: DashboardData
    asked: list[str] = field(default_factory=list)
    refuse: bool = False

    def fetch(self) -> DashboardData:
        return self.data

    def add_users(self) -> str:
        self.asked.append("add_users")
        if self.refuse:
            raise ControlRefusedError("the run has ended: no users can be added")
        return "5 users more from day 5"

    def pause(self) -> str:
        self.asked.append("pause")
        assert self.data.simulation is not None
        self.data = DashboardData(
            simulation={**self.data.simulation, "paused": True},
            simulation_note="",
            services=self.data.services,
        )
        return "clock paused at day 4 11:20"

    def resume(self) -> str:
        self.asked.append("resume")
        assert self.data.simulation is not None
        self.data = DashboardData(
            simulation={**self.data.simulation, "paused": False},
            simulation_note="",
            services=self.data.services,
        )
        return "clock resumed at day 4 11:20"


def _source(*, ended: bool = False) -> FakeSource:
    return FakeSource(
        DashboardData(simulation=_snapshot(ended=ended), simulation_note="", services=SERVICES)
    )


async def _settled(app: DashboardApp, pilot: object) -> None:
    from textual.pilot import Pilot

    assert isinstance(pilot, Pilot)
    for _ in range(200):  # a bounded wait for the first refresh to be shown
        await pilot.pause()
        if app.data is not None:
            break
    await pilot.pause()
    assert app.data is not None


def _static(app: DashboardApp, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


def _rows(app: DashboardApp, selector: str) -> list[list[str]]:
    table = app.query_one(selector, DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def test_the_widgets_show_the_simulation_and_the_services() -> None:
    source = _source()
    snap = source.data.simulation
    assert snap is not None
    app = DashboardApp(source, refresh_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        assert _static(app, "#clock") == f"day 4 {snap['clock']} open"
        users = snap["users"]
        assert isinstance(users, dict)
        assert _static(app, "#users").startswith(
            f"users 40: {users['waiting']} waiting, {users['being_served']} being served,"
            f" {users['served_today']} served today (run 20260101T000000Z-s11, seed 11)"
        )
        queues = _rows(app, "#queues")
        assert [row[0] for row in queues] == [
            "parcels",
            "letters",
            "bank",
            "bills",
            "finance",
            "watches",
        ]
        services, snap_counters = snap["services"], snap["counters"]
        assert isinstance(services, list)
        assert isinstance(snap_counters, list)
        assert [int(row[1]) for row in queues] == [s["queue"] for s in services]
        counters = _rows(app, "#counters")
        assert len(counters) == 4
        for row, counter in zip(counters, snap_counters, strict=True):
            assert row[0] == str(counter["counter"])
            assert row[1] == counter["service"]
            assert row[2] == ("-" if counter["operator"] is None else str(counter["operator"]))
            assert row[3] == ("-" if counter["ticket"] is None else f"ticket {counter['ticket']}")
        assert _rows(app, "#services") == [
            ["store", "ready", "101", "127.0.0.1:7400", "12.5", "0.25/1.50", "2"],
            ["command", "ready", "102", "127.0.0.1:6380", "-", "-", "0"],
            ["ingest", "backoff (killed by SIGKILL)", "-", "-", "-", "-", "-"],
            ["bus", "down (not running)", "-", "-", "-", "-", "-"],
        ]
        days = _rows(app, "#days")
        assert [row[0] for row in days] == ["3", "2", "1"]  # the latest first
        shown_days = snap["days"]
        assert isinstance(shown_days, list)
        served = [float(d["daily"]["users_served"]) for d in shown_days]
        assert list(app.query_one("#served-plot", Sparkline).data or []) == served
        assert days[0][1] == str(shown_days[-1]["daily"]["users_served"])
        assert _static(app, "#ending") == ""


async def test_nothing_running_is_shown_as_such() -> None:
    rows = tuple(ServiceRow(name=n, state="down", note="not running") for n in ("store", "bus"))
    source = FakeSource(
        DashboardData(
            simulation=None,
            simulation_note="no simulation is running: nothing answers on /x/run/office.sock",
            services=rows,
        )
    )
    app = DashboardApp(source, refresh_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        assert _static(app, "#clock") == "simulation: not running"
        assert "no simulation is running" in _static(app, "#users")
        assert [row[1] for row in _rows(app, "#services")] == ["down (not running)"] * 2
        await pilot.press("a")
        await pilot.pause()
        assert source.asked == ["add_users"]


async def test_the_ending_is_shown() -> None:
    app = DashboardApp(_source(ended=True), refresh_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        assert _static(app, "#ending") == "ended: explode after 3 days (12 users still waiting)"


async def test_a_adds_users_and_p_pauses_then_resumes() -> None:
    source = _source()
    assert source.data.simulation is not None
    clock = source.data.simulation["clock"]
    app = DashboardApp(source, refresh_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        await pilot.press("a")
        await pilot.pause()
        assert source.asked == ["add_users"]
        assert _static(app, "#note") == "5 users more from day 5"
        await pilot.press("p")
        for _ in range(100):
            await pilot.pause()
            if "paused" in _static(app, "#clock"):
                break
        assert source.asked == ["add_users", "pause"]
        assert _static(app, "#clock") == f"day 4 {clock} paused"
        await pilot.press("p")
        for _ in range(100):
            await pilot.pause()
            if "open" in _static(app, "#clock"):
                break
        assert source.asked == ["add_users", "pause", "resume"]
        assert _static(app, "#clock") == f"day 4 {clock} open"


async def test_a_refused_request_is_shown_not_fatal() -> None:
    source = _source()
    source.refuse = True
    app = DashboardApp(source, refresh_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        await pilot.press("a")
        await pilot.pause()
        assert _static(app, "#note") == "the run has ended: no users can be added"
        assert app.is_running


async def test_q_quits() -> None:
    app = DashboardApp(_source(), refresh_s=60)
    async with app.run_test(size=SIZE) as pilot:
        await _settled(app, pilot)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


def test_metrics_text_is_read_by_name() -> None:
    text = "\n".join(
        [
            "# HELP postoffice_store_requests_total Requests.",
            "# TYPE postoffice_store_requests_total counter",
            "postoffice_store_requests_total 42.0",
            'postoffice_store_request_seconds_bucket{le="0.001"} 3.0',
            "postoffice_store_latency_p99_s 0.0015",
            "garbage",
            "bad_value x",
        ]
    )
    assert parse_metrics(text) == {
        "postoffice_store_requests_total": 42.0,
        "postoffice_store_latency_p99_s": 0.0015,
    }


def test_the_live_source_says_what_is_not_running(tmp_path: Path) -> None:
    source = LiveSource(tmp_path / "var")
    data = source.fetch()
    assert data.simulation is None
    assert data.simulation_note.startswith("no simulation is running: nothing answers on ")
    assert [(row.name, row.state, row.note) for row in data.services] == [
        ("store", "down", "not running"),
        ("command", "down", "not running"),
        ("ingest", "down", "not running"),
        ("bus", "down", "not running"),
    ]


def test_the_live_source_reads_the_director_document_and_ready_files(tmp_path: Path) -> None:
    run = tmp_path / "var" / "run"
    run.mkdir(parents=True)
    gone = 2**22 + 12345  # past pid_max's default: no such process
    (run / "director.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "data_dir": str(tmp_path / "var"),
                "services": {
                    "bus": {
                        "pid": os.getpid(),
                        "state": "ready",
                        "restarts": 1,
                        "listeners": {"bus": [str(run / "bus.sock"), 0]},
                        "last_exit": "killed by SIGKILL",
                    },
                    "ingest": {
                        "pid": None,
                        "state": "backoff",
                        "restarts": 2,
                        "listeners": {},
                        "last_exit": "exited with code 1",
                    },
                },
            }
        )
    )
    rows = {row.name: row for row in LiveSource(tmp_path / "var").fetch().services}
    assert (rows["bus"].state, rows["bus"].address, rows["bus"].up) == (
        "ready",
        str(run / "bus.sock"),
        True,
    )
    assert (rows["ingest"].state, rows["ingest"].note) == ("backoff", "exited with code 1")
    assert rows["store"].state == "down"  # the director does not run it
    # a director that is gone leaves the ready files to say what runs
    (run / "director.json").write_text(json.dumps({"pid": gone, "services": {}}))
    (run / "store.ready.json").write_text(
        json.dumps({"service": "store", "pid": gone, "listeners": {"store": ["127.0.0.1", 1]}})
    )
    (run / "command.ready.json").write_text(
        json.dumps({"service": "command", "pid": os.getpid(), "error": "cannot listen on 6380"})
    )
    rows = {row.name: row for row in LiveSource(tmp_path / "var").fetch().services}
    assert (rows["store"].state, rows["store"].note) == ("down", "its process is gone")
    assert (rows["command"].state, rows["command"].note) == ("down", "cannot listen on 6380")
    assert rows["bus"].state == "down"


def test_the_live_source_shows_the_clusters_services_after_the_usual_ones(
    tmp_path: Path,
) -> None:
    """`up --cluster` runs nats-servers, an S3 and ingest nodes under the director: each
    gets a row, in the director's order, after the four services every `up` has."""
    run = tmp_path / "var" / "run"
    run.mkdir(parents=True)
    services = {
        "store": {"pid": os.getpid(), "state": "starting", "listeners": {}},
        "nats1": {
            "pid": os.getpid(),
            "state": "ready",
            "listeners": {"client": ["127.0.0.1", 7500], "route": ["127.0.0.1", 7503]},
        },
        "s3": {"pid": None, "state": "backoff", "listeners": {}, "last_exit": "exited with 1"},
        "ingest-a": {"pid": os.getpid(), "state": "starting", "listeners": {}},
    }
    (run / "director.json").write_text(
        json.dumps({"pid": os.getpid(), "data_dir": str(tmp_path / "var"), "services": services})
    )
    rows = LiveSource(tmp_path / "var").fetch().services
    assert [(row.name, row.state, row.address, row.note) for row in rows] == [
        ("store", "starting", "-", ""),
        ("command", "down", "-", "not running"),
        ("ingest", "down", "-", "not running"),
        ("bus", "down", "-", "not running"),
        ("nats1", "ready", "127.0.0.1:7500", ""),
        ("s3", "backoff", "-", "exited with 1"),
        ("ingest-a", "starting", "-", ""),
    ]


def test_the_dashboard_looks_as_recorded(snap_compare: Callable[..., bool]) -> None:
    """The whole screen against its recorded SVG (pytest --snapshot-update records it
    again after a deliberate change of the layout)."""

    async def settle(pilot: Pilot[None]) -> None:
        assert isinstance(pilot.app, DashboardApp)
        await _settled(pilot.app, pilot)

    assert snap_compare(
        DashboardApp(_source(), refresh_s=60), terminal_size=SIZE, run_before=settle
    )


class _OneAtATime:
    """A control client whose status request holds the connection until a second request
    comes in or half a second passes, and that counts requests made while another waits
    for its reply: the app fetches and acts from threads of their own over one connection."""

    def __init__(self) -> None:
        self.inside = 0
        self.overlaps = 0
        self.entered = threading.Event()
        self.another = threading.Event()

    def status(self) -> dict[str, object]:
        self.inside += 1
        self.entered.set()
        self.another.wait(0.5)  # the reply on its way; a request made meanwhile overlaps
        self.inside -= 1
        return _snapshot(days=0, minute=1)

    def add_users(self) -> Ok:
        if self.inside:
            self.overlaps += 1
            self.another.set()
        return Ok(message="5 users more from day 2")

    def close(self) -> None:
        pass


def test_the_live_source_sends_one_control_request_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = LiveSource(tmp_path / "var")
    client = _OneAtATime()
    monkeypatch.setattr(source, "_client", client)
    fetching = threading.Thread(target=source.fetch)
    fetching.start()
    assert client.entered.wait(5)
    assert source.add_users() == "5 users more from day 2"  # waits for the fetch's reply
    fetching.join(5)
    assert client.overlaps == 0
