"""The one error hierarchy: every error the project raises derives from PostOfficeError."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar, Final, TypeVar, final


class PostOfficeError(Exception):
    """Root of every error Post Office raises on purpose.

    `wire_code` is the code an error carries when it reaches a peer: the RESP error
    prefix for the command protocol, a status name for the binary protocols.
    """

    wire_code: ClassVar[str] = "ERR"


class ConfigError(PostOfficeError):
    """A setting is missing, malformed or out of range; the message names the key."""

    wire_code = "ERR"


class ProtocolError(PostOfficeError):
    """The peer sent bytes that break the protocol."""

    wire_code = "PROTO"


class LimitExceeded(PostOfficeError):
    """A request, a connection count or a rate went over a configured limit."""

    wire_code = "LIMIT"


class ClosedError(PostOfficeError):
    """We closed the resource (shutdown, idle timeout) and it can no longer be used."""

    wire_code = "CLOSED"


class BrokenError(PostOfficeError):
    """The peer or the operating system broke the resource (reset, EPIPE, lost child)."""

    wire_code = "BROKEN"


class StorageError(PostOfficeError):
    """Persistent state could not be read or written."""

    wire_code = "STORAGE"


class StateMachineError(RuntimeError):
    """A bug, not a peer's fault: code asked a state machine for a move its table forbids.

    Deliberately outside PostOfficeError, so no handler turns it into a reply to a peer.
    """


_Error = TypeVar("_Error", bound=PostOfficeError)


def translate_os_error(exc: OSError, error_class: type[_Error], what: str) -> _Error:
    """The error of `error_class` that reports `exc` at a module's boundary.

    Its message is `cannot <what>: <the OS's reason>` (`what` names the act and the path,
    e.g. `fsync var/store/log/00000001.seg`); raise it `from exc`. For a hot path, where
    a `try` costs less than a context manager; elsewhere use `os_errors`.
    """
    return error_class(f"cannot {what}: {exc.strerror or exc}")


@contextlib.contextmanager
def os_errors(error_class: type[PostOfficeError], what: str) -> Iterator[None]:
    """Raise `translate_os_error(exc, error_class, what)` from any OSError inside."""
    try:
        yield
    except OSError as exc:
        raise translate_os_error(exc, error_class, what) from exc


class FrameError(ProtocolError):
    """The peer sent bytes that are not a valid frame, or a frame could not be encoded.

    `request_id` is set when the error belongs to a frame whose version-1 header was
    read (a reserved field set, an oversized payload, a checksum mismatch), so a service
    can address its error reply; it is None for a bad magic or an unknown version, where
    the bytes are no frame this decoder can read, and for encoding errors.
    """

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@final
class FrameTooLarge(FrameError, LimitExceeded):
    """A frame's payload length is over the limit; carries `length` and `limit`."""

    wire_code = LimitExceeded.wire_code

    def __init__(self, length: int, limit: int, *, request_id: int | None = None) -> None:
        super().__init__(
            f"frame payload length {length} exceeds limit {limit}", request_id=request_id
        )
        self.length = length
        self.limit = limit


class RespProtocolError(ProtocolError):
    """The bytes break RESP or the text protocol: framing is lost, so the connection closes."""

    wire_code = "ERR"


class RespLimitError(RespProtocolError, LimitExceeded):
    """A line, bulk string or array went over its limit (then the connection closes)."""


# -- the command protocol's refusals (the connection stays) ---------------------------

#: NOAUTH's message, as Redis words it.
AUTH_REQUIRED: Final = "Authentication required."
BAD_CREDENTIALS: Final = "invalid username-password pair or user is disabled."


class RespRefusal(PostOfficeError):
    """A command the port refuses with a code of the command protocol; the connection stays."""


class NoAuthError(RespRefusal):
    """A command other than AUTH, HELLO, QUIT or HELP before AUTH, on a port with a password."""

    wire_code = "NOAUTH"

    def __init__(self, message: str = AUTH_REQUIRED) -> None:
        super().__init__(message)


class WrongPassError(RespRefusal):
    """AUTH (or HELLO's AUTH option) named a user other than `default` or a wrong password."""

    wire_code = "WRONGPASS"

    def __init__(self, message: str = BAD_CREDENTIALS) -> None:
        super().__init__(message)


class NoProtoError(RespRefusal):
    """HELLO asked for a RESP version other than 2 or 3."""

    wire_code = "NOPROTO"


class PatternTooLongError(RespRefusal, LimitExceeded):
    """A glob pattern (SCAN MATCH, CONFIG GET) longer than its command allows; the reply
    is `-ERR <message>` and the connection stays."""

    wire_code = "ERR"
