"""The engine's rules on small days checked by hand: scripted users, operators, counters."""

from __future__ import annotations

from postoffice.office.engine import Simulation
from postoffice.office.events import (
    BreakTaken,
    DayEnded,
    DayStarted,
    Event,
    NotProvided,
    OperatorSeated,
    Reason,
    ServiceDone,
    TicketIssued,
    UserArrived,
)
from postoffice.office.rules import Service, Visit
from postoffice.office.tally import DayReport, Tally
from tests.office.fakes import ScriptedDirector, ScriptedOperator, ScriptedUser, roster

L = int(Service.LETTERS)
P = int(Service.PARCELS)


def _day(sim: Simulation) -> tuple[list[Event], DayReport]:
    events = sim.run_day()
    tally = Tally()
    report = None
    for event in events:
        report = tally.apply(event) or report
    assert report is not None
    return events, report


def _sim(
    users: list[ScriptedUser], operators: list[ScriptedOperator], counters: list[tuple[int, ...]]
) -> Simulation:
    return Simulation(
        roster(users=len(users), operators=len(operators), counters=len(counters[0])),
        seed=0,
        director=ScriptedDirector(counters),
        users=users,
        operators=operators,
    )


def test_one_user_one_operator_one_counter() -> None:
    user = ScriptedUser(0, [Visit(arrival=10, requests=(L,))])
    sim = _sim([user], [ScriptedOperator(0, L, times=[5])], [(L,)])
    events, report = _day(sim)
    assert events == [
        DayStarted(day=0, counters=(L,), users=1),
        OperatorSeated(day=0, minute=0, operator=0, counter=0, service=L),
        UserArrived(day=0, minute=10, user=0, requests=(L,)),
        TicketIssued(day=0, minute=10, ticket=1, user=0, service=L, index=0),
        ServiceDone(
            day=0,
            minute=15,
            ticket=1,
            user=0,
            service=L,
            operator=0,
            counter=0,
            issued=10,
            started=10,
        ),
        DayEnded(day=0, minute=480, tickets_issued=1, in_progress=0, waiting_users=0),
    ]
    overall = report.daily.overall
    assert (overall.users_served, overall.provided, overall.not_provided) == (1, 1, 0)
    assert (overall.avg_wait, overall.avg_service) == (0.0, 5.0)
    assert (overall.active_operators, overall.operators_per_counter) == (1.0, 1.0)
    assert report.daily.services[L].provided == 1
    assert report.daily.services[P].provided == 0
    assert report.daily.counters == (1.0,)


def test_requests_are_done_in_order_each_after_the_last_is_served() -> None:
    user = ScriptedUser(0, [Visit(arrival=0, requests=(L, L))])
    sim = _sim([user], [ScriptedOperator(0, L, times=[7, 4])], [(L,)])
    events, report = _day(sim)
    tickets = [e for e in events if isinstance(e, TicketIssued)]
    done = [e for e in events if isinstance(e, ServiceDone)]
    assert [(t.ticket, t.index, t.minute) for t in tickets] == [(1, 0, 0), (2, 1, 7)]
    assert [(d.ticket, d.started, d.minute) for d in done] == [(1, 0, 7), (2, 7, 11)]
    assert report.daily.overall.avg_service == 5.5
    assert report.daily.overall.users_served == 1


def test_a_break_waits_for_the_customer_frees_the_counter_and_is_counted() -> None:
    first = ScriptedUser(0, [Visit(arrival=55, requests=(L,))])
    second = ScriptedUser(1, [Visit(arrival=66, requests=(L,))])
    op = ScriptedOperator(0, L, times=[10, 3], breaks=[60], pauses_left=1)
    sim = _sim([first, second], [op], [(L,)])
    events, report = _day(sim)
    kinds = [(type(e).__name__, getattr(e, "minute", None)) for e in events]
    assert kinds.index(("ServiceDone", 65)) < kinds.index(("BreakTaken", 65))
    assert BreakTaken(day=0, minute=65, operator=0, counter=0, service=L) in events
    # back after 15 minutes, seated again, and the second user is served then
    assert OperatorSeated(day=0, minute=80, operator=0, counter=0, service=L) in events
    second_done = [e for e in events if isinstance(e, ServiceDone) and e.user == 1]
    assert [(e.issued, e.started, e.minute) for e in second_done] == [(66, 80, 83)]
    assert op.pauses_left == 0
    assert report.daily.overall.breaks == 1
    assert report.daily.services[L].breaks == 1
    assert report.daily.overall.avg_wait == 7.0  # (0 + 14) / 2


