"""The simulation engine: the roles of rules.py run minute by minute, in one process.

Office layer, sans-I/O: `start_day`, `step(minute)` and `close_day` return the events of
what happened; the driver (inprocess.py) decides how fast minutes pass.
"""

# Design
# ------
# A minute is a fixed sequence of phases. In each phase every role decides from its own
# state alone, and where several roles want one thing the decision is made by a fixed
# key (rules.py's arbitration), never by the order in which they asked:
#
#   1. services ending now complete, by counter id; their users are ready again;
#   2. operators whose planned break is due and who are not serving take it, by
#      operator id (their counters free up); a due operator without a counter skips it;
#   3. operators back from a break start waiting for a counter;
#   4. users arriving now are ready;
#   5. ready users go on with their next request, by user id: a ticket for a service
#      offered today (tickets in that order), otherwise the request is not provided;
#   6. free counters go to operators of their service waiting for one (rules.seat_operators);
#   7. idle operators take the next ticket of their service, by counter id.
#
# The office closes at minute DAY_MINUTES (or earlier, after a signal): services under
# way finish (an operator finishes its customer), tickets still waiting are not served
# and their users leave, and requests nobody reached are not provided.
#
# Only minutes with something to do cost anything: arrivals, service ends, due breaks
# and returns from breaks are kept by minute, and phases 6 and 7 run only for services
# whose counters, operators or queues changed in the minute.

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, final

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
    UsersAdded,
)
from postoffice.office.rules import (
    BREAK_MINUTES,
    DAY_MINUTES,
    SERVICES,
    CounterAssigner,
    Director,
    Operator,
    OperatorRole,
    TicketDesk,
    TicketIssuer,
    User,
    UserRole,
    seat_operators,
    waiting_key,
)

__all__ = ["Roster", "Simulation"]

_NONE: Final = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class Roster:
    """The numbers a simulation is built from (a subset of the office config)."""

    nof_users: int
    p_serv_min: float
    p_serv_max: float
    n_requests: int
    nof_workers: int
    nof_worker_seats: int
    nof_pause: int


