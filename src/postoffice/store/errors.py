"""The store's errors, one tree under core.errors, and `Status`, the code each one carries
on the wire (docs/protocols/store.md): engine errors, protocol errors and a refused request."""

from __future__ import annotations

import enum
from typing import final

from postoffice.core.errors import (
    ClosedError,
    LimitExceeded,
    PostOfficeError,
    ProtocolError,
    StorageError,
)


class Status(enum.IntEnum):
    """The first byte of every response. All but a broken frame keep the connection."""

    OK = 0
    NOT_FOUND = 1
    BAD_REQUEST = 2
    TOO_LARGE = 3
    STORAGE = 4
    BUSY = 5
    SHUTTING_DOWN = 6
    INTERNAL = 7


class StoreStorageError(StorageError):
    """The store's files could not be read or written (an OS or LMDB error)."""


class LogCorruptError(StoreStorageError):
    """A log record failed its checksum or its framing; its bytes are never returned."""


class StoreLockedError(StoreStorageError):
    """Another process (or another open Store) already holds the store's lock."""


class StoreClosedError(ClosedError):
    """The Store was closed and can no longer be used."""


class KeySizeError(LimitExceeded):
    """A key is empty or longer than `max_key_bytes`."""


class ValueSizeError(LimitExceeded):
    """A value is longer than `max_value_bytes`."""


class StoreProtocolError(ProtocolError):
    """A well-framed store request or response is malformed; answered with the Status its
    `wire_code` names (`status_of`)."""

    wire_code = "BAD_REQUEST"


@final
class StoreLimitError(StoreProtocolError, LimitExceeded):
    """A key, value, bound or batch is over its limit; answer with TOO_LARGE."""

    wire_code = "TOO_LARGE"


def status_of(error: PostOfficeError) -> Status:
    """The Status an error is answered with: the one its `wire_code` names, else INTERNAL."""
    return Status.__members__.get(error.wire_code, Status.INTERNAL)


class StoreRequestError(PostOfficeError):
    """The server refused a request; `status` says how."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.wire_code = status.name  # type: ignore[misc]  # per-instance code of the reply
