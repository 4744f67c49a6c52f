"""The statistics of a run, folded from its events: each day's and the running totals,
overall, per service and per counter, with the run's invariants checked. Office layer,
pure: the live run and `postoffice office report` fold the same events the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import final

from postoffice.office.errors import InvariantError
from postoffice.office.events import (
    BreakTaken,
    DayEnded,
    DayStarted,
    Event,
    NotProvided,
    OperatorSeated,
    Reason,
    RunEnded,
    ServiceDone,
    TicketIssued,
    UserArrived,
    UsersAdded,
)
from postoffice.office.rules import SERVICES

__all__ = ["DayReport", "Figures", "Stats", "Tally"]

_N: int = len(SERVICES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    """The statistics of one scope (the whole office or one service) over a day or the run.

    `users_served` counts users given at least one service (over the run: user-days);
    `active_operators` is a day's operators that held a counter (over the run: the mean
    per day); `operators_per_counter` is active operators over counters offering the
    scope (over the run: the mean of the days that had such counters), None without any.
    """

    users_served: int
    provided: int
    not_provided: int
    avg_wait: float | None
    avg_service: float | None
    active_operators: float
    breaks: int
    operators_per_counter: float | None
    tickets_issued: int
    tickets_not_served: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """Figures overall and per service (in Service order), and per counter the operators
    that sat at it (over the run: the mean per day)."""

    overall: Figures
    services: tuple[Figures, ...]
    counters: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DayReport:
    """What the director prints at a day's end: that day and the running totals."""

    day: int
    closed_at: int
    waiting_users: int
    daily: Stats
    totals: Stats


@dataclass(slots=True)
class _Acc:
    """Sums for one day, or for the run, per service (lists indexed by Service)."""

    users: list[set[int]] = field(default_factory=lambda: [set() for _ in SERVICES])
    users_served: list[int] = field(default_factory=lambda: [0] * (_N + 1))  # [N]: overall
    provided: list[int] = field(default_factory=lambda: [0] * _N)
    not_provided: list[int] = field(default_factory=lambda: [0] * _N)
    wait: list[int] = field(default_factory=lambda: [0] * _N)
    service: list[int] = field(default_factory=lambda: [0] * _N)
    breaks: list[int] = field(default_factory=lambda: [0] * _N)
    issued: list[int] = field(default_factory=lambda: [0] * _N)
    expired: list[int] = field(default_factory=lambda: [0] * _N)
    operators: list[set[int]] = field(default_factory=lambda: [set() for _ in SERVICES])
    counters: list[int] = field(default_factory=lambda: [0] * _N)  # counters per service
    at_counter: list[set[int]] = field(default_factory=list)  # counter -> operators


def _avg(total: int, count: int) -> float | None:
    return total / count if count else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@final
