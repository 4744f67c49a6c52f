"""What happens in a simulated run, as values: tickets, services, breaks, day ends, the
run's end; and their JSON records in the run's event log. Office layer, pure."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from postoffice.office.errors import EventLogError

__all__ = [
    "BreakTaken",
    "Cause",
    "DayEnded",
    "DayStarted",
    "Event",
    "NotProvided",
    "OperatorSeated",
    "Reason",
    "RunEnded",
    "ServiceDone",
    "TicketIssued",
    "UserArrived",
    "UsersAdded",
    "decode_events",
    "encode_events",
]


class Reason(enum.StrEnum):
    """Why a request was not provided."""

    NOT_OFFERED = "not_offered"  # no counter offered its service that day: no ticket taken
    WAITING = "waiting"  # its ticket was still waiting when the office closed
    NOT_REACHED = "not_reached"  # the office closed before the user got to it


class Cause(enum.StrEnum):
    """Why a run ended."""

    TIMEOUT = "timeout"  # SIM_DURATION days were simulated
    EXPLODE = "explode"  # more than EXPLODE_THRESHOLD users were waiting at a day's end
    SIGNAL = "signal"  # SIGINT or SIGTERM
    ERROR = "error"  # a broken invariant or a failure of the run itself


@dataclass(frozen=True, slots=True, kw_only=True)
class DayStarted:
    """A day opens: the service of each counter, and how many users there are."""

    day: int
    counters: tuple[int, ...]
    users: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UsersAdded:
    """The users manager added `count` users, numbered from `first`; they come from `day`."""

    day: int
    first: int
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UserArrived:
    """A user came in at `minute` with these requests (services, in order)."""

    day: int
    minute: int
    user: int
    requests: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TicketIssued:
    """A user took `ticket` for its request number `index`."""

    day: int
    minute: int
    ticket: int
    user: int
    service: int
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorSeated:
    """An operator took a free counter offering its skill."""

    day: int
    minute: int
    operator: int
    counter: int
    service: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceDone:
    """A ticket was served: issued at `issued`, started at `started`, done at `minute`
    (past the day's last minute when the office closed during the service)."""

    day: int
    minute: int
    ticket: int
    user: int
    service: int
    operator: int
    counter: int
    issued: int
    started: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakTaken:
    """An operator finished its customer, freed its counter and went on a break."""

    day: int
    minute: int
    operator: int
    counter: int
    service: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NotProvided:
    """A request that was not served that day, and why (`ticket` 0 when it had none)."""

    day: int
    minute: int
    user: int
    service: int
    index: int
    reason: Reason
    ticket: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DayEnded:
    """The office closed at `minute` (earlier than the day's end after a signal): the
    ticket issuer's count so far, tickets still open by the engine's own count, and the
    users that were still waiting."""

    day: int
    minute: int
    tickets_issued: int
    in_progress: int
    waiting_users: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEnded:
    """The run ended after `days` days (the last possibly cut short) for `cause`."""

    days: int
    cause: Cause
    detail: str


Event = (
    DayStarted
    | UsersAdded
    | UserArrived
    | TicketIssued
    | OperatorSeated
    | ServiceDone
    | BreakTaken
    | NotProvided
    | DayEnded
    | RunEnded
)

_KINDS: Final[dict[str, type[Event]]] = {
    "day_started": DayStarted,
    "users_added": UsersAdded,
    "user_arrived": UserArrived,
    "ticket": TicketIssued,
    "seated": OperatorSeated,
    "service": ServiceDone,
    "break": BreakTaken,
    "not_provided": NotProvided,
    "day_ended": DayEnded,
    "run_ended": RunEnded,
}
_KIND_OF: Final = {cls: kind for kind, cls in _KINDS.items()}
_FIELDS: Final = {cls: cls.__slots__ for cls in _KINDS.values()}


def encode_events(events: Sequence[Event]) -> bytes:
    """The events as one compact JSON array, each an array of its kind and its fields in
    declaration order (`["ticket",0,12,7,3,1,0]`): one dumps call for a day's events."""
    fields = _FIELDS
    kinds = _KIND_OF
    rows = [[kinds[type(e)], *[getattr(e, name) for name in fields[type(e)]]] for e in events]
    return json.dumps(rows, separators=(",", ":")).encode()


def decode_events(data: bytes) -> list[Event]:
    """The events `encode_events` wrote. Raises EventLogError for anything else."""
    try:
        rows = json.loads(data)
    except ValueError as exc:
        raise EventLogError(f"not an event record: {data[:80]!r}") from exc
    if not isinstance(rows, list):
        raise EventLogError(f"not an event record: {data[:80]!r}")
    return [_decode_row(row) for row in rows]


def _decode_row(row: object) -> Event:
    if not (isinstance(row, list) and row and isinstance(row[0], str) and row[0] in _KINDS):
        raise EventLogError(f"not an event: {row!r:.80}")
    cls = _KINDS[row[0]]
    names = _FIELDS[cls]
    if len(row) != len(names) + 1:
        raise EventLogError(
            f"bad {row[0]} event {row!r:.80}: {len(row) - 1} fields, not {len(names)}"
        )
    try:
        return _build(cls, dict(zip(names, row[1:], strict=True)))
    except (TypeError, ValueError) as exc:
        raise EventLogError(f"bad {row[0]} event {row!r:.80}: {exc}") from exc


def _build(cls: type[Event], record: dict[str, object]) -> Event:
    for name, value in record.items():
        if name in ("reason", "cause", "detail"):
            continue
        if name in ("counters", "requests"):
            if not (isinstance(value, list) and all(type(v) is int for v in value)):
                raise ValueError(f"{name} must be a list of integers")
            record[name] = tuple(value)
        elif type(value) is not int:
            raise ValueError(f"{name} must be an integer")
    if cls is NotProvided:
        record["reason"] = Reason(str(record["reason"]))
    elif cls is RunEnded:
        record["cause"] = Cause(str(record["cause"]))
        if not isinstance(record["detail"], str):
            raise ValueError("detail must be a string")
    return cls(**record)  # type: ignore[arg-type]  # each field checked above
