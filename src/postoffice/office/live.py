"""The live view of a running simulation: its events folded into what is happening now
(clock, queues, counters, users) and the daily reports so far. Office layer, pure."""

# Design
# ------
# The events say when a ticket is issued and when its service is done, but not when an
# operator took it from the queue: the engine does that in a minute's last phase
# (engine.py, phase 7) without an event. The view replays that phase itself: once a
# minute's events are folded, every idle counter (an operator, no customer) takes the
# first ticket of its service's queue, lowest counter id first, as the engine does. So
# a batch given to `apply` must hold whole minutes (the events of one or more minutes,
# and a day's close with its DayEnded in one batch): the drivers' `on_events` and
# `on_day` both do. The close is told apart by its DayEnded: services finishing then
# (at or past the closing minute) free their counters without a next ticket being taken.

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, final

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
from postoffice.office.report import figures_record
from postoffice.office.rules import BREAK_MINUTES, DAY_MINUTES, SERVICES
from postoffice.office.tally import DayReport, Figures, Tally

__all__ = [
    "MAX_DAYS_KEPT",
    "OPENS_AT_MINUTE",
    "CounterState",
    "LiveSnapshot",
    "LiveView",
    "ServiceState",
    "clock_text",
]

#: The office opens at 08:00 and closes at 16:00: the clock shown for minute 0 and 480.
OPENS_AT_MINUTE: Final = 8 * 60
#: Daily reports kept for plotting; older ones are dropped so a long run stays small.
MAX_DAYS_KEPT: Final = 1000


def clock_text(minute: int) -> str:
    """The wall clock of a simulated minute of the day: 0 -> `08:00`, 480 -> `16:00`."""
    total = OPENS_AT_MINUTE + minute
    return f"{total // 60:02d}:{total % 60:02d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceState:
    """One service now: its tickets waiting, and the counters offering it today."""

    service: int
    name: str
    queue: int
    counters: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterState:
    """One counter now: its service today, its operator (None: free), and the ticket it
    is serving (None: idle)."""

    counter: int
    service: int
    name: str
    operator: int | None
    ticket: int | None

    @property
    def serving(self) -> bool:
        """True while a customer is at the counter."""
        return self.ticket is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveSnapshot:
    """The simulation as it stands. `day` counts from 1 (0 before the first day);
    `minute` is the last simulated minute seen (0 to 480); `open` is False between days
    and after the end. Users: `users` exist, `present` came in today and have not left,
    `waiting` hold a ticket in a queue, `being_served` stand at a counter, `served_today`
    were given at least one service today. `days` are the reports of the days closed,
    oldest first (at most MAX_DAYS_KEPT)."""

    run_id: str | None
    seed: int | None
    day: int
    minute: int
    open: bool
    paused: bool
    services: tuple[ServiceState, ...]
    counters: tuple[CounterState, ...]
    users: int
    present: int
    waiting: int
    being_served: int
    served_today: int
    provided_today: int
    not_provided_today: int
    tickets_today: int
    breaks_today: int
    on_break: tuple[int, ...]
    days: tuple[DayReport, ...]
    ended: RunEnded | None

    @property
    def clock(self) -> str:
        """The simulated time of day, `hh:mm`."""
        return clock_text(self.minute)

    def to_json(self, *, max_days: int = 100) -> dict[str, object]:
        """A JSON-ready dict (docs/protocols/office-control.md, the snapshot); `days` holds
        the last `max_days` reports, each day's and the running totals' overall figures."""
        return {
            "run": self.run_id,
            "seed": self.seed,
            "day": self.day,
            "minute": self.minute,
            "clock": self.clock,
            "open": self.open,
            "paused": self.paused,
            "services": [
                {"service": s.name, "queue": s.queue, "counters": s.counters} for s in self.services
            ],
            "counters": [
                {
                    "counter": c.counter,
                    "service": c.name,
                    "operator": c.operator,
                    "ticket": c.ticket,
                }
                for c in self.counters
            ],
            "users": {
                "total": self.users,
                "present": self.present,
                "waiting": self.waiting,
                "being_served": self.being_served,
                "served_today": self.served_today,
            },
            "today": {
                "provided": self.provided_today,
                "not_provided": self.not_provided_today,
                "tickets": self.tickets_today,
                "breaks": self.breaks_today,
            },
            "on_break": list(self.on_break),
            "days": [
                {
                    "day": r.day + 1,
                    "closed_at": r.closed_at,
                    "waiting_users": r.waiting_users,
                    "daily": figures_record(r.daily.overall),
                    "totals": figures_record(r.totals.overall),
                }
                for r in (self.days[-max_days:] if max_days > 0 else ())
            ],
            "ended": None
            if self.ended is None
            else {
                "cause": str(self.ended.cause),
                "days": self.ended.days,
                "detail": self.ended.detail,
            },
        }