class Tally:
    """Folds a run's events, in order, into statistics; `apply` returns a DayReport at
    each day's end. Raises InvariantError when the events break the run's rules."""

    def __init__(self) -> None:
        self._day = _Acc()
        self._run = _Acc()
        self._days = 0
        # Per day, for the run's means: active operators (overall, per service), the
        # ratios (overall, per service when it had counters) and per counter.
        self._active: list[list[int]] = []
        self._ratios: list[list[float | None]] = []
        self._per_counter: list[list[int]] = []
        self._open: dict[int, int] = {}  # ticket -> user, for tickets not yet settled
        self._last_ticket = 0
        self._requests = 0
        self.ended: RunEnded | None = None
        self.last: DayReport | None = None

    @property
    def days(self) -> int:
        """Days closed so far."""
        return self._days

    def apply(self, event: Event) -> DayReport | None:
        """Fold one event; at a DayEnded return that day's report."""
        day = self._day
        match event:
            case TicketIssued(ticket=ticket, user=user, service=service):
                if ticket <= self._last_ticket:
                    raise InvariantError(f"ticket {ticket} issued after ticket {self._last_ticket}")
                self._last_ticket = ticket
                self._open[ticket] = user
                day.issued[service] += 1
            case ServiceDone():
                self._settle(event.ticket, event.user)
                s = event.service
                day.provided[s] += 1
                day.wait[s] += event.started - event.issued
                day.service[s] += event.minute - event.started
                day.users[s].add(event.user)
            case NotProvided(ticket=ticket, service=service):
                if event.reason is Reason.WAITING:
                    self._settle(ticket, event.user)
                    day.expired[service] += 1
                day.not_provided[service] += 1
            case UserArrived(requests=requests):
                self._requests += len(requests)
            case OperatorSeated(operator=op, counter=counter, service=service):
                day.operators[service].add(op)
                day.at_counter[counter].add(op)
            case BreakTaken(service=service):
                day.breaks[service] += 1
            case DayStarted(counters=counters):
                self._day = day = _Acc()
                day.at_counter = [set() for _ in counters]
                for service in counters:
                    day.counters[service] += 1
            case UsersAdded():
                pass
            case DayEnded():
                return self._close_day(event)
            case RunEnded():
                self.ended = event
        return None

    def _settle(self, ticket: int, user: int) -> None:
        owner = self._open.pop(ticket, None)
        if owner != user:
            raise InvariantError(
                f"ticket {ticket} settled for user {user} but it was not open for them"
            )

    def _close_day(self, event: DayEnded) -> DayReport:
        day, run = self._day, self._run
        issued_total = sum(run.issued) + sum(day.issued)
        served = sum(run.provided) + sum(day.provided)
        not_served = sum(run.expired) + sum(day.expired)
        if event.tickets_issued != served + not_served + event.in_progress:
            raise InvariantError(
                f"day {event.day}: tickets issued {event.tickets_issued} != served {served}"
                f" + not served {not_served} + in progress {event.in_progress}"
            )
        if issued_total != event.tickets_issued or len(self._open) != event.in_progress:
            raise InvariantError(
                f"day {event.day}: the issuer counts {event.tickets_issued} tickets and"
                f" {event.in_progress} in progress, the events {issued_total} and {len(self._open)}"
            )
        answered = sum(day.provided) + sum(day.not_provided)
        if answered != self._requests:
            raise InvariantError(
                f"day {event.day}: {self._requests} requests made but {answered} provided"
                " or not provided"
            )
        self._requests = 0
        self._days += 1
        everyone: set[int] = set().union(*day.users)
        for s in SERVICES:
            run.users_served[s] += len(day.users[s])
            run.provided[s] += day.provided[s]
            run.not_provided[s] += day.not_provided[s]
            run.wait[s] += day.wait[s]
            run.service[s] += day.service[s]
            run.breaks[s] += day.breaks[s]
            run.issued[s] += day.issued[s]
            run.expired[s] += day.expired[s]
        run.users_served[_N] += len(everyone)
        n_counters = len(day.at_counter)
        active = [len(set().union(*day.operators)), *(len(ops) for ops in day.operators)]
        self._active.append(active)
        self._ratios.append(
            [
                active[0] / n_counters if n_counters else None,
                *(active[s + 1] / day.counters[s] if day.counters[s] else None for s in SERVICES),
            ]
        )
        self._per_counter.append([len(ops) for ops in day.at_counter])
        report = DayReport(
            day=event.day,
            closed_at=event.minute,
            waiting_users=event.waiting_users,
            daily=self._daily_stats(day, len(everyone)),
            totals=self._total_stats(),
        )
        self.last = report
        return report

    def _daily_stats(self, day: _Acc, everyone: int) -> Stats:
        active, ratios = self._active[-1], self._ratios[-1]
        services = tuple(
            Figures(
                users_served=len(day.users[s]),
                provided=day.provided[s],
                not_provided=day.not_provided[s],
                avg_wait=_avg(day.wait[s], day.provided[s]),
                avg_service=_avg(day.service[s], day.provided[s]),
                active_operators=float(active[s + 1]),
                breaks=day.breaks[s],
                operators_per_counter=ratios[s + 1],
                tickets_issued=day.issued[s],
                tickets_not_served=day.expired[s],
            )
            for s in SERVICES
        )
        provided = sum(day.provided)
        overall = Figures(
            users_served=everyone,
            provided=provided,
            not_provided=sum(day.not_provided),
            avg_wait=_avg(sum(day.wait), provided),
            avg_service=_avg(sum(day.service), provided),
            active_operators=float(active[0]),
            breaks=sum(day.breaks),
            operators_per_counter=ratios[0],
            tickets_issued=sum(day.issued),
            tickets_not_served=sum(day.expired),
        )
        counters = tuple(float(n) for n in self._per_counter[-1])
        return Stats(overall=overall, services=services, counters=counters)

    def _total_stats(self) -> Stats:
        run = self._run

        def scope(column: int, sl: slice, users_served: int) -> Figures:
            provided = sum(run.provided[sl])
            ratios = [r for r in (day[column] for day in self._ratios) if r is not None]
            return Figures(
                users_served=users_served,
                provided=provided,
                not_provided=sum(run.not_provided[sl]),
                avg_wait=_avg(sum(run.wait[sl]), provided),
                avg_service=_avg(sum(run.service[sl]), provided),
                active_operators=sum(a[column] for a in self._active) / len(self._active),
                breaks=sum(run.breaks[sl]),
                operators_per_counter=_mean(ratios),
                tickets_issued=sum(run.issued[sl]),
                tickets_not_served=sum(run.expired[sl]),
            )

        n_counters = max((len(c) for c in self._per_counter), default=0)
        counters = tuple(
            sum(c[i] for c in self._per_counter if i < len(c)) / len(self._per_counter)
            for i in range(n_counters)
        )
        return Stats(
            overall=scope(0, slice(None), run.users_served[_N]),
            services=tuple(scope(s + 1, slice(s, s + 1), run.users_served[s]) for s in SERVICES),
            counters=counters,
        )

    def __repr__(self) -> str:
        return f"<Tally days={self._days} open_tickets={len(self._open)}>"
