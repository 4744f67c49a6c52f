"""Errors of the command server; `wire_code` is the RESP error prefix a client sees."""

from __future__ import annotations

from postoffice.core.errors import LimitExceeded, PostOfficeError, ProtocolError
from postoffice.core.resp import RespLimitError, RespProtocolError

__all__ = [
    "BusyGroupError",
    "CommandError",
    "NoGroupError",
    "RateLimitedError",
    "ReplyTooLargeError",
    "RespLimitError",
    "RespProtocolError",
    "StoreUnavailableError",
    "TransactionLimitError",
    "WorkerUnavailableError",
    "WrongTypeError",
]


class CommandError(PostOfficeError):
    """A command was refused; the connection stays usable. The reply is `-ERR <message>`."""

    wire_code = "ERR"


class WrongTypeError(CommandError):
    """A command on one kind of value met a key holding another."""

    wire_code = "WRONGTYPE"


class NoGroupError(CommandError):
    """A stream command named a consumer group (or a stream) that does not exist."""

    wire_code = "NOGROUP"


class BusyGroupError(CommandError):
    """XGROUP CREATE named a consumer group that exists already."""

    wire_code = "BUSYGROUP"


class RateLimitedError(CommandError, LimitExceeded):
    """The client sent commands faster than its rate limit allows."""

    wire_code = "RATELIMIT"


class ReplyTooLargeError(CommandError, LimitExceeded):
    """A command's reply would pass the server's `max_reply_bytes`; nothing was sent."""

    wire_code = "ERR"


class TransactionLimitError(CommandError, LimitExceeded):
    """A MULTI's queue went over a limit; its EXEC answers EXECABORT."""


class StoreUnavailableError(CommandError):
    """The store behind the keyspace commands cannot be reached; try again later."""

    wire_code = "TRYAGAIN"


class WorkerUnavailableError(CommandError):
    """With --workers: a worker (or the primary) did not answer a cross-worker command in
    time, or went away before answering; the reply names which and the deadline."""


class ChannelError(ProtocolError):
    """A channel frame whose payload is not the JSON object its kind requires."""
