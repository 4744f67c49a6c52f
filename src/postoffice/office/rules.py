"""The post office's rules as pure role state machines: services, random streams, the
director, the ticket issuer, users and operators, and the arbitration between them.

Office layer, sans-I/O: no clock, no sockets, no processes; `engine.py` composes them.
"""

# Design
# ------
# Every role owns its random stream, derived from the run seed and the role's name and
# id with a stable hash (BLAKE2b, never Python's salted `hash`), and draws from it only
# in answer to its own state. So a role draws the same numbers whether it runs in this
# process or in one of its own, and whatever the order in which messages reach it.
# Where several roles want the same thing in the same minute (free counters, the next
# ticket), the arbitration functions at the bottom decide by fixed keys, never by
# arrival order.

from __future__ import annotations

import enum
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, final

__all__ = [
    "BREAK_CHANCE",
    "BREAK_EARLIEST",
    "BREAK_LATEST",
    "BREAK_MINUTES",
    "DAY_MINUTES",
    "SERVICES",
    "SERVICE_MEANS",
    "CounterAssigner",
    "Director",
    "Operator",
    "OperatorRole",
    "Service",
    "TicketDesk",
    "TicketIssuer",
    "User",
    "UserRole",
    "Visit",
    "duration_bounds",
    "role_stream",
    "seat_operators",
    "waiting_key",
]

DAY_MINUTES: Final = 8 * 60  # a day is 8 simulated hours
BREAK_MINUTES: Final = 15  # how long a break keeps an operator away from the counters
BREAK_CHANCE: Final = 0.5  # the chance an operator with breaks left plans one for a day
BREAK_EARLIEST: Final = 60  # a planned break falls due at a minute in [EARLIEST, LATEST)
BREAK_LATEST: Final = DAY_MINUTES - 60


class Service(enum.IntEnum):
    """The six services, numbered as the counters and statistics index them."""

    PARCELS = 0  # parcels: send and collect
    LETTERS = 1  # letters and registered mail
    BANK = 2  # bank withdrawals and deposits
    BILLS = 3  # paying postal bills
    FINANCE = 4  # buying financial products
    WATCHES = 5  # buying watches and bracelets

    @property
    def label(self) -> str:
        """The service's short name in tables, CSV and JSON (`parcels`)."""
        return self.name.lower()


SERVICES: Final = tuple(Service)
SERVICE_MEANS: Final[tuple[int, ...]] = (10, 8, 6, 8, 20, 20)  # minutes, by Service


def duration_bounds(service: int) -> tuple[int, int]:
    """The shortest and longest service time of `service`: its mean -50 % and +50 %,
    in whole minutes (6 -> 3..9)."""
    mean = SERVICE_MEANS[service]
    return (mean + 1) // 2, (3 * mean) // 2


_BOUNDS: Final = tuple(duration_bounds(s) for s in SERVICES)