@final
class Simulation:
    """One run's roles and the state of the current day. Not thread-safe.

    Call `start_day`, then `step` for minutes 0 to DAY_MINUTES - 1 in order (or fewer),
    then `close_day`; each returns the events in the order they happened.
    """

    def __init__(
        self,
        roster: Roster,
        *,
        seed: int,
        director: CounterAssigner | None = None,
        users: Sequence[UserRole] | None = None,
        operators: Sequence[OperatorRole] | None = None,
        issuer: TicketDesk | None = None,
        make_user: Callable[[int], UserRole] | None = None,
    ) -> None:
        """The roles are drawn from `seed` unless given (tests script them; the
        multi-process director gives stand-ins for roles that live in other processes);
        given users and operators must be numbered 0, 1, ... in order. `make_user(ident)`
        makes each user the roster or `add_users` asks for (default: a rules.User)."""
        self.roster = roster
        self.seed = seed
        self.day = -1
        self.issuer: TicketDesk = issuer if issuer is not None else TicketIssuer()
        self._make_user = make_user if make_user is not None else self._new_user
        self.director: CounterAssigner = director or Director(
            seed=seed, counters=roster.nof_worker_seats
        )
        self.users: list[UserRole] = []
        if users is None:
            self._add_users(roster.nof_users)
        else:
            self.users.extend(users)
        self.operators: list[OperatorRole] = (
            list(operators)
            if operators is not None
            else [
                Operator(seed=seed, ident=i, pauses=roster.nof_pause)
                for i in range(roster.nof_workers)
            ]
        )
        if [u.ident for u in self.users] != list(range(len(self.users))) or [
            o.ident for o in self.operators
        ] != list(range(len(self.operators))):
            raise ValueError("users and operators must be numbered 0, 1, ... in order")
        self._pending_users = 0
        self._open = False
        self._minute = 0
        self._reset_day(())

    # -- the users manager -------------------------------------------------------------

    def add_users(self, count: int) -> None:
        """Add `count` users from the next day on (the users manager's request)."""
        if count < 0:
            raise ValueError(f"cannot add {count} users")
        self._pending_users += count

    def _new_user(self, ident: int) -> UserRole:
        r = self.roster
        return User(
            seed=self.seed,
            ident=ident,
            p_serv_min=r.p_serv_min,
            p_serv_max=r.p_serv_max,
            max_requests=r.n_requests,
        )

    def _add_users(self, count: int) -> None:
        first = len(self.users)
        self.users.extend(self._make_user(i) for i in range(first, first + count))

    @property
    def clock(self) -> int:
        """The next minute of the open day to step (where a day cut short closes)."""
        return self._minute

    # -- the day -----------------------------------------------------------------------

    def _reset_day(self, counters: tuple[int, ...]) -> None:
        n_ops = len(self.operators)
        self.counters = counters
        self.offered = [False] * len(SERVICES)
        for service in counters:
            self.offered[service] = True
        self.op_at: list[int] = [_NONE] * len(counters)  # counter -> operator
        self.seat_of: list[int] = [_NONE] * n_ops  # operator -> counter
        # counter -> (ticket, user, service, index, issued, started) while serving
        self.busy: list[tuple[int, int, int, int, int, int] | None] = [None] * len(counters)
        self.free: list[set[int]] = [set() for _ in SERVICES]  # counters with no operator
        self.idle: list[set[int]] = [set() for _ in SERVICES]  # seated, not serving
        self.waiting: list[dict[int, int]] = [{} for _ in SERVICES]  # operator -> since
        self.queue: list[deque[tuple[int, int, int, int]]] = [deque() for _ in SERVICES]
        self.plans: dict[int, tuple[int, ...]] = {}  # user -> its requests today
        self.progress: dict[int, int] = {}  # user -> index of its current request
        self._arrivals: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}  # minute -> counters whose service ends
        self._due_at: dict[int, list[int]] = {}  # minute -> operators whose break falls due
        self._back_at: dict[int, list[int]] = {}  # minute -> operators back from a break
        self._due: set[int] = set()
        self._seat_dirty: set[int] = set()
        self._start_dirty: set[int] = set()

    def start_day(self) -> list[Event]:
        """Open the next day: counters assigned, users' and operators' plans drawn, every
        operator waiting for a counter. Raises RuntimeError if a day is open."""
        if self._open:
            raise RuntimeError(f"day {self.day} is still open")
        self.day += 1
        self._open = True
        self._minute = 0
        day = self.day
        events: list[Event] = []
        if self._pending_users:
            first = len(self.users)
            self._add_users(self._pending_users)
            events.append(UsersAdded(day=day, first=first, count=self._pending_users))
            self._pending_users = 0
        self._reset_day(self.director.assign_counters())
        events.append(DayStarted(day=day, counters=self.counters, users=len(self.users)))
        for counter, service in enumerate(self.counters):
            self.free[service].add(counter)
        arrivals = self._arrivals
        for user in self.users:
            visit = user.plan_day()
            if visit is not None:
                self.plans[user.ident] = visit.requests
                arrivals.setdefault(visit.arrival, []).append(user.ident)
        for op in self.operators:
            due = op.plan_day()
            if due is not None:
                self._due_at.setdefault(due, []).append(op.ident)
            self.waiting[op.skill][op.ident] = 0
        self._seat_dirty.update(range(len(SERVICES)))
        return events

    def next_minute(self) -> int | None:
        """The first minute from the next one to step on at which anything can happen
        (an arrival, a service end, a break falling due, a return from a break, or work
        left by the day's start), or None when nothing more will happen today: stepping
        only these minutes gives the same events as stepping every one."""
        if not self._open:
            return None
        if self._seat_dirty or self._start_dirty:
            return self._minute
        # An operator in `_due` is serving (any other is settled in the minute it falls
        # due), so its break waits for its service's end, which `_ends` holds.
        found = [min(d) for d in (self._arrivals, self._ends, self._due_at, self._back_at) if d]
        first = min(found, default=DAY_MINUTES)
        return first if first < DAY_MINUTES else None

    def step(self, minute: int) -> list[Event]:
        """Run one minute of the open day (minutes strictly increasing, below
        DAY_MINUTES). Raises RuntimeError when no day is open or the minute is out of turn."""
        if not self._open:
            raise RuntimeError("no day is open")
        if not self._minute <= minute < DAY_MINUTES:
            raise RuntimeError(f"minute {minute} out of turn (next is {self._minute})")
        self._minute = minute + 1
        day = self.day
        events: list[Event] = []
        ready: list[int] = []
        ends = self._ends.pop(minute, None)
        if ends:
            self._complete(sorted(ends), minute, events, ready)
        due = self._due_at.pop(minute, None)
        if due:
            self._due.update(due)
        if self._due:
            self._breaks(minute, events)
        back = self._back_at.pop(minute, None)
        if back:
            for ident in back:
                self.waiting[self.operators[ident].skill][ident] = minute
                self._seat_dirty.add(self.operators[ident].skill)
        arrivals = self._arrivals.pop(minute, None)
        if arrivals:
            plans = self.plans
            for user in arrivals:
                self.progress[user] = 0
                events.append(UserArrived(day=day, minute=minute, user=user, requests=plans[user]))
            ready.extend(arrivals)
        if ready:
            self._requests(sorted(ready), minute, events)
        if self._seat_dirty:
            self._seat(minute, events)
        if self._start_dirty:
            self._start(minute)
        return events

    def _complete(
        self, counters: list[int], minute: int, events: list[Event], ready: list[int]
    ) -> None:
        busy, op_at, day = self.busy, self.op_at, self.day
        for counter in counters:
            job = busy[counter]
            assert job is not None  # an end is only scheduled for a busy counter
            ticket, user, service, _index, issued, started = job
            busy[counter] = None
            events.append(
                ServiceDone(
                    day=day,
                    minute=minute,
                    ticket=ticket,
                    user=user,
                    service=service,
                    operator=op_at[counter],
                    counter=counter,
                    issued=issued,
                    started=started,
                )
            )
            self.progress[user] += 1
            ready.append(user)
            self.idle[service].add(counter)
            self._start_dirty.add(service)

    def _breaks(self, minute: int, events: list[Event]) -> None:
        for ident in sorted(self._due):
            counter = self.seat_of[ident]
            if counter == _NONE:
                self._due.discard(ident)  # a break is taken from a counter, or not at all
                continue
            if self.busy[counter] is not None:
                continue  # it finishes its customer first
            self._due.discard(ident)
            op = self.operators[ident]
            op.take_break()
            service = self.counters[counter]
            self.idle[service].discard(counter)
            self.op_at[counter] = _NONE
            self.seat_of[ident] = _NONE
            self.free[service].add(counter)
            self._seat_dirty.add(service)
            back = minute + BREAK_MINUTES
            if back < DAY_MINUTES:
                self._back_at.setdefault(back, []).append(ident)
            events.append(
                BreakTaken(
                    day=self.day, minute=minute, operator=ident, counter=counter, service=service
                )
            )

    def _requests(self, users: list[int], minute: int, events: list[Event]) -> None:
        day, plans, progress, offered = self.day, self.plans, self.progress, self.offered
        # The users' tickets are issued as one block (one question to the ticket issuer
        # however many users ask in the minute), numbered in user order as one by one.
        wanted = 0
        for user in users:
            requests = plans[user]
            index = progress[user]
            while index < len(requests) and not offered[requests[index]]:
                index += 1
            wanted += index < len(requests)
        ticket = self.issuer.issue_block(wanted) - 1 if wanted else 0
        for user in users:
            requests = plans[user]
            index = progress[user]
            while index < len(requests):
                service = requests[index]
                if offered[service]:
                    ticket += 1
                    self.queue[service].append((ticket, user, index, minute))
                    self._start_dirty.add(service)
                    events.append(
                        TicketIssued(
                            day=day,
                            minute=minute,
                            ticket=ticket,
                            user=user,
                            service=service,
                            index=index,
                        )
                    )
                    break
                events.append(
                    NotProvided(
                        day=day,
                        minute=minute,
                        user=user,
                        service=service,
                        index=index,
                        reason=Reason.NOT_OFFERED,
                        ticket=0,
                    )
                )
                index += 1
            progress[user] = index

    def _seat(self, minute: int, events: list[Event]) -> None:
        day, n_ops = self.day, len(self.operators)
        for service in sorted(self._seat_dirty):
            free, waiting = self.free[service], self.waiting[service]
            if not (free and waiting):
                continue
            keyed = [
                (waiting_key(since=since, operator=op, day=day, operators=n_ops), op)
                for op, since in waiting.items()
            ]
            for op, counter in seat_operators(free, keyed):
                free.discard(counter)
                del waiting[op]
                self.op_at[counter] = op
                self.seat_of[op] = counter
                self.idle[service].add(counter)
                self._start_dirty.add(service)
                events.append(
                    OperatorSeated(
                        day=day, minute=minute, operator=op, counter=counter, service=service
                    )
                )
        self._seat_dirty.clear()

    def _start(self, minute: int) -> None:
        for service in sorted(self._start_dirty):
            idle, queue = self.idle[service], self.queue[service]
            while idle and queue:
                counter = min(idle)
                idle.discard(counter)
                ticket, user, index, issued = queue.popleft()
                took = self.operators[self.op_at[counter]].service_time(service)
                self.busy[counter] = (ticket, user, service, index, issued, minute)
                self._ends.setdefault(minute + took, []).append(counter)
        self._start_dirty.clear()

    def close_day(self, *, at: int | None = None) -> list[Event]:
        """Close the office after the last minute stepped (or at minute `at`, not before
        the next minute to step, when minutes with nothing to do were skipped): services
        under way finish, waiting tickets are not served, unreached requests are not
        provided. Raises RuntimeError if no day is open or `at` is out of turn."""
        if not self._open:
            raise RuntimeError("no day is open")
        if at is not None:
            if not self._minute <= at <= DAY_MINUTES:
                raise RuntimeError(f"cannot close at minute {at} (next is {self._minute})")
            self._minute = at
        closed_at = self._minute
        day = self.day
        events: list[Event] = []
        for minute in sorted(self._ends):
            self._complete(sorted(self._ends[minute]), minute, events, [])
        self._ends.clear()
        waiting_users: set[int] = set()
        for service, queue in enumerate(self.queue):
            for ticket, user, index, _issued in queue:
                waiting_users.add(user)
                events.append(
                    NotProvided(
                        day=day,
                        minute=closed_at,
                        user=user,
                        service=service,
                        index=index,
                        reason=Reason.WAITING,
                        ticket=ticket,
                    )
                )
                self.progress[user] = index + 1
            queue.clear()
        for user in sorted(self.progress):
            requests = self.plans[user]
            events.extend(
                NotProvided(
                    day=day,
                    minute=closed_at,
                    user=user,
                    service=requests[index],
                    index=index,
                    reason=Reason.NOT_REACHED,
                    ticket=0,
                )
                for index in range(self.progress[user], len(requests))
            )
        in_progress = sum(len(q) for q in self.queue) + sum(b is not None for b in self.busy)
        events.append(
            DayEnded(
                day=day,
                minute=closed_at,
                tickets_issued=self.issuer.issued,
                in_progress=in_progress,
                waiting_users=len(waiting_users),
            )
        )
        self._open = False
        return events

    def run_day(self) -> list[Event]:
        """A whole day at once: `start_day`, every minute, `close_day`."""
        events = self.start_day()
        step = self.step
        for minute in range(DAY_MINUTES):
            found = step(minute)
            if found:
                events.extend(found)
        events.extend(self.close_day())
        return events

    def __repr__(self) -> str:
        state = f"day={self.day} minute={self._minute}" if self._open else f"closed day={self.day}"
        return (
            f"<Simulation seed={self.seed} {state} users={len(self.users)}"
            f" tickets={self.issuer.issued}>"
        )
