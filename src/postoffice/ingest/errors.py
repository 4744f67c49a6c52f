"""Errors of the ingest service; each carries the wire code a client sees in an ERROR reply."""

from __future__ import annotations

import enum
from typing import ClassVar, Final

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


class IngestError(PostOfficeError):
    """Root of the ingest errors; `code` is what goes on the wire."""

    code: ClassVar[ErrorCode] = ErrorCode.BAD_MESSAGE
    wire_code = "INGEST"


class IngestProtocolError(IngestError, ProtocolError):
    """A message payload that does not parse."""

    code = ErrorCode.BAD_MESSAGE


class ChecksumError(IngestError):
    """A chunk whose fields, name and data do not hash to the XXH3-128 digest it carries."""

    code = ErrorCode.CHECKSUM


class ConflictError(IngestError):
    """A chunk that contradicts what is already committed for its payload."""

    code = ErrorCode.CONFLICT


class BadNameError(IngestError):
    """A file name that could escape files/ or is not a plain name."""

    code = ErrorCode.BAD_NAME


class IngestLimitError(IngestError, LimitExceeded):
    """A chunk, name or decompressed output over its limit."""

    code = ErrorCode.TOO_LARGE


class OutOfRangeError(IngestError):
    """An index or total outside what the payload allows."""

    code = ErrorCode.OUT_OF_RANGE


class IngestStorageError(IngestError, StorageError):
    """The chunk could not be made durable."""

    code = ErrorCode.STORAGE


class ShuttingDownError(IngestError):
    """The server is draining, or the chunk's data port is closing: the chunk was not stored."""

    code = ErrorCode.SHUTTING_DOWN


class UnknownFileError(IngestError):
    """No upload is known under that file id."""

    code = ErrorCode.UNKNOWN_FILE


class AssemblyError(IngestError):
    """The complete payload could not be decompressed and published."""

    code = ErrorCode.ASSEMBLY


class OutputLimitError(AssemblyError):
    """The decompressed output would pass its size limit (a bomb, or too large a file)."""


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
}


def error_for(code: ErrorCode, message: str) -> IngestError:
    """The exception that stands for a server's ERROR reply or FAILED event."""
    return _ERRORS.get(code, IngestError)(message)