def role_stream(seed: int, role: str, ident: int) -> random.Random:
    """The random stream of one role (`"user"`, 7) in the run with `seed`: the same in
    every process and every Python, since it hashes with BLAKE2b."""
    digest = hashlib.blake2b(f"{seed}/{role}/{ident}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


class CounterAssigner(Protocol):
    """What the engine needs of the director."""

    def assign_counters(self) -> tuple[int, ...]:
        """The service of each counter for the next day."""
        ...


class TicketDesk(Protocol):
    """What the engine needs of the ticket issuer."""

    @property
    def issued(self) -> int:
        """Tickets issued so far, by the issuer's own count."""
        ...

    def issue_block(self, count: int) -> int:
        """Issue `count` tickets at once (count > 0): the first of them; the others follow
        it one by one."""
        ...


class UserRole(Protocol):
    """What the engine needs of a user."""

    @property
    def ident(self) -> int:
        """The user's id."""
        ...

    def plan_day(self) -> Visit | None:
        """Its visit today, or None."""
        ...


class OperatorRole(Protocol):
    """What the engine needs of an operator."""

    @property
    def ident(self) -> int:
        """The operator's id."""
        ...

    @property
    def skill(self) -> int:
        """The service it can give."""
        ...

    def plan_day(self) -> int | None:
        """The minute its break falls due today, or None."""
        ...

    def take_break(self) -> None:
        """Count a break taken."""
        ...

    def service_time(self, service: int) -> int:
        """How long the next customer takes, in minutes."""
        ...


@final
class Director:
    """Assigns every counter one service each day, uniformly at random."""

    __slots__ = ("_counters", "_rng")

    def __init__(self, *, seed: int, counters: int) -> None:
        self._rng = role_stream(seed, "director", 0)
        self._counters = counters

    def assign_counters(self) -> tuple[int, ...]:
        """The service of each counter for the next day (several may share one; a
        service may have none)."""
        draw = self._rng.randrange
        return tuple(draw(len(SERVICES)) for _ in range(self._counters))

    def __repr__(self) -> str:
        return f"<Director counters={self._counters}>"


@final
class TicketIssuer:
    """Hands out unique tickets, increasing over the whole run from 1."""

    __slots__ = ("issued",)

    def __init__(self, *, issued: int = 0) -> None:
        self.issued = issued

    def issue(self) -> int:
        """The next ticket."""
        self.issued += 1
        return self.issued

    def issue_block(self, count: int) -> int:
        """Issue `count` tickets at once: the first; the others follow it. Raises
        ValueError for a count under 1."""
        if count < 1:
            raise ValueError(f"cannot issue {count} tickets")
        first = self.issued + 1
        self.issued += count
        return first

    def __repr__(self) -> str:
        return f"<TicketIssuer issued={self.issued}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class Visit:
    """One user's day at the office: when it arrives and its requests, in order."""

    arrival: int
    requests: tuple[int, ...]


@final
class User:
    """A customer: its P_SERV is drawn once; each day it may come with a list of requests."""

    __slots__ = ("_max_requests", "_rng", "ident", "p_serv")

    def __init__(
        self, *, seed: int, ident: int, p_serv_min: float, p_serv_max: float, max_requests: int
    ) -> None:
        self.ident = ident
        self._rng = role_stream(seed, "user", ident)
        self.p_serv = self._rng.uniform(p_serv_min, p_serv_max)
        self._max_requests = max_requests

    def plan_day(self) -> Visit | None:
        """Whether it comes today (probability P_SERV) and, if so, its visit: an arrival
        minute uniform over the day and 1 to N_REQUESTS requests of uniform services."""
        rng = self._rng
        if rng.random() >= self.p_serv:
            return None
        arrival = rng.randrange(DAY_MINUTES)
        count = rng.randint(1, self._max_requests)
        return Visit(arrival=arrival, requests=tuple(rng.randrange(6) for _ in range(count)))

    def __repr__(self) -> str:
        return f"<User {self.ident} p_serv={self.p_serv:.3f}>"


@final
class Operator:
    """A worker with one skill for the run and at most `pauses` breaks over it."""

    __slots__ = ("_before_draw", "_rng", "ident", "pauses_left", "skill")

    def __init__(self, *, seed: int, ident: int, pauses: int) -> None:
        self.ident = ident
        self._rng = role_stream(seed, "operator", ident)
        self.skill = self._rng.randrange(len(SERVICES))
        self.pauses_left = pauses
        self._before_draw: tuple[object, ...] | None = None

    def plan_day(self) -> int | None:
        """The minute a break falls due today, or None: with breaks left, one is planned
        with probability BREAK_CHANCE at a minute in [BREAK_EARLIEST, BREAK_LATEST)."""
        if self.pauses_left <= 0:
            return None
        rng = self._rng
        if rng.random() >= BREAK_CHANCE:
            return None
        return rng.randrange(BREAK_EARLIEST, BREAK_LATEST)

    def take_break(self) -> None:
        """Count a break taken. Raises ValueError if none is left (a bug in the caller)."""
        if self.pauses_left <= 0:
            raise ValueError(f"operator {self.ident} has no break left")
        self.pauses_left -= 1

    def service_time(self, service: int) -> int:
        """How long serving one customer of `service` takes this time, in minutes."""
        low, high = _BOUNDS[service]
        return self._rng.randint(low, high)

    def draw_ahead(self) -> int:
        """Draw the next customer's service time (of its skill) before the customer comes,
        remembering the stream as it was, so that `give_back` can undo the draw if no
        customer comes today. Raises ValueError while an earlier draw is outstanding."""
        if self._before_draw is not None:
            raise ValueError(f"operator {self.ident} has a draw outstanding")
        self._before_draw = self._rng.getstate()
        return self.service_time(self.skill)

    def draw_used(self) -> None:
        """The draw made ahead went to a customer: it stays drawn."""
        self._before_draw = None

    def give_back(self) -> None:
        """Undo an outstanding draw made ahead (none: nothing to do), so the stream goes
        on exactly as if it had never been drawn."""
        if self._before_draw is not None:
            self._rng.setstate(self._before_draw)
            self._before_draw = None

    def __repr__(self) -> str:
        label = Service(self.skill).label
        return f"<Operator {self.ident} skill={label} breaks_left={self.pauses_left}>"


# -- arbitration: who gets what when several want it in the same minute ---------------


def waiting_key(*, since: int, operator: int, day: int, operators: int) -> tuple[int, int]:
    """The order in which waiting operators get free counters: who waited longest first,
    then by operator id rotated by the day, so no operator always comes first."""
    return since, (operator - day) % operators


def seat_operators(
    free_counters: Iterable[int], waiting: Sequence[tuple[tuple[int, int], int]]
) -> list[tuple[int, int]]:
    """Pair free counters of one service with operators of that skill waiting for one:
    the lowest counter id to the operator with the lowest `waiting_key`. `waiting` holds
    (key, operator) pairs; returns (operator, counter) pairs."""
    counters = sorted(free_counters)
    queue = sorted(waiting)
    return [(operator, counter) for (_, operator), counter in zip(queue, counters, strict=False)]
