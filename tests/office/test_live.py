"""The live view: a hand-checked day folded minute by minute, the view against the
engine's own queues and counters at every minute, and its day totals against the tally."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.office.engine import Roster, Simulation
from postoffice.office.events import Cause, Event, RunEnded, TicketIssued
from postoffice.office.live import LiveView, clock_text
from postoffice.office.rules import DAY_MINUTES, Service, Visit
from tests.office.fakes import ScriptedDirector, ScriptedOperator, ScriptedUser, roster

L = Service.LETTERS
P = Service.PARCELS


def _scripted() -> Simulation:
    """Two letters counters, two operators (the second on a break at 30), three users."""
    users = [
        ScriptedUser(0, [Visit(arrival=10, requests=(L,))]),
        ScriptedUser(1, [Visit(arrival=10, requests=(L, P))]),
        ScriptedUser(2, [Visit(arrival=12, requests=(L,))]),
    ]
    operators = [
        ScriptedOperator(0, L, times=[8, 8], breaks=[None]),
        ScriptedOperator(1, L, times=[20], breaks=[30]),
    ]
    return Simulation(
        roster(users=3, operators=2, counters=2),
        seed=0,
        director=ScriptedDirector([(L, L)]),
        users=users,
        operators=operators,
    )


class _Stepper:
    """Steps an open day minute by minute, folding each minute's events as the driver
    hands them, and advancing the view's clock as the control server does."""

    def __init__(self, sim: Simulation, view: LiveView) -> None:
        self.sim, self.view, self.next = sim, view, 0

    def to(self, last: int) -> None:
        for minute in range(self.next, last + 1):
            events = self.sim.step(minute)
            if events:
                self.view.apply(events)
            self.view.advance(minute)
        self.next = last + 1


def test_a_hand_checked_day_as_the_live_view_sees_it() -> None:
    sim = _scripted()
    view = LiveView(run_id="r1", seed=0)
    view.apply(sim.start_day())
    step = _Stepper(sim, view)
    before = view.snapshot()
    assert (before.day, before.minute, before.clock, before.open) == (1, 0, "08:00", True)
    assert [c.operator for c in before.counters] == [None, None]

    step.to(10)
    # minute 0: both operators seated; minute 10: users 0 and 1 take tickets 1 and 2,
    # which counters 0 and 1 start at once (phase 7).
    now = view.snapshot()
    assert now.minute == 10
    assert now.clock == "08:10"
    assert [(c.operator, c.ticket, c.serving) for c in now.counters] == [
        (0, 1, True),
        (1, 2, True),
    ]
    assert (now.present, now.waiting, now.being_served, now.served_today) == (2, 0, 2, 0)
    assert now.services[L].queue == 0
    assert now.services[L].counters == 2

    step.to(12)
    # user 2's ticket 3 waits: both counters are busy.
    now = view.snapshot()
    assert now.services[L].queue == 1
    assert (now.present, now.waiting, now.being_served) == (3, 1, 2)

    step.to(18)
    # operator 0 is done with user 0 at 18 (8 minutes) and takes ticket 3; user 0 leaves.
    now = view.snapshot()
    assert [(c.operator, c.ticket) for c in now.counters] == [(0, 3), (1, 2)]
    assert now.services[L].queue == 0
    assert (now.present, now.waiting, now.being_served, now.served_today) == (2, 0, 2, 1)

    step.to(30)
    # operator 1 finishes user 1 at 30 and takes its break at once; user 1's parcel
    # request is not offered, so user 1 leaves too.
    now = view.snapshot()
    assert [(c.operator, c.ticket) for c in now.counters] == [(0, None), (None, None)]
    assert now.on_break == (1,)
    assert (now.breaks_today, now.provided_today, now.not_provided_today) == (1, 3, 1)
    assert (now.present, now.waiting, now.being_served, now.served_today) == (0, 0, 0, 3)

    step.to(46)
    assert view.snapshot().on_break == ()  # back at 45, waiting for a counter

    step.to(DAY_MINUTES - 1)
    reports = view.apply(sim.close_day())
    assert len(reports) == 1
    end = view.snapshot()
    assert (end.open, end.minute, end.clock) == (False, DAY_MINUTES, "16:00")
    assert end.days == (reports[0],)
    assert end.days[0].daily.overall.provided == 3


def test_the_view_matches_the_engines_queues_and_counters_at_every_minute() -> None:
    """The view replays the engine's unannounced phase 7 (a queue's head taken by an idle
    counter), so its queues and counters equal the engine's own state, minute by minute."""
    config = Roster(
        nof_users=60,
        p_serv_min=0.5,
        p_serv_max=0.9,
        n_requests=4,
        nof_workers=6,
        nof_worker_seats=5,
        nof_pause=3,
    )
    sim = Simulation(config, seed=7)
    view = LiveView()
    checked = 0
    for _day in range(3):
        view.apply(sim.start_day())
        for minute in range(DAY_MINUTES):
            events = sim.step(minute)
            if events:
                view.apply(events)
            snap = view.snapshot()
            assert [s.queue for s in snap.services] == [len(q) for q in sim.queue]
            assert [c.operator for c in snap.counters] == [
                None if op == -1 else op for op in sim.op_at
            ]
            assert [c.ticket for c in snap.counters] == [
                None if job is None else job[0] for job in sim.busy
            ]
            checked += 1
        view.apply(sim.close_day())
    assert checked == 3 * DAY_MINUTES
    assert len(view.snapshot().days) == 3


