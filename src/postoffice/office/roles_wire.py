"""The multi-process run's messages: director <-> role processes on the bus (binary), and
the frames on the director's Unix socket (readiness, supervision). Office layer, pure."""

# Design
# ------
# Two carriers, two encodings. On the bus each role process has a channel from the
# director (`down`) and one to it (`up`); a message is one u8 type and a body of
# big-endian fixed-size fields, so a day's plans for many users are one struct pass, not
# a JSON document. On the director's socket, the rare messages (a child saying it is
# ready, the director asking the users manager for users, the manager reporting a lost
# user process) are core frames whose payload is a small JSON object: they carry names
# and lists whose shape may grow, and their cost does not matter.

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Final

from postoffice.core.framing import Frame, encode_parts
from postoffice.office.errors import RolesProtocolError
from postoffice.office.rules import DAY_MINUTES, SERVICES

__all__ = [
    "MAX_ITEMS",
    "MAX_REQUESTS",
    "MAX_SOCKET_PAYLOAD_BYTES",
    "AddUsers",
    "Count",
    "Counted",
    "DayStart",
    "Down",
    "Draws",
    "Hello",
    "Issue",
    "Issued",
    "Lost",
    "OperatorNews",
    "Plans",
    "RolesProtocolError",
    "SocketMessage",
    "Stop",
    "Up",
    "Visits",
    "decode_down",
    "decode_socket",
    "decode_up",
    "encode_down",
    "encode_socket",
    "encode_up",
]

MAX_ITEMS: Final = 1_000_000  # users or operators in one message: the config's own caps
MAX_REQUESTS: Final = 1_000  # N_REQUESTS' cap in simconfig
_NO_BREAK: Final = 0xFFFF  # the due minute of an operator that plans no break today


# -- bus messages, director -> role ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DayStart:
    """A day opens: users say who comes and with what; operators plan their day."""

    day: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorNews:
    """Operators that started a customer (each answers with its next draw) and
    operators that went on a break."""

    served: tuple[int, ...]
    breaks: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Issue:
    """Issue `count` tickets (the ticket issuer answers with the first)."""

    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Count:
    """Ask the ticket issuer how many tickets it has issued."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """The run is over: exit."""


Down = DayStart | OperatorNews | Issue | Count | Stop

# -- bus messages, role -> director ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Visits:
    """The users of a process that come today: (user, arrival minute, requests)."""

    visits: tuple[tuple[int, int, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plans:
    """Each operator's day: (operator, the minute its break falls due or None, the
    service time of its next customer, drawn ahead)."""

    plans: tuple[tuple[int, int | None, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Draws:
    """The next customer's service time of each operator that started one: (operator,
    minutes)."""

    draws: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Issued:
    """The first ticket of the block asked for."""

    first: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Counted:
    """The ticket issuer's own count of tickets issued."""

    issued: int


Up = Visits | Plans | Draws | Issued | Counted

_U8: Final = struct.Struct("!B")
_U32: Final = struct.Struct("!I")
_U64: Final = struct.Struct("!Q")
_COUNTS: Final = struct.Struct("!II")
_VISIT: Final = struct.Struct("!IHH")  # user, arrival, number of requests
_PLAN: Final = struct.Struct("!IHH")  # operator, due (or _NO_BREAK), next service time
_DRAW: Final = struct.Struct("!IH")

_DAY_START, _NEWS, _ISSUE, _COUNT, _STOP = 1, 2, 3, 4, 5
_VISITS, _PLANS, _DRAWS, _ISSUED, _COUNTED = 0x81, 0x82, 0x83, 0x84, 0x85


def _ids(values: tuple[int, ...]) -> bytes:
    return struct.pack(f"!{len(values)}I", *values)


def encode_down(message: Down) -> bytes:
    """The bytes of a message to a role process. Raises struct.error for a field out of
    its type's range (a bug of the caller)."""
    match message:
        case DayStart(day=day):
            return _U8.pack(_DAY_START) + _U32.pack(day)
        case OperatorNews(served=served, breaks=breaks):
            return (
                _U8.pack(_NEWS)
                + _COUNTS.pack(len(served), len(breaks))
                + _ids(served)
                + _ids(breaks)
            )
        case Issue(count=count):
            return _U8.pack(_ISSUE) + _U32.pack(count)
        case Count():
            return _U8.pack(_COUNT)
        case Stop():
            return _U8.pack(_STOP)