def test_a_break_not_due_from_a_counter_is_skipped_and_not_counted() -> None:
    op0 = ScriptedOperator(0, L, breaks=[None], pauses_left=1)
    op1 = ScriptedOperator(1, L, breaks=[100], pauses_left=1)  # never gets the one counter
    sim = _sim([ScriptedUser(0)], [op0, op1], [(L,)])
    events, report = _day(sim)
    assert not [e for e in events if isinstance(e, BreakTaken)]
    assert op1.pauses_left == 1
    assert report.daily.overall.breaks == 0


def test_the_day_ends_with_users_waiting_and_their_requests_not_served() -> None:
    users = [
        ScriptedUser(0, [Visit(arrival=0, requests=(L,))]),
        ScriptedUser(1, [Visit(arrival=1, requests=(L, L))]),
        ScriptedUser(2, [Visit(arrival=2, requests=(L, P))]),
    ]
    sim = _sim(users, [ScriptedOperator(0, L, times=[400, 100])], [(L,)])
    events, report = _day(sim)
    done = [(e.user, e.started, e.minute) for e in events if isinstance(e, ServiceDone)]
    # the service under way at the close is finished (past minute 480)
    assert done == [(0, 0, 400), (1, 400, 500)]
    not_provided = [
        (e.user, e.index, e.reason, e.ticket) for e in events if isinstance(e, NotProvided)
    ]
    assert not_provided == [
        (2, 0, Reason.WAITING, 3),
        (1, 1, Reason.NOT_REACHED, 0),
        (2, 1, Reason.NOT_REACHED, 0),
    ]
    assert events[-1] == DayEnded(
        day=0, minute=480, tickets_issued=3, in_progress=0, waiting_users=1
    )
    overall = report.daily.overall
    assert (overall.provided, overall.not_provided, overall.tickets_not_served) == (2, 3, 1)
    assert report.waiting_users == 1


def test_a_service_no_counter_offers_is_not_provided_without_a_ticket() -> None:
    user = ScriptedUser(0, [Visit(arrival=5, requests=(P, L))])
    sim = _sim([user], [ScriptedOperator(0, L, times=[6])], [(L,)])
    events, report = _day(sim)
    assert (
        NotProvided(
            day=0, minute=5, user=0, service=P, index=0, reason=Reason.NOT_OFFERED, ticket=0
        )
        in events
    )
    assert TicketIssued(day=0, minute=5, ticket=1, user=0, service=L, index=1) in events
    assert report.daily.services[P].not_provided == 1
    assert report.daily.services[P].tickets_issued == 0
    assert report.daily.services[P].operators_per_counter is None
    assert report.daily.services[L].provided == 1


def test_tickets_in_one_minute_go_by_user_id_whatever_the_order_of_arrival() -> None:
    users = [
        ScriptedUser(0, [Visit(arrival=3, requests=(L,))]),
        ScriptedUser(1, [Visit(arrival=3, requests=(L,))]),
    ]
    sim = _sim(list(users), [ScriptedOperator(0, L, times=[2, 2])], [(L,)])
    events, _ = _day(sim)
    assert [(e.user, e.ticket) for e in events if isinstance(e, TicketIssued)] == [(0, 1), (1, 2)]


def test_an_operator_without_a_counter_waits_and_the_first_comer_rotates_by_day() -> None:
    ops = [
        ScriptedOperator(0, L, breaks=[100, None], pauses_left=1),
        ScriptedOperator(1, L, breaks=[None, None]),
    ]
    sim = _sim([ScriptedUser(0), ScriptedUser(1)], ops, [(L,), (L,)])
    events, report = _day(sim)
    seated = [(e.minute, e.operator) for e in events if isinstance(e, OperatorSeated)]
    assert seated == [(0, 0), (100, 1)]  # back at 115, operator 0 finds the counter taken
    assert report.daily.counters == (2.0,)
    events, _ = _day(sim)
    assert [(e.minute, e.operator) for e in events if isinstance(e, OperatorSeated)] == [(0, 1)]


def test_users_added_come_from_the_next_day() -> None:
    sim = Simulation(roster(users=3, operators=1, counters=1), seed=5)
    sim.run_day()
    sim.add_users(2)
    events = sim.run_day()
    assert isinstance(events[1], DayStarted)
    assert events[1].users == 5
    assert [u.ident for u in sim.users] == [0, 1, 2, 3, 4]
