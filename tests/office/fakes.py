"""Scripted roles for the office engine's tests (each plays back the plans it was given),
and a handle that records what the control socket asked of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from postoffice.office.engine import Roster
from postoffice.office.rules import Visit
from postoffice.office.simconfig import OfficeConfig


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


@dataclass
class FakeHandle:
    """An OfficeHandle that records what it was asked."""

    day: int = 1
    minute: int = 0
    added: list[int] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def add_users(self, count: int) -> None:
        self.added.append(count)

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")

    def apply_config(self, config: OfficeConfig) -> None:
        self.calls.append("apply_config")
