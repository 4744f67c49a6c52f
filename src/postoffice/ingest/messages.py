"""The ingest messages as values: typed messages, file ids, names, limits, index ranges.

Ingest layer, pure: no I/O and no codec (protocol.py puts these messages on the wire).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NewType, TypeAlias, final

from postoffice.ingest.errors import BadNameError, ErrorCode, IngestProtocolError

__all__ = [
    "DIGEST_BYTES",
    "DIGEST_SHOWN",
    "FILE_ID_BYTES",
    "MAX_CHUNKS",
    "MAX_CHUNK_BYTES",
    "MAX_NAME_BYTES",
    "MAX_STATUS_RANGES",
    "MAX_SUBSCRIBE_IDS",
    "Ack",
    "Chunk",
    "ChunkStored",
    "ErrorReply",
    "Failed",
    "FileId",
    "Message",
    "Ping",
    "Pong",
    "Published",
    "Query",
    "Reply",
    "Request",
    "Status",
    "Subscribe",
    "Subscribed",
    "UploadState",
    "check_name",
    "file_id_hex",
    "missing_ranges",
    "parse_file_id",
    "ranges",
]

FileId = NewType("FileId", bytes)
"""The client's 16 opaque bytes naming one upload; shown as 32 lowercase hex chars."""

FILE_ID_BYTES: Final = 16

MAX_NAME_BYTES: Final = 255
"""Longest file name, in UTF-8 bytes: the usual file system NAME_MAX."""

MAX_CHUNK_BYTES: Final = 8 * 1024 * 1024
"""Default limit on one chunk's data, in bytes: a server buffers a whole chunk per
connection before it is durable, so this bounds that memory."""

MAX_CHUNKS: Final = 2**24
"""Most chunks in one upload: bounds the committed-index set a server keeps per upload
(16 Mi chunks of 8 MiB is 128 TiB, far past any real file)."""

MAX_SUBSCRIBE_IDS: Final = 1024
"""Most file ids in one SUBSCRIBE or SUBSCRIBED: keeps the message at 16 KiB."""

MAX_STATUS_RANGES: Final = 65536
"""Most missing ranges in one STATUS (512 KiB): a server lists the first ones, the
client sends those and queries again."""

DIGEST_BYTES: Final = 16
"""An XXH3-128 digest, in its canonical (big-endian) byte order."""

DIGEST_SHOWN: Final = 12
"""Error messages and reprs show at most this many hex chars of a digest."""

# Path separators and control characters (C0, DEL and C1: Unicode category Cc).
_NAME_FORBIDDEN: Final = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")
_HEX_ID: Final = re.compile(r"[0-9a-fA-F]{32}")


class UploadState(enum.IntEnum):
    """Where an upload stands, as a STATUS reply reports it."""

    UNKNOWN = 0
    UPLOADING = 1
    ASSEMBLING = 2
    PUBLISHED = 3
    FAILED = 4


