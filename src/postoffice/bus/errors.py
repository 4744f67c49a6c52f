"""The bus's errors, one tree under core.errors: layout, capacity, limits, lifecycle, and
the control protocol's refusals (each with the `wire_code` its error reply carries)."""

from __future__ import annotations

from postoffice.core.errors import (
    BrokenError,
    ClosedError,
    ConfigError,
    LimitExceeded,
    PostOfficeError,
    ProtocolError,
    StorageError,
)


class BusError(PostOfficeError):
    """Root of the bus's errors."""

    wire_code = "BUS"


class BusUnavailableError(BusError, ImportError):
    """The bus's C extension is not built (no C compiler or Python headers at install
    time); an ImportError too, so `pytest.importorskip` and `except ImportError` work."""

    wire_code = "UNAVAILABLE"


class BusLayoutError(BusError):
    """A name, size or field does not fit the shared-memory layout, or a mapped file is
    not the block it should be (wrong magic, version or size)."""

    wire_code = "LAYOUT"


class BusConfigError(BusError, ConfigError):
    """A channel or user was asked for with a bad parameter (zero slots, a NUL in a name)."""


class TooManyUsersError(BusError, LimitExceeded):
    """A channel already has 64 publishers or 64 subscribers: one bit each in a u64."""

    wire_code = "TOO_MANY_USERS"


class CapacityError(BusError, LimitExceeded):
    """An unreliable channel has too few slots for its users (the admission rule), or a
    channel cannot grow further."""

    wire_code = "CAPACITY"


class MessageSizeError(BusError, LimitExceeded):
    """A publish of zero bytes, more than the buffer given, or past MAX_SLOT_BYTES."""

    wire_code = "SIZE"


class ChecksumError(BusError):
    """A message's payload does not match its checksum."""

    wire_code = "CHECKSUM"


class BusStorageError(BusError, StorageError):
    """A shared-memory file could not be created, sized, mapped or removed."""


class BusClosedError(BusError, ClosedError):
    """The channel, publisher or subscriber was closed."""


class BusUsageError(BusError):
    """An operation out of turn: publish without a buffer, wait on an unreliable
    publisher, a second buffer while one is open."""

    wire_code = "USAGE"


class BusProtocolError(BusError, ProtocolError):
    """A bus control message is malformed: a bad frame type, field, length or string."""

    wire_code = "PROTO"


class BusLimitError(BusError, LimitExceeded):
    """A request asks past one of the server's limits: too many clients or channels, a
    channel too large, a name too long."""

    wire_code = "LIMIT"


class BusStateError(BusError):
    """A request out of turn on its connection: a second Init, anything before Init."""

    wire_code = "STATE"


class BusNotFoundError(BusError):
    """No such channel, or no such publisher or subscriber on it."""

    wire_code = "NOT_FOUND"


class BusMismatchError(BusError):
    """A user's parameters disagree with its channel's: type, num_slots, slot size,
    reliability of its publishers, fixed size, checksum."""

    wire_code = "MISMATCH"


class BusServerError(BusError):
    """The bus server refused a request with a code this client does not know, or failed
    inside (`ERR`)."""

    wire_code = "ERR"


class BusConnectionError(BusError, BrokenError):
    """The bus server cannot be reached, or closed or broke the connection."""

    wire_code = "BROKEN"