def test_a_whole_day_in_one_batch_gives_the_same_report_and_state() -> None:
    """`on_day` hands a whole day at once: the view folds it to the same end state."""
    a = Simulation(roster(users=30, operators=4, counters=4), seed=3)
    b = Simulation(roster(users=30, operators=4, counters=4), seed=3)
    whole, minutes = LiveView(), LiveView()
    whole.apply(a.run_day())
    minutes.apply(b.start_day())
    for minute in range(DAY_MINUTES):
        found = b.step(minute)
        if found:
            minutes.apply(found)
    minutes.apply(b.close_day())
    assert whole.snapshot() == minutes.snapshot()


def test_the_ending_and_the_json_form() -> None:
    sim = Simulation(roster(users=5, operators=2, counters=2), seed=1)
    view = LiveView(run_id="20260101-s1", seed=1)
    view.apply(sim.run_day())
    view.apply([RunEnded(days=1, cause=Cause.TIMEOUT, detail="1 days simulated")])
    view.paused = True
    snap = view.snapshot()
    assert snap.ended == RunEnded(days=1, cause=Cause.TIMEOUT, detail="1 days simulated")
    body = json.loads(json.dumps(snap.to_json()))
    assert body["run"] == "20260101-s1"
    assert body["seed"] == 1
    assert (body["day"], body["clock"], body["open"], body["paused"]) == (1, "16:00", False, True)
    assert body["ended"] == {"cause": "timeout", "days": 1, "detail": "1 days simulated"}
    assert [s["service"] for s in body["services"]] == [s.label for s in Service]
    assert len(body["counters"]) == 2
    assert body["days"][0]["day"] == 1
    assert body["days"][0]["daily"]["provided"] == snap.days[0].daily.overall.provided
    assert set(body["users"]) == {"total", "present", "waiting", "being_served", "served_today"}


def test_the_json_form_keeps_only_the_last_days_asked_for() -> None:
    sim = Simulation(roster(users=5, operators=2, counters=2), seed=1)
    view = LiveView()
    for _ in range(4):
        view.apply(sim.run_day())
    shown = view.snapshot().to_json(max_days=2)["days"]
    assert isinstance(shown, list)
    assert [d["day"] for d in shown] == [3, 4]
    assert view.snapshot().to_json(max_days=0)["days"] == []


def test_the_clock_of_the_day() -> None:
    assert [clock_text(m) for m in (0, 59, 60, 479, 480)] == [
        "08:00",
        "08:59",
        "09:00",
        "15:59",
        "16:00",
    ]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    users=st.integers(1, 80),
    operators=st.integers(1, 8),
    counters=st.integers(1, 8),
    requests=st.integers(1, 5),
    days=st.integers(1, 3),
    added=st.integers(0, 10),
)
def test_the_live_day_totals_match_the_tally_at_every_day_end(
    seed: int, users: int, operators: int, counters: int, requests: int, days: int, added: int
) -> None:
    config = Roster(
        nof_users=users,
        p_serv_min=0.2,
        p_serv_max=1.0,
        n_requests=requests,
        nof_workers=operators,
        nof_worker_seats=counters,
        nof_pause=2,
    )
    sim = Simulation(config, seed=seed)
    view = LiveView()
    run_provided = 0
    for day in range(days):
        if day == 1:
            sim.add_users(added)
        view.apply(sim.start_day())
        for minute in range(DAY_MINUTES):
            found = sim.step(minute)
            if found:
                view.apply(found)
        last: list[Event] = sim.close_day()
        before = view.snapshot()
        (report,) = view.apply(last)
        after = view.snapshot()
        daily = report.daily.overall
        assert after.served_today == daily.users_served
        assert after.provided_today == daily.provided
        assert after.not_provided_today == daily.not_provided
        assert after.tickets_today == daily.tickets_issued
        assert after.breaks_today == daily.breaks
        assert after.users == len(sim.users)
        assert before.waiting == report.waiting_users
        assert (after.waiting, after.being_served, after.present) == (0, 0, 0)
        run_provided += daily.provided
        assert report.totals.overall.provided == run_provided
        assert after.days[-1] is report


def test_events_that_break_the_rules_stop_the_reports_not_the_view() -> None:
    sim = Simulation(roster(users=20, operators=3, counters=3), seed=4)
    view = LiveView()
    events = sim.run_day()
    first_ticket = next(i for i, e in enumerate(events) if isinstance(e, TicketIssued))
    reports = view.apply(events[: first_ticket + 1] + events[first_ticket:])  # issued twice
    assert reports == []
    assert view.broken is not None
    assert "ticket" in view.broken
    assert view.snapshot().days == ()
    assert view.snapshot().open is False


def test_reports_can_come_from_the_driver_instead_of_the_view() -> None:
    sim = Simulation(roster(users=20, operators=3, counters=3), seed=4)
    view = LiveView(tally=False)
    events = sim.run_day()
    assert view.apply(events) == []
    (report,) = LiveView().apply(events)
    view.add_report(report)
    assert view.snapshot().days == (report,)