@final
@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Chunk:
    """One piece of an upload's compressed payload (client -> data port).

    `size` is the whole compressed payload's length (the sum of all chunk lengths),
    `payload_digest` the XXH3-128 of that whole payload (what names the upload's one
    content: every chunk of an upload carries the same), and `digest` the chunk digest
    (chunk_digest) of this chunk's fields and `data`. A FRAMED chunk (`content_size` not
    None) holds exactly one zstd frame that carries its content size: `content_size` is
    the whole decompressed file's length and `content_offset` where this chunk's output
    starts in it, so the server can decompress chunks apart, in any order.
    """

    file_id: FileId
    index: int
    total: int
    size: int
    name: str
    payload_digest: bytes
    digest: bytes
    data: bytes | memoryview
    content_size: int | None = None
    content_offset: int = 0

    def __repr__(self) -> str:
        # Never print up to 8 MiB of data into a log line.
        framed = (
            ""
            if self.content_size is None
            else f"content_size={self.content_size}, content_offset={self.content_offset}, "
        )
        return (
            f"Chunk(file_id={self.file_id.hex()}, index={self.index}, total={self.total}, "
            f"size={self.size}, name={self.name!r}, {framed}"
            f"payload_digest={self.payload_digest.hex()[:DIGEST_SHOWN]}..., "
            f"digest={self.digest.hex()[:DIGEST_SHOWN]}..., data=<{len(self.data)} bytes>)"
        )


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """Ask for an upload's state and missing chunks (client -> data port)."""

    file_id: FileId


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Liveness probe on a data or ack port; answered with Pong."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe:
    """Watch these uploads' events on the ack port (at most MAX_SUBSCRIBE_IDS)."""

    file_ids: tuple[FileId, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """A chunk is durable. `committed` counts the upload's committed chunks now."""

    file_id: FileId
    index: int
    committed: int
    total: int
    duplicate: bool = False
    complete: bool = False
    published: bool = False


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """Reply to Query: state, counts and the missing indexes as inclusive ranges."""

    file_id: FileId
    state: UploadState
    total: int
    committed: int
    size: int
    name: str
    missing: tuple[tuple[int, int], ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """Reply to Ping."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """A request was refused; the connection stays open unless code is BAD_FRAME."""

    code: ErrorCode
    message: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed:
    """Reply to Subscribe: the ids now watched."""

    file_ids: tuple[FileId, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkStored:
    """Ack-port event: a chunk of a watched upload is durable (from any data port)."""

    file_id: FileId
    index: int
    committed: int
    total: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    """Ack-port event: the upload is in files/ under `name`; `size` and `digest` (XXH3-128)
    are of the decompressed file, `payload_digest` (XXH3-128) of the compressed payload
    the server decompressed; `replaced` says a file of that name was replaced."""

    file_id: FileId
    name: str
    size: int
    digest: bytes
    payload_digest: bytes
    replaced: bool = False


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    """Ack-port event: the upload will not be published (assembly failed, aborted)."""

    file_id: FileId
    code: ErrorCode
    message: str


Request: TypeAlias = Chunk | Query | Ping | Subscribe
Reply: TypeAlias = Ack | Status | Pong | ErrorReply | Subscribed | ChunkStored | Published | Failed
Message: TypeAlias = Request | Reply


def file_id_hex(fid: bytes) -> str:
    """Return the 32 lowercase hex chars that show a file id in paths, logs and control."""
    return fid.hex()


def parse_file_id(text: str) -> FileId:
    """Parse 32 hex chars (either case) into a FileId.

    Raises IngestProtocolError if `text` is anything else.
    """
    if _HEX_ID.fullmatch(text) is None:
        raise IngestProtocolError(f"file id {text[:40]!r} is not 32 hex characters")
    return FileId(bytes.fromhex(text))


def check_name(name: str) -> str:
    """Return `name` if it is an acceptable upload file name, see docs/protocols/ingest.md.

    Raises BadNameError naming the rule it breaks.
    """
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise BadNameError(f"name {name!r} is not encodable as utf-8") from exc
    if size == 0:
        raise BadNameError("name is empty")
    if size > MAX_NAME_BYTES:
        raise BadNameError(f"name of {size} bytes exceeds limit {MAX_NAME_BYTES}")
    if name in (".", ".."):
        raise BadNameError(f"name {name!r} is reserved")
    bad = _NAME_FORBIDDEN.search(name)
    if bad is not None:
        char = bad.group()
        if char in "/\\":
            raise BadNameError(f"name {name!r} contains path separator {char!r}")
        raise BadNameError(f"name {name!r} contains control character 0x{ord(char):02x}")
    if name[0] == ".":
        raise BadNameError(f"name {name!r} starts with '.'")
    if name[0].isspace() or name[-1].isspace():
        raise BadNameError(f"name {name!r} has leading or trailing whitespace")
    return name


def ranges(indexes: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Collapse indexes (any order, duplicates allowed) into sorted inclusive ranges."""
    out: list[tuple[int, int]] = []
    for index in sorted(set(indexes)):
        if out and index == out[-1][1] + 1:
            out[-1] = (out[-1][0], index)
        else:
            out.append((index, index))
    return tuple(out)


def missing_ranges(committed: Iterable[int], total: int) -> tuple[tuple[int, int], ...]:
    """Return the inclusive ranges of indexes in 0..total-1 that are not in `committed`.

    Costs O(k log k) for k committed indexes, never O(total).
    """
    out: list[tuple[int, int]] = []
    expected = 0
    for index in sorted(set(committed)):
        if index >= total:
            break
        if index > expected:
            out.append((expected, index - 1))
        expected = max(expected, index + 1)
    if expected < total:
        out.append((expected, total - 1))
    return tuple(out)