@final
class LiveView:
    """Folds a run's events, batch by batch (whole minutes, see the design note), into
    the state `snapshot` returns, and folds them into a Tally too for the daily reports.
    Events that break the run's rules stop the reports (`broken` says why), not the view.
    """

    def __init__(
        self, *, run_id: str | None = None, seed: int | None = None, tally: bool = True
    ) -> None:
        """`tally`: fold the daily reports from the events here; False when the driver's
        own reports come through `add_report` (the run folds its events once, not twice)."""
        self.run_id = run_id
        self.seed = seed
        self.paused = False
        self.broken: str | None = None
        self._tally: Tally | None = Tally() if tally else None
        self._days: deque[DayReport] = deque(maxlen=MAX_DAYS_KEPT)
        self._ended: RunEnded | None = None
        self._day = -1
        self._minute = 0
        self._open = False
        self._closing = False
        self._users = 0
        self._services: tuple[int, ...] = ()  # counter -> service
        self._op_at: list[int | None] = []  # counter -> operator
        self._busy: list[tuple[int, int] | None] = []  # counter -> (ticket, user)
        self._queues: list[deque[tuple[int, int]]] = [deque() for _ in SERVICES]
        self._back_at: dict[int, int] = {}  # operator on a break -> minute it ends
        self._present: dict[int, int] = {}  # user in the office -> requests not settled
        self._served: set[int] = set()
        self._provided = 0
        self._not_provided = 0
        self._tickets = 0
        self._breaks = 0

    @property
    def day(self) -> int:
        """The current (or last) day, counted from 1; 0 before the first."""
        return self._day + 1

    @property
    def minute(self) -> int:
        """The last simulated minute seen."""
        return self._minute

    @property
    def ended(self) -> RunEnded | None:
        """The run's ending, once it came."""
        return self._ended

    def advance(self, minute: int) -> None:
        """The driver's clock moved to `minute` of the open day (minutes without events
        pass silently): only the clock changes."""
        if self._open and not self._closing and minute > self._minute:
            self._settle()
            self._minute = min(minute, DAY_MINUTES)

    def apply(self, events: list[Event]) -> list[DayReport]:
        """Fold a batch of events (whole minutes); return the reports of the days it closed."""
        closed_at = next((e.minute for e in events if isinstance(e, DayEnded)), None)
        reports: list[DayReport] = []
        for event in events:
            report = None
            if self._tally is not None and self.broken is None:
                try:
                    report = self._tally.apply(event)
                except InvariantError as exc:
                    # The driver's own tally ends the run for it; the view goes on showing
                    # what it can, without daily reports.
                    self.broken = str(exc)
            self._fold(event, closed_at)
            if report is not None:
                self._days.append(report)
                reports.append(report)
        if self._open and not self._closing:
            self._settle()
        return reports

    def add_report(self, report: DayReport) -> None:
        """A day's report made by the driver (with `tally=False`)."""
        self._days.append(report)

    def _fold(self, event: Event, closed_at: int | None) -> None:
        match event:
            case DayStarted(day=day, counters=counters, users=users):
                self._start_day(day, counters, users)
            case UsersAdded():
                pass  # the next DayStarted counts them
            case UserArrived(minute=minute, user=user, requests=requests):
                self._at(minute)
                self._present[user] = len(requests)
            case TicketIssued(minute=minute, ticket=ticket, user=user, service=service):
                self._at(minute)
                self._queues[service].append((ticket, user))
                self._tickets += 1
            case OperatorSeated(minute=minute, operator=op, counter=counter):
                self._at(minute)
                self._back_at.pop(op, None)
                if counter < len(self._op_at):
                    self._op_at[counter] = op
            case ServiceDone(minute=minute, ticket=ticket, user=user, counter=counter):
                if closed_at is not None and minute >= closed_at:
                    self._closing = True
                else:
                    self._at(minute)
                self._done(ticket, counter)
                self._settled(user)
                self._served.add(user)
                self._provided += 1
            case BreakTaken(minute=minute, operator=op, counter=counter):
                self._at(minute)
                if counter < len(self._op_at):
                    self._op_at[counter] = None
                self._back_at[op] = minute + BREAK_MINUTES
                self._breaks += 1
            case NotProvided(
                minute=minute, user=user, ticket=ticket, service=service, reason=reason
            ):
                if reason is Reason.NOT_OFFERED:
                    self._at(minute)
                else:
                    self._closing = True
                if ticket:
                    self._drop(ticket, service)
                self._settled(user)
                self._not_provided += 1
            case DayEnded(minute=minute):
                self._closing = True
                self._minute = minute
                self._open = False
                for queue in self._queues:
                    queue.clear()
                self._busy = [None] * len(self._busy)
                self._present.clear()
                self._back_at.clear()
            case RunEnded():
                self._ended = event
                self._open = False

    def _start_day(self, day: int, counters: tuple[int, ...], users: int) -> None:
        self._day = day
        self._minute = 0
        self._open = True
        self._closing = False
        self._users = users
        self._services = counters
        self._op_at = [None] * len(counters)
        self._busy = [None] * len(counters)
        for queue in self._queues:
            queue.clear()
        self._back_at.clear()
        self._present.clear()
        self._served.clear()
        self._provided = self._not_provided = self._tickets = self._breaks = 0

    def _at(self, minute: int) -> None:
        """An event of `minute`: the minutes before it are over, so their last phase ran."""
        if minute > self._minute:
            self._settle()
            self._minute = minute

    def _settle(self) -> None:
        """The engine's phase 7: idle counters take their service's next ticket."""
        busy, op_at = self._busy, self._op_at
        for counter, service in enumerate(self._services):
            queue = self._queues[service]
            if queue and busy[counter] is None and op_at[counter] is not None:
                busy[counter] = queue.popleft()

    def _done(self, ticket: int, counter: int) -> None:
        if counter < len(self._busy) and self._busy[counter] is not None:
            self._busy[counter] = None
            return
        for queue in self._queues:  # the view missed its start: it leaves the queue now
            for item in queue:
                if item[0] == ticket:
                    queue.remove(item)
                    return

    def _settled(self, user: int) -> None:
        """One of the user's requests is settled; after its last the user leaves."""
        left = self._present.get(user)
        if left is not None:
            if left <= 1:
                del self._present[user]
            else:
                self._present[user] = left - 1

    def _drop(self, ticket: int, service: int) -> None:
        queue = self._queues[service]
        for item in queue:
            if item[0] == ticket:
                queue.remove(item)
                return

    def snapshot(self) -> LiveSnapshot:
        """The state now, as a value."""
        counts = [0] * len(SERVICES)
        for service in self._services:
            counts[service] += 1
        busy = self._busy
        waiting = {user for queue in self._queues for _, user in queue}
        serving = {job[1] for job in busy if job is not None}
        minute = self._minute
        return LiveSnapshot(
            run_id=self.run_id,
            seed=self.seed,
            day=self._day + 1,
            minute=minute,
            open=self._open,
            paused=self.paused,
            services=tuple(
                ServiceState(
                    service=s, name=s.label, queue=len(self._queues[s]), counters=counts[s]
                )
                for s in SERVICES
            ),
            counters=tuple(
                CounterState(
                    counter=c,
                    service=service,
                    name=SERVICES[service].label,
                    operator=self._op_at[c],
                    ticket=None if job is None else job[0],
                )
                for c, (service, job) in enumerate(zip(self._services, busy, strict=True))
            ),
            users=self._users,
            present=len(self._present),
            waiting=len(waiting),
            being_served=len(serving),
            served_today=len(self._served),
            provided_today=self._provided,
            not_provided_today=self._not_provided,
            tickets_today=self._tickets,
            breaks_today=self._breaks,
            on_break=tuple(sorted(op for op, back in self._back_at.items() if back > minute)),
            days=tuple(self._days),
            ended=self._ended,
        )

    @property
    def totals(self) -> Figures | None:
        """The running totals of the last day closed (None before the first)."""
        return self._days[-1].totals.overall if self._days else None

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<LiveView run={self.run_id} day={self._day + 1} minute={self._minute} {state}>"