def encode_up(message: Up) -> bytes:
    """The bytes of a role process's answer. Raises struct.error for a field out of its
    type's range (a bug of the caller)."""
    match message:
        case Visits(visits=visits):
            parts = [_U8.pack(_VISITS), _U32.pack(len(visits))]
            for user, arrival, requests in visits:
                parts.append(_VISIT.pack(user, arrival, len(requests)))
                parts.append(bytes(requests))
            return b"".join(parts)
        case Plans(plans=plans):
            parts = [_U8.pack(_PLANS), _U32.pack(len(plans))]
            parts.extend(
                _PLAN.pack(op, _NO_BREAK if due is None else due, took) for op, due, took in plans
            )
            return b"".join(parts)
        case Draws(draws=draws):
            parts = [_U8.pack(_DRAWS), _U32.pack(len(draws))]
            parts.extend(_DRAW.pack(op, took) for op, took in draws)
            return b"".join(parts)
        case Issued(first=first):
            return _U8.pack(_ISSUED) + _U64.pack(first)
        case Counted(issued=issued):
            return _U8.pack(_COUNTED) + _U64.pack(issued)


class _Reader:
    """Reads fields off one message, failing with the message's name on a short body."""

    __slots__ = ("_data", "_name", "_pos")

    def __init__(self, data: bytes, name: str) -> None:
        self._data = data
        self._name = name
        self._pos = 1

    def take(self, layout: struct.Struct) -> tuple[int, ...]:
        end = self._pos + layout.size
        if end > len(self._data):
            raise RolesProtocolError(
                f"{self._name} message cut short: {len(self._data)} bytes, needs at least {end}"
            )
        fields = layout.unpack_from(self._data, self._pos)
        self._pos = end
        return fields

    def count(self) -> int:
        (n,) = self.take(_U32)
        if n > MAX_ITEMS:
            raise RolesProtocolError(f"{self._name} message of {n} items, limit {MAX_ITEMS}")
        return n

    def ids(self, n: int) -> tuple[int, ...]:
        return self.take(struct.Struct(f"!{n}I")) if n else ()

    def raw(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise RolesProtocolError(
                f"{self._name} message cut short: {len(self._data)} bytes, needs at least {end}"
            )
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def done(self) -> None:
        if self._pos != len(self._data):
            raise RolesProtocolError(
                f"{self._name} message of {len(self._data)} bytes has"
                f" {len(self._data) - self._pos} bytes past its end"
            )


def _kind(data: bytes, direction: str) -> int:
    if not data:
        raise RolesProtocolError(f"an empty {direction} message")
    return data[0]


def decode_down(data: bytes) -> Down:
    """The message to a role process in `data`. Raises RolesProtocolError."""
    kind = _kind(data, "director")
    message: Down
    if kind == _DAY_START:
        r = _Reader(data, "DAY_START")
        (day,) = r.take(_U32)
        message = DayStart(day=day)
    elif kind == _NEWS:
        r = _Reader(data, "NEWS")
        served_n, breaks_n = r.take(_COUNTS)
        if served_n > MAX_ITEMS or breaks_n > MAX_ITEMS:
            raise RolesProtocolError(
                f"NEWS message of {served_n + breaks_n} items, limit {MAX_ITEMS}"
            )
        message = OperatorNews(served=r.ids(served_n), breaks=r.ids(breaks_n))
    elif kind == _ISSUE:
        r = _Reader(data, "ISSUE")
        (count,) = r.take(_U32)
        if count < 1:
            raise RolesProtocolError("ISSUE of 0 tickets")
        message = Issue(count=count)
    elif kind == _COUNT:
        r = _Reader(data, "COUNT")
        message = Count()
    elif kind == _STOP:
        r = _Reader(data, "STOP")
        message = Stop()
    else:
        raise RolesProtocolError(f"unknown director message type 0x{kind:02x}")
    r.done()
    return message


def decode_up(data: bytes) -> Up:
    """The answer of a role process in `data`. Raises RolesProtocolError."""
    kind = _kind(data, "role")
    message: Up
    if kind == _VISITS:
        r = _Reader(data, "VISITS")
        visits = []
        for _ in range(r.count()):
            user, arrival, n = r.take(_VISIT)
            if arrival >= DAY_MINUTES:
                raise RolesProtocolError(f"VISITS: user {user} arrives at minute {arrival}")
            if not 1 <= n <= MAX_REQUESTS:
                raise RolesProtocolError(f"VISITS: user {user} has {n} requests")
            requests = tuple(r.raw(n))
            if max(requests) >= len(SERVICES):
                raise RolesProtocolError(f"VISITS: user {user} asks for service {max(requests)}")
            visits.append((user, arrival, requests))
        message = Visits(visits=tuple(visits))
    elif kind == _PLANS:
        r = _Reader(data, "PLANS")
        plans = []
        for _ in range(r.count()):
            op, due, took = r.take(_PLAN)
            if due != _NO_BREAK and due >= DAY_MINUTES:
                raise RolesProtocolError(f"PLANS: operator {op} break due at minute {due}")
            plans.append((op, None if due == _NO_BREAK else due, _service_time(op, took)))
        message = Plans(plans=tuple(plans))
    elif kind == _DRAWS:
        r = _Reader(data, "DRAWS")
        draws = []
        for _ in range(r.count()):
            op, took = r.take(_DRAW)
            draws.append((op, _service_time(op, took)))
        message = Draws(draws=tuple(draws))
    elif kind == _ISSUED:
        r = _Reader(data, "ISSUED")
        (first,) = r.take(_U64)
        if first < 1:
            raise RolesProtocolError("ISSUED: ticket 0")
        message = Issued(first=first)
    elif kind == _COUNTED:
        r = _Reader(data, "COUNTED")
        (issued,) = r.take(_U64)
        message = Counted(issued=issued)
    else:
        raise RolesProtocolError(f"unknown role message type 0x{kind:02x}")
    r.done()
    return message


def _service_time(op: int, took: int) -> int:
    if not 1 <= took < DAY_MINUTES:
        raise RolesProtocolError(f"operator {op}: service time {took} minutes")
    return took


# -- frames on the director's socket ----------------------------------------------------

MAX_SOCKET_PAYLOAD_BYTES: Final = 64 * 1024  # a HELLO lists an operator process's skills
_HELLO, _ADD_USERS, _LOST = 1, 2, 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """A child is ready: its role (`issuer`, `operators`, `manager`, `users`), its index
    among the processes of that role, its pid, the first id and count of the users or
    operators it runs, and (operators) each one's skill."""

    role: str
    index: int
    pid: int
    first: int
    count: int
    skills: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AddUsers:
    """Director -> users manager: start user processes for users `first` .. `first +
    count - 1`, `per_process` to a process, the first of them numbered `index`."""

    first: int
    count: int
    per_process: int
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Lost:
    """Users manager -> director: user process `index` (pid `pid`) ended: `detail`."""

    index: int
    pid: int
    detail: str


SocketMessage = Hello | AddUsers | Lost

_ROLES: Final = ("issuer", "operators", "manager", "users")


def encode_socket(message: SocketMessage) -> bytes:
    """The frame of a message on the director's socket."""
    match message:
        case Hello():
            kind, body = (
                _HELLO,
                {
                    "role": message.role,
                    "index": message.index,
                    "pid": message.pid,
                    "first": message.first,
                    "count": message.count,
                    "skills": list(message.skills),
                },
            )
        case AddUsers():
            kind, body = (
                _ADD_USERS,
                {
                    "first": message.first,
                    "count": message.count,
                    "per_process": message.per_process,
                    "index": message.index,
                },
            )
        case Lost():
            kind, body = (
                _LOST,
                {"index": message.index, "pid": message.pid, "detail": message.detail},
            )
    return encode_parts(kind, 0, 0, json.dumps(body, separators=(",", ":")).encode())


def _field(body: dict[str, object], name: str, kind: str) -> int:
    value = body.get(name)
    if type(value) is not int or value < 0:
        raise RolesProtocolError(f"{kind} field {name!r} must be an integer >= 0, got {value!r}")
    return value


def decode_socket(frame: Frame) -> SocketMessage:
    """The message in a frame from the director's socket. Raises RolesProtocolError."""
    names = {_HELLO: "HELLO", _ADD_USERS: "ADD_USERS", _LOST: "LOST"}
    kind = names.get(frame.type)
    if kind is None or frame.flags:
        raise RolesProtocolError(
            f"unknown frame type {frame.type} (flags 0x{frame.flags:x}) on the director's socket"
        )
    try:
        body = json.loads(frame.payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RolesProtocolError(f"{kind} payload is not JSON: {frame.payload[:40]!r}") from exc
    if not isinstance(body, dict):
        raise RolesProtocolError(f"{kind} payload is not a JSON object")
    if kind == "HELLO":
        role = body.get("role")
        if role not in _ROLES:
            raise RolesProtocolError(f"HELLO role must be one of {', '.join(_ROLES)}, got {role!r}")
        skills = body.get("skills")
        if not (
            isinstance(skills, list)
            and all(type(s) is int and 0 <= s < len(SERVICES) for s in skills)
        ):
            raise RolesProtocolError(f"HELLO skills must be a list of services, got {skills!r}")
        return Hello(
            role=str(role),
            index=_field(body, "index", kind),
            pid=_field(body, "pid", kind),
            first=_field(body, "first", kind),
            count=_field(body, "count", kind),
            skills=tuple(skills),
        )
    if kind == "ADD_USERS":
        per_process = _field(body, "per_process", kind)
        if per_process < 1:
            raise RolesProtocolError("ADD_USERS field 'per_process' must be at least 1, got 0")
        return AddUsers(
            first=_field(body, "first", kind),
            count=_field(body, "count", kind),
            per_process=per_process,
            index=_field(body, "index", kind),
        )
    detail = body.get("detail")
    if not isinstance(detail, str):
        raise RolesProtocolError(f"LOST detail must be a string, got {detail!r}")
    return Lost(index=_field(body, "index", kind), pid=_field(body, "pid", kind), detail=detail)
