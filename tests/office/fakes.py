"""Scripted roles for the office engine's tests: each plays back the plans it was given."""

from __future__ import annotations

from dataclasses import dataclass, field

from postoffice.office.engine import Roster
from postoffice.office.rules import Visit


@dataclass
class ScriptedUser:
    """A user whose visits are given per day (None: stays home)."""

    ident: int
    visits: list[Visit | None] = field(default_factory=list)

    def plan_day(self) -> Visit | None:
        return self.visits.pop(0) if self.visits else None


@dataclass
class ScriptedOperator:
    """An operator with given service times (in turn) and break minutes (per day)."""

    ident: int
    skill: int
    times: list[int] = field(default_factory=list)
    breaks: list[int | None] = field(default_factory=list)
    pauses_left: int = 2

    def plan_day(self) -> int | None:
        due = self.breaks.pop(0) if self.breaks else None
        return due if self.pauses_left > 0 else None

    def take_break(self) -> None:
        assert self.pauses_left > 0
        self.pauses_left -= 1

    def service_time(self, service: int) -> int:
        assert service == self.skill
        return self.times.pop(0)


@dataclass
class ScriptedDirector:
    """Counter assignments given per day."""

    days: list[tuple[int, ...]]

    def assign_counters(self) -> tuple[int, ...]:
        return self.days.pop(0)


def roster(*, users: int, operators: int, counters: int, pauses: int = 2) -> Roster:
    return Roster(
        nof_users=users,
        p_serv_min=0.5,
        p_serv_max=0.5,
        n_requests=5,
        nof_workers=operators,
        nof_worker_seats=counters,
        nof_pause=pauses,
    )
