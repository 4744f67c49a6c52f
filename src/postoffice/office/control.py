"""The office control protocol: requests (status, add_users, pause, resume) and replies
(ok, error, snapshot), each a core frame with a JSON object payload. Office layer, pure
(sans-I/O); the socket's server and client are controlsocket.py. Byte by byte:
docs/protocols/office-control.md."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Final

from postoffice.core.errors import FrameError
from postoffice.core.framing import Frame, MessageStream, encode_parts
from postoffice.office.errors import ControlProtocolError

__all__ = [
    "MAX_ADD_USERS",
    "MAX_REPLY_PAYLOAD_BYTES",
    "MAX_REQUEST_PAYLOAD_BYTES",
    "AddUsers",
    "ErrorReply",
    "Kind",
    "Ok",
    "Pause",
    "Reply",
    "Request",
    "Resume",
    "SnapshotReply",
    "Status",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "reply_stream",
    "request_stream",
]

#: A request is a tiny JSON object (`{"count":5}`); 4 KiB leaves room for spacing and
#: refuses a flood before it is buffered.
MAX_REQUEST_PAYLOAD_BYTES: Final = 4096
#: A snapshot lists every counter (up to 100,000 of them at about 60 bytes) and 100 days:
#: the frame ceiling holds it.
MAX_REPLY_PAYLOAD_BYTES: Final = 16 * 1024 * 1024
#: The most users one add_users may ask for: N_NEW_USERS's own upper bound.
MAX_ADD_USERS: Final = 1_000_000


class Kind(enum.IntEnum):
    """The frame `type` of each message: requests below 64, replies from 64."""

    STATUS = 1
    ADD_USERS = 2
    PAUSE = 3
    RESUME = 4
    OK = 64
    ERROR = 65
    SNAPSHOT = 66


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """Ask for the live state; answered by SNAPSHOT."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AddUsers:
    """Ask for `count` users more from the next day (None: the run's N_NEW_USERS)."""

    count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    """Hold the simulated clock after the current minute."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Let the simulated clock go on."""


Request = Status | AddUsers | Pause | Resume


@dataclass(frozen=True, slots=True, kw_only=True)
class Ok:
    """A request was done: `message` says what, `fields` carry the request's values."""

    message: str
    fields: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """A request (or the connection, with request id 0) failed: `code` is the error's
    wire code (PROTO, LIMIT, REFUSED, CLOSED, ERR) and `message` says why."""

    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotReply:
    """The live state (live.LiveSnapshot.to_json)."""

    snapshot: dict[str, object]


Reply = Ok | ErrorReply | SnapshotReply

_REQUEST_KIND: Final[dict[type[Request], Kind]] = {
    Status: Kind.STATUS,
    AddUsers: Kind.ADD_USERS,
    Pause: Kind.PAUSE,
    Resume: Kind.RESUME,
}
_MAX_CODE_CHARS: Final = 16


def _dumps(body: dict[str, object]) -> bytes:
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ControlProtocolError(f"control message cannot be encoded as JSON: {exc}") from None


def encode_request(request_id: int, request: Request) -> bytes:
    """The wire bytes of `request`. Raises ControlProtocolError for request id 0 or an
    add_users count out of 1..MAX_ADD_USERS, FrameError for a request id past 2**64-1."""
    if request_id == 0:
        raise ControlProtocolError("control request id 0 is reserved")
    body: dict[str, object] = {}
    match request:
        case AddUsers(count=count) if count is not None:
            _check_count(count)
            body = {"count": count}
        case Status() | AddUsers() | Pause() | Resume():
            pass
    return encode_parts(int(_REQUEST_KIND[type(request)]), 0, request_id, _dumps(body))


def encode_reply(request_id: int, reply: Reply) -> bytes:
    """The wire bytes of `reply` (request id 0: an error of the connection, not of one
    request). Raises ControlProtocolError for a value JSON cannot hold, FrameError for a
    payload past MAX_REPLY_PAYLOAD_BYTES or a request id out of range."""
    match reply:
        case Ok(message=message, fields=fields):
            kind, body = Kind.OK, {**fields, "message": message}
        case ErrorReply(code=code, message=message):
            kind, body = Kind.ERROR, {"code": code, "message": message}
        case SnapshotReply(snapshot=snapshot):
            kind, body = Kind.SNAPSHOT, snapshot
    payload = _dumps(body)
    if len(payload) > MAX_REPLY_PAYLOAD_BYTES:
        raise FrameError(
            f"control reply payload {len(payload)} bytes exceeds limit {MAX_REPLY_PAYLOAD_BYTES}"
        )
    return encode_parts(int(kind), 0, request_id, payload)


