"""The one error hierarchy: every error the project raises derives from PostOfficeError."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar, TypeVar


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
