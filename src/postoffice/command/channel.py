"""The control channel between the command server's primary and its workers: messages.

Pure (sans-I/O): each message is one core frame (docs/protocols/frame.md) whose payload
is a small UTF-8 JSON object; the shell is command/link.py. Byte layout and the ops in
docs/protocols/command-workers.md. Control plane only: no client command crosses it.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Final

from postoffice.command.errors import ChannelError
from postoffice.core.framing import Frame, MessageStream, encode_parts

#: A CLIENT LIST of 10,000 clients is about 3 MB of JSON; the frame ceiling bounds it.
MAX_CHANNEL_PAYLOAD_BYTES: Final = 16 * 1024 * 1024
#: Longest op or event name: they are short words; a longer one is a bug or garbage.
MAX_NAME_CHARS: Final = 64


class Kind(enum.IntEnum):
    """The frame `type` of each message."""

    CALL = 1  # ask the other side to do `op` with `args`; answered by RESULT or FAILURE
    RESULT = 2  # the answer to the CALL with the same request id: `value`
    FAILURE = 3  # the CALL with the same request id failed: `message`
    NOTICE = 4  # one-way: `event` with `args`, request id 0, never answered


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """Ask the other side to run `op`; `args` are the op's named JSON arguments."""

    op: str
    args: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """A CALL's answer: any JSON value."""

    value: object = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """A CALL that failed, with the message a client may be shown."""

    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """A one-way message (no answer is sent)."""

    event: str
    args: dict[str, object] = field(default_factory=dict)


Message = Call | Result | Failure | Notice


def encode_message(request_id: int, message: Message) -> bytes:
    """The wire bytes of `message` (a CALL and its answer share `request_id`).

    Raises ChannelError for a value JSON cannot hold, FrameError (FrameTooLarge) for a
    payload past MAX_CHANNEL_PAYLOAD_BYTES or a request id out of range.
    """
    body: dict[str, object]
    match message:
        case Call(op=op, args=args):
            kind, body = Kind.CALL, {"op": op, "args": args}
        case Result(value=value):
            kind, body = Kind.RESULT, {"value": value}
        case Failure(message=text):
            kind, body = Kind.FAILURE, {"message": text}
        case Notice(event=event, args=args):
            kind, body = Kind.NOTICE, {"event": event, "args": args}
    try:
        payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ChannelError(f"channel message cannot be encoded as JSON: {exc}") from None
    return encode_parts(int(kind), 0, request_id, payload)


def decode_message(frame: Frame) -> Message:
    """The message one frame holds. Raises ChannelError when it is not a valid one."""
    try:
        kind = Kind(frame.type)
    except ValueError:
        raise ChannelError(f"channel frame type {frame.type} is not one of 1..4") from None
    try:
        body = json.loads(frame.payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChannelError(f"channel payload is not JSON: {exc}") from None
    except RecursionError:  # the scanner recurses once per level of nesting
        raise ChannelError("channel payload is not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ChannelError(f"channel payload is a {type(body).__name__}, expected an object")
    match kind:
        case Kind.CALL:
            return Call(op=_name(body, "op"), args=_args(body))
        case Kind.RESULT:
            return Result(value=body.get("value"))
        case Kind.FAILURE:
            text = body.get("message")
            if not isinstance(text, str):
                raise ChannelError(f"channel FAILURE message is {text!r}, expected a string")
            return Failure(message=text)
        case Kind.NOTICE:
            return Notice(event=_name(body, "event"), args=_args(body))


def _name(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise ChannelError(
            f"channel field {key!r} is {value!r}, expected a name of 1..{MAX_NAME_CHARS} chars"
        )
    return value


def _args(body: dict[str, object]) -> dict[str, object]:
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise ChannelError(f"channel field 'args' is {args!r}, expected an object")
    return args


def channel_stream() -> MessageStream[Message]:
    """A decoder for one end of the channel: feed bytes, take (request id, message)."""
    return MessageStream(decode_message, MAX_CHANNEL_PAYLOAD_BYTES)


__all__ = [
    "MAX_CHANNEL_PAYLOAD_BYTES",
    "Call",
    "ChannelError",
    "Failure",
    "Kind",
    "Message",
    "Notice",
    "Result",
    "channel_stream",
    "decode_message",
    "encode_message",
]