def _object(frame: Frame) -> dict[str, object]:
    if frame.flags:
        raise ControlProtocolError(f"control frame flags 0x{frame.flags:04x}, expected 0")
    try:
        body = json.loads(frame.payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlProtocolError(f"control payload is not JSON: {exc}") from None
    except RecursionError:  # the scanner recurses once per level of nesting
        raise ControlProtocolError("control payload is not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ControlProtocolError(
            f"control payload is a JSON {type(body).__name__}, expected an object"
        )
    return body


def _check_count(count: object) -> int:
    if type(count) is not int or not 1 <= count <= MAX_ADD_USERS:
        raise ControlProtocolError(
            f"add_users count must be an integer from 1 to {MAX_ADD_USERS}, got {count!r:.40}"
        )
    return count


def _no_other_keys(name: str, body: dict[str, object], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        listed = ", ".join(repr(k) for k in extra)
        takes = f"only {allowed[0]!r}" if allowed else "no fields"
        raise ControlProtocolError(f"{name} takes {takes}, got {listed:.80}")


def decode_request(frame: Frame) -> Request:
    """The request one frame holds. Raises ControlProtocolError for a reply type or an
    unknown one, request id 0, flags, a payload that is not a JSON object, or a field
    that does not belong."""
    if frame.request_id == 0:
        raise ControlProtocolError("control request id 0 is reserved")
    try:
        kind = Kind(frame.type)
    except ValueError:
        kind = None
    if kind is None or kind >= Kind.OK:
        raise ControlProtocolError(
            f"control frame type {frame.type} is not a request (1 status, 2 add_users,"
            " 3 pause, 4 resume)"
        )
    body = _object(frame)
    match kind:
        case Kind.STATUS:
            _no_other_keys("status", body, ())
            return Status()
        case Kind.ADD_USERS:
            _no_other_keys("add_users", body, ("count",))
            count = body.get("count")
            return AddUsers(count=None if count is None else _check_count(count))
        case Kind.PAUSE:
            _no_other_keys("pause", body, ())
            return Pause()
        case _:
            _no_other_keys("resume", body, ())
            return Resume()


def decode_reply(frame: Frame) -> Reply:
    """The reply one frame holds. Raises ControlProtocolError for a request type or an
    unknown one, or a payload of the wrong shape."""
    body = _object(frame)
    match frame.type:
        case Kind.OK:
            message = body.pop("message", None)
            if not isinstance(message, str):
                raise ControlProtocolError(f"control ok message is {message!r:.40}, expected text")
            return Ok(message=message, fields=body)
        case Kind.ERROR:
            code, message = body.get("code"), body.get("message")
            if not (isinstance(code, str) and 0 < len(code) <= _MAX_CODE_CHARS):
                raise ControlProtocolError(f"control error code is {code!r:.40}, expected a word")
            if not isinstance(message, str):
                raise ControlProtocolError(
                    f"control error message is {message!r:.40}, expected text"
                )
            return ErrorReply(code=code, message=message)
        case Kind.SNAPSHOT:
            return SnapshotReply(snapshot=body)
        case _:
            raise ControlProtocolError(
                f"control frame type {frame.type} is not a reply (64 ok, 65 error, 66 snapshot)"
            )


def request_stream() -> MessageStream[Request]:
    """The server's decoder: bytes in, (request id, Request) out; frames over
    MAX_REQUEST_PAYLOAD_BYTES fail before their payload is buffered."""
    return MessageStream(decode_request, MAX_REQUEST_PAYLOAD_BYTES)


def reply_stream() -> MessageStream[Reply]:
    """The client's decoder: bytes in, (request id, Reply) out."""
    return MessageStream(decode_reply, MAX_REPLY_PAYLOAD_BYTES)
