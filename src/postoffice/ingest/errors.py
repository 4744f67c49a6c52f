"""Errors of the ingest service; each carries the wire code a client sees in an ERROR reply."""

from __future__ import annotations

import enum
from typing import Final

from postoffice.core.errors import LimitExceeded, PostOfficeError, ProtocolError, StorageError


class ErrorCode(enum.IntEnum):
    """The u16 `code` of an ERROR reply or a FAILED event (docs/protocols/ingest.md)."""

    BAD_FRAME = 1  # the frame itself is broken: the server closes the connection
    BAD_MESSAGE = 2  # a well-framed message with a malformed payload
    CHECKSUM = 3  # the chunk does not hash to the XXH3-128 digest it carries
    CONFLICT = 4  # a committed index re-sent with other bytes, or total/size/name changed
    BAD_NAME = 5  # the file name is not acceptable
    TOO_LARGE = 6  # a chunk, a name or an output over its limit
    OUT_OF_RANGE = 7  # index >= total, total of 0, too many chunks
    STORAGE = 8  # the server could not persist the chunk (disk full, I/O error)
    SHUTTING_DOWN = 9  # the server is draining; retry elsewhere or later
    UNKNOWN_FILE = 10  # no upload with that file id
    ASSEMBLY = 11  # the payload is complete but is not valid Zstandard, or is a bomb
    ABORTED = 12  # an operator aborted the upload
    BUSY = 13  # the server has its most uploads in progress: a new one must wait
    MOVED = 14  # another node of a cluster owns the upload: its message names that node

    @classmethod
    def _missing_(cls, value: object) -> ErrorCode | None:
        """A code a newer server may send (15 to 65535): a member named CODE_<n>, which a
        client treats as "refused, connection open" as the protocol asks. 0 is no code."""
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 0xFFFF:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"CODE_{value}"
        member._value_ = value
        return member


class IngestError(PostOfficeError):
    """Root of the ingest errors. `wire_code` names the ErrorCode an ERROR reply or a FAILED
    event carries (`error_code` gives its number), and prefixes the control port's reply."""

    wire_code = "BAD_MESSAGE"


class IngestProtocolError(IngestError, ProtocolError):
    """A message payload that does not parse."""

    wire_code = "BAD_MESSAGE"


class ChecksumError(IngestError):
    """A chunk whose fields, name and data do not hash to the XXH3-128 digest it carries."""

    wire_code = "CHECKSUM"


class ConflictError(IngestError):
    """A chunk that contradicts what is already committed for its payload."""

    wire_code = "CONFLICT"


class BadNameError(IngestError):
    """A file name that could escape files/ or is not a plain name."""

    wire_code = "BAD_NAME"


class IngestLimitError(IngestError, LimitExceeded):
    """A chunk, name or decompressed output over its limit."""

    wire_code = "TOO_LARGE"


class OutOfRangeError(IngestError):
    """An index or total outside what the payload allows."""

    wire_code = "OUT_OF_RANGE"


class IngestStorageError(IngestError, StorageError):
    """The chunk could not be made durable."""

    wire_code = "STORAGE"


class TooManyUploadsError(IngestError, LimitExceeded):
    """A chunk would start an upload while the server has max_uploads in progress."""

    wire_code = "BUSY"


class ShuttingDownError(IngestError):
    """The server is draining, or the chunk's data port is closing: the chunk was not stored."""

    wire_code = "SHUTTING_DOWN"


class MovedError(IngestError):
    """Another node of the cluster owns the upload: nothing was stored. The message is the
    fixed text `moved <node> <host>:<health port> <data port>,...` (ownership.py writes
    it, the client's routing.py parses it)."""

    wire_code = "MOVED"


class UnknownFileError(IngestError):
    """No upload is known under that file id."""

    wire_code = "UNKNOWN_FILE"


class AssemblyError(IngestError):
    """The complete payload could not be decompressed and published."""

    wire_code = "ASSEMBLY"


class OutputLimitError(AssemblyError):
    """The decompressed output would pass its size limit (a bomb, or too large a file)."""


class OutputRatioError(OutputLimitError):
    """The decompressed output passed its ratio limit to the compressed bytes (a bomb)."""


# -- the control port's refusals (RESP error replies; `wire_code` is the prefix) -----------


class ControlError(PostOfficeError):
    """A control command was refused; the connection stays usable (`-ERR message`)."""

    wire_code = "ERR"


# -- a client's view of the server's error codes ----------------------------------------

_ERRORS: Final[dict[ErrorCode, type[IngestError]]] = {
    ErrorCode.BAD_FRAME: IngestProtocolError,
    ErrorCode.BAD_MESSAGE: IngestProtocolError,
    ErrorCode.CHECKSUM: ChecksumError,
    ErrorCode.CONFLICT: ConflictError,
    ErrorCode.BAD_NAME: BadNameError,
    ErrorCode.TOO_LARGE: IngestLimitError,
    ErrorCode.OUT_OF_RANGE: OutOfRangeError,
    ErrorCode.STORAGE: IngestStorageError,
    ErrorCode.SHUTTING_DOWN: IngestError,  # no class of their own for these two
    ErrorCode.UNKNOWN_FILE: UnknownFileError,
    ErrorCode.ASSEMBLY: AssemblyError,
    ErrorCode.ABORTED: IngestError,
    ErrorCode.BUSY: TooManyUploadsError,
    ErrorCode.MOVED: MovedError,
}


def error_code(error: IngestError) -> ErrorCode:
    """The numeric code `error` goes on the wire with."""
    return ErrorCode[error.wire_code]


def error_for(code: ErrorCode, message: str) -> IngestError:
    """The exception that stands for a server's ERROR reply or FAILED event."""
    return _ERRORS.get(code, IngestError)(message)


class UnreadablePayloadError(IngestStorageError):
    """A payload directory recover() cannot use; the message says why."""
