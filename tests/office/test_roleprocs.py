"""The role processes' logic without processes: the same draws as the roles in one
process, whatever the messages' batching; and the engine's minute skipping."""

from __future__ import annotations

import pytest

from postoffice.office.engine import Roster, Simulation
from postoffice.office.events import Event
from postoffice.office.roleprocs import IssuerRole, OperatorsRole, UsersRole
from postoffice.office.roles_wire import (
    Count,
    Counted,
    DayStart,
    Draws,
    Issue,
    Issued,
    OperatorNews,
    Plans,
    Visits,
)
from postoffice.office.rules import DAY_MINUTES, Operator, User

ROSTER = Roster(
    nof_users=40,
    p_serv_min=0.2,
    p_serv_max=0.9,
    n_requests=4,
    nof_workers=6,
    nof_worker_seats=4,
    nof_pause=2,
)


def test_the_issuer_issues_blocks_in_order_and_counts_them() -> None:
    issuer = IssuerRole()
    assert issuer.handle(Issue(count=3)) == Issued(first=1)
    assert issuer.handle(Issue(count=1)) == Issued(first=4)
    assert issuer.handle(Count()) == Counted(issued=4)
    assert issuer.handle(DayStart(day=0)) is None


def test_users_plan_the_same_visits_as_the_users_in_one_process() -> None:
    role = UsersRole(seed=5, first=10, count=5, p_serv_min=0.3, p_serv_max=0.9, n_requests=4)
    local = [
        User(seed=5, ident=i, p_serv_min=0.3, p_serv_max=0.9, max_requests=4) for i in range(10, 15)
    ]
    for day in range(4):
        answer = role.handle(DayStart(day=day))
        assert isinstance(answer, Visits)
        expected = []
        for user in local:
            visit = user.plan_day()
            if visit is not None:
                expected.append((user.ident, visit.arrival, visit.requests))
        assert answer.visits == tuple(expected)


def test_an_operators_draw_ahead_given_back_leaves_its_stream_as_in_one_process() -> None:
    """Whatever customers come, the operator process draws the same numbers as an
    operator in one process that draws only when a customer comes."""
    role = OperatorsRole(seed=9, first=0, count=1, pauses=3)
    local = Operator(seed=9, ident=0, pauses=3)
    customers_per_day = [0, 3, 1, 0, 0, 2, 5]
    for day, customers in enumerate(customers_per_day):
        answer = role.handle(DayStart(day=day))
        assert isinstance(answer, Plans)
        ((ident, due, ahead),) = answer.plans
        assert (ident, due) == (0, local.plan_day())
        for _ in range(customers):
            assert ahead == local.service_time(local.skill)
            news = role.handle(OperatorNews(served=(0,), breaks=()))
            assert isinstance(news, Draws)
            ((_, ahead),) = news.draws
    assert role.handle(OperatorNews(served=(), breaks=())) is None


def test_a_break_is_counted_in_the_operator_process() -> None:
    role = OperatorsRole(seed=1, first=3, count=2, pauses=1)
    role.handle(DayStart(day=0))
    role.handle(OperatorNews(served=(), breaks=(4,)))
    assert role.operators[4].pauses_left == 0
    with pytest.raises(ValueError, match=r"^operator 4 has no break left$"):
        role.handle(OperatorNews(served=(), breaks=(4,)))
    with pytest.raises(ValueError, match=r"^operator 9 is not run here$"):
        role.handle(OperatorNews(served=(9,), breaks=()))


def _every_minute(sim: Simulation) -> list[Event]:
    return sim.run_day()


def _jumping(sim: Simulation) -> list[Event]:
    events = sim.start_day()
    while (minute := sim.next_minute()) is not None:
        events.extend(sim.step(minute))
    events.extend(sim.close_day(at=DAY_MINUTES))
    return events


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stepping_only_the_minutes_with_something_to_do_gives_the_same_events(seed: int) -> None:
    every, jumping = Simulation(ROSTER, seed=seed), Simulation(ROSTER, seed=seed)
    for day in range(6):
        if day == 3:
            every.add_users(7)
            jumping.add_users(7)
        assert _jumping(jumping) == _every_minute(every)


def test_a_day_cannot_close_before_its_last_stepped_minute() -> None:
    sim = Simulation(ROSTER, seed=1)
    sim.start_day()
    sim.step(100)
    with pytest.raises(RuntimeError, match=r"^cannot close at minute 50 \(next is 101\)$"):
        sim.close_day(at=50)
    assert sim.close_day(at=200)[-1].minute == 200  # type: ignore[union-attr]
