"""The ingest wire codec (data and ack ports): the messages of messages.py as core frames.

Ingest layer, pure sans-I/O, on top of core.framing. Wire format: docs/protocols/ingest.md.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Callable
from typing import Final, TypeVar, assert_never, cast

from postoffice.core import framing
from postoffice.core.errors import ConfigError
from postoffice.core.framing import NEED_DATA, Frame, NeedData
from postoffice.ingest.chunkdigest import (
    CHUNK_FIELDS,
    FRAMED_FIELDS,
    chunk_digest,
    chunk_fields,
    verify_chunk,
)
from postoffice.ingest.errors import (
    BadNameError,
    ErrorCode,
    IngestError,
    IngestLimitError,
    IngestProtocolError,
    OutOfRangeError,
)
from postoffice.ingest.messages import (
    DIGEST_BYTES,
    FILE_ID_BYTES,
    MAX_CHUNK_BYTES,
    MAX_CHUNKS,
    MAX_NAME_BYTES,
    MAX_STATUS_RANGES,
    MAX_SUBSCRIBE_IDS,
    Ack,
    Chunk,
    ChunkStored,
    ErrorReply,
    Failed,
    FileId,
    Message,
    Ping,
    Pong,
    Published,
    Query,
    Status,
    Subscribe,
    Subscribed,
    UploadState,
    check_name,
)

# Design
# ------
# Every message is one core frame: the frame type is the message type, the frame flags
# are 0 except CHUNK's SELF_CHECKED bit, and the payload layout is fixed per type
# (struct formats below). A CHUNK carries the XXH3-128 digest of the upload's whole
# payload (the one content its file id may have: chunks with another are CONFLICT) and
# the XXH3-128 digest of its own payload (all of it but that digest field), which is
# both its corruption check and the key that tells an idempotent re-send from a
# conflicting one; with SELF_CHECKED its frame CRC-32 is 0
# and not computed, so each byte is hashed once on each side. A CHUNK with the FRAMED
# flag carries 16 more bytes after its digest (content size, content offset): its data is
# one zstd frame the server may decompress apart from the others. There
# is no state machine here: `MessageDecoder` is `FrameDecoder` plus `decode`, and the
# two failure kinds stay apart on purpose. A FrameError means framing is lost and the
# connection must close; an IngestError means one well-framed message was bad, so the
# caller replies ERROR to `last_request_id` and keeps reading.
#
# `encode` checks only what the layout can carry (field widths, fixed-size ids); it
# does not apply decode's rules (names, index < total, the digest), so tools and tests can
# build invalid-but-framed messages to probe a server. Clients call `check_name` first.
# A decoded CHUNK's data is a memoryview into the frame's payload: no copy is made.

__all__ = [
    "CHUNK_OVERHEAD_BYTES",
    "FRAMED",
    "MAX_MESSAGE_BYTES",
    "NEED_DATA",
    "SELF_CHECKED",
    "MessageDecoder",
    "MsgType",
    "NeedData",
    "chunk_frame_parts",
    "decode",
    "decode_parts",
    "encode",
    "encode_chunk",
]

_CHUNK: Final = struct.Struct(">16sIIQH16s16s")
_ACK: Final = struct.Struct(">16sIIIB")
_STATUS: Final = struct.Struct(">16sBIIQH")
_CHUNK_STORED: Final = struct.Struct(">16sIII")
_PUBLISHED: Final = struct.Struct(">16sQ16s16sB")
_FAILED: Final = struct.Struct(">16sH")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_RANGE: Final = struct.Struct(">II")

SELF_CHECKED: Final = 0x0001
"""CHUNK frame flag: the frame CRC-32 is 0 and not checked; the chunk digest covers it."""

FRAMED: Final = 0x0002
"""CHUNK frame flag: the data is one zstd frame with its content size, and the header
carries the content size and offset (16 bytes) after the digest."""

_CHUNK_FLAGS: Final = SELF_CHECKED | FRAMED

CHUNK_OVERHEAD_BYTES: Final = _CHUNK.size + FRAMED_FIELDS.size + MAX_NAME_BYTES
"""Largest CHUNK payload minus its data: header (66 bytes, 82 when FRAMED) plus the
longest name."""

MAX_MESSAGE_BYTES: Final = MAX_CHUNK_BYTES + CHUNK_OVERHEAD_BYTES
"""Default frame payload limit of a MessageDecoder: the largest valid CHUNK."""

# ACK flag bits, and PUBLISHED's.
_ACK_DUPLICATE: Final = 0x01
_ACK_COMPLETE: Final = 0x02
_ACK_PUBLISHED: Final = 0x04
_PUBLISHED_REPLACED: Final = 0x01


class MsgType(enum.IntEnum):
    """The frame `type` of each ingest message."""

    CHUNK = 0x01
    QUERY = 0x02
    PING = 0x03
    ACK = 0x11
    STATUS = 0x12
    PONG = 0x13
    ERROR = 0x1F
    SUBSCRIBE = 0x21
    SUBSCRIBED = 0x31
    CHUNK_STORED = 0x32
    PUBLISHED = 0x33
    FAILED = 0x34


_TYPES: Final[dict[type, MsgType]] = {
    Chunk: MsgType.CHUNK,
    Query: MsgType.QUERY,
    Ping: MsgType.PING,
    Subscribe: MsgType.SUBSCRIBE,
    Ack: MsgType.ACK,
    Status: MsgType.STATUS,
    Pong: MsgType.PONG,
    ErrorReply: MsgType.ERROR,
    Subscribed: MsgType.SUBSCRIBED,
    ChunkStored: MsgType.CHUNK_STORED,
    Published: MsgType.PUBLISHED,
    Failed: MsgType.FAILED,
}


# --- encoding -------------------------------------------------------------------------


def _sized(what: str, value: bytes, size: int) -> bytes:
    # struct's "16s" pads or truncates silently; a wrong-sized id must fail instead.
    if len(value) != size:
        raise IngestProtocolError(f"{what} of {len(value)} bytes, expected {size}")
    return value


def _fid(value: bytes) -> bytes:
    return _sized("file id", value, FILE_ID_BYTES)


def _utf8(name: str) -> bytes:
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadNameError(f"name {name!r} is not encodable as utf-8") from exc


def _ids(file_ids: tuple[FileId, ...]) -> bytes:
    return _U16.pack(len(file_ids)) + b"".join([_fid(fid) for fid in file_ids])


def chunk_frame_parts(
    *,
    file_id: bytes,
    index: int,
    total: int,
    size: int,
    name: str,
    payload_digest: bytes,
    data: bytes | bytearray | memoryview,
    request_id: int,
    digest: bytes | None = None,
    self_checked: bool = True,
    content_size: int | None = None,
    content_offset: int = 0,
) -> tuple[bytes, bytes | bytearray | memoryview]:
    """Return one CHUNK frame as (everything before the data, the data itself), so a
    sender can write both without joining them; `data` is not copied.

    With `content_size` the chunk is FRAMED: its data must be one zstd frame holding
    bytes `content_offset ..` of a decompressed file of `content_size` bytes.

    `digest` defaults to the correct chunk_digest (give another to probe a server).
    With `self_checked` the frame has the SELF_CHECKED flag and a CRC-32 of 0; without
    it, flags 0 and a computed CRC-32. Checks only what the layout can carry, not
    decode's rules. Raises IngestProtocolError for a field out of range or a wrong-sized
    id or digest, BadNameError for a name UTF-8 cannot encode, FrameError for a request
    id out of range, FrameTooLarge past 16 MiB.
    """
    fields, name_bytes = chunk_fields(
        file_id=file_id,
        index=index,
        total=total,
        size=size,
        name=name,
        payload_digest=payload_digest,
        content_size=content_size,
        content_offset=content_offset,
    )
    if digest is None:
        digest = chunk_digest(fields, name_bytes, data)
    # The digest field sits between the first 50 bytes and the FRAMED ones it covers.
    split = CHUNK_FIELDS.size
    head = fields[:split] + _sized("digest", digest, DIGEST_BYTES) + fields[split:] + name_bytes
    length = len(head) + len(data)
    if length > framing.MAX_PAYLOAD_BYTES:
        raise framing.FrameTooLarge(length, framing.MAX_PAYLOAD_BYTES, request_id=request_id)
    if not 0 <= request_id <= framing.MAX_REQUEST_ID:
        raise framing.FrameError(
            f"frame request id {request_id} out of range 0..{framing.MAX_REQUEST_ID}"
        )
    framed = FRAMED if content_size is not None else 0
    if self_checked:
        flags, crc = SELF_CHECKED | framed, 0
    else:
        flags, crc = framed, zlib.crc32(data, zlib.crc32(head))
    header = framing.HEADER.pack(
        framing.MAGIC, framing.VERSION, MsgType.CHUNK, flags, 0, request_id, length, crc
    )
    return header + head, data


def encode_chunk(
    *,
    file_id: bytes,
    index: int,
    total: int,
    size: int,
    name: str,
    payload_digest: bytes,
    data: bytes | bytearray | memoryview,
    request_id: int,
    digest: bytes | None = None,
    self_checked: bool = True,
    content_size: int | None = None,
    content_offset: int = 0,
) -> bytes:
    """Return one CHUNK frame as one bytes object; see chunk_frame_parts."""
    head, body = chunk_frame_parts(
        file_id=file_id,
        index=index,
        total=total,
        size=size,
        name=name,
        payload_digest=payload_digest,
        data=data,
        request_id=request_id,
        digest=digest,
        self_checked=self_checked,
        content_size=content_size,
        content_offset=content_offset,
    )
    return b"".join((head, body))


def encode(msg: Message, request_id: int = 0) -> bytes:
    """Return the whole frame for `msg`; replies echo their request's id, events use 0.

    Checks only what the layout can carry, not decode's rules. Raises
    IngestProtocolError for a field out of range or a wrong-sized id or digest,
    BadNameError for a name UTF-8 cannot encode, FrameError/FrameTooLarge from the
    frame layer (request id out of range, payload past 16 MiB).
    """
    payload: bytes
    try:
        match msg:
            case Chunk():
                return encode_chunk(
                    file_id=msg.file_id,
                    index=msg.index,
                    total=msg.total,
                    size=msg.size,
                    name=msg.name,
                    payload_digest=msg.payload_digest,
                    digest=msg.digest,
                    data=msg.data,
                    request_id=request_id,
                    content_size=msg.content_size,
                    content_offset=msg.content_offset,
                )
            case Query():
                payload = _fid(msg.file_id)
            case Ping() | Pong():
                payload = b""
            case Subscribe() | Subscribed():
                payload = _ids(msg.file_ids)
            case Ack():
                flags = (
                    (_ACK_DUPLICATE if msg.duplicate else 0)
                    | (_ACK_COMPLETE if msg.complete else 0)
                    | (_ACK_PUBLISHED if msg.published else 0)
                )
                payload = _ACK.pack(_fid(msg.file_id), msg.index, msg.committed, msg.total, flags)
            case Status():
                name = _utf8(msg.name)
                head = _STATUS.pack(
                    _fid(msg.file_id), msg.state, msg.total, msg.committed, msg.size, len(name)
                )
                spans = [_RANGE.pack(first, last) for first, last in msg.missing]
                payload = b"".join((head, name, _U32.pack(len(spans)), *spans))
            case ErrorReply():
                payload = _U16.pack(msg.code) + msg.message.encode("utf-8", "replace")
            case ChunkStored():
                payload = _CHUNK_STORED.pack(_fid(msg.file_id), msg.index, msg.committed, msg.total)
            case Published():
                flags = _PUBLISHED_REPLACED if msg.replaced else 0
                digest = _sized("digest", msg.digest, DIGEST_BYTES)
                payload_digest = _sized("payload digest", msg.payload_digest, DIGEST_BYTES)
                payload = _PUBLISHED.pack(
                    _fid(msg.file_id), msg.size, digest, payload_digest, flags
                )
                payload += _utf8(msg.name)
            case Failed():
                payload = _FAILED.pack(_fid(msg.file_id), msg.code)
                payload += msg.message.encode("utf-8", "replace")
            case _:
                assert_never(msg)
    except struct.error as exc:
        raise IngestProtocolError(f"cannot encode {type(msg).__name__.lower()}: {exc}") from exc
    return framing.encode_parts(_TYPES[type(msg)], 0, request_id, payload)


# --- decoding -------------------------------------------------------------------------

_M = TypeVar("_M")


def _exact(kind: str, payload: bytes, size: int) -> bytes:
    if len(payload) != size:
        raise IngestProtocolError(f"{kind} payload of {len(payload)} bytes, expected {size}")
    return payload


def _at_least(kind: str, payload: bytes | bytearray, size: int) -> None:
    if len(payload) < size:
        raise IngestProtocolError(
            f"{kind} payload of {len(payload)} bytes, expected at least {size}"
        )


def _empty(kind: str, payload: bytes, msg: _M) -> _M:
    _exact(kind, payload, 0)
    return msg


def _text(what: str, raw: bytes | bytearray, error: type[IngestError] = IngestProtocolError) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid utf-8 at byte {exc.start}") from exc


def _code(value: int) -> ErrorCode:
    # a code this side does not know (a newer server's) is kept as CODE_<n>: refused,
    # connection open; only 0 is no code at all
    if value == 0:
        raise IngestProtocolError("error code 0 is not a code")
    return ErrorCode(value)


def _flags(kind: str, flags: int, known: int) -> int:
    if flags & ~known:
        raise IngestProtocolError(
            f"{kind} flags 0x{flags:02x} has unknown bits, known 0x{known:02x}"
        )
    return flags


def _decode_chunk(
    payload: bytes | bytearray, max_chunk_bytes: int, verify: bool = True, framed: bool = False
) -> Chunk:
    head = _CHUNK.size + (FRAMED_FIELDS.size if framed else 0)
    _at_least("framed chunk" if framed else "chunk", payload, head)
    fid, index, total, size, name_len, payload_digest, digest = cast(
        "tuple[bytes, int, int, int, int, bytes, bytes]", _CHUNK.unpack_from(payload)
    )
    content_size: int | None = None
    content_offset = 0
    if framed:
        content_size, content_offset = cast(
            "tuple[int, int]", FRAMED_FIELDS.unpack_from(payload, _CHUNK.size)
        )
        if content_offset > content_size:
            raise OutOfRangeError(
                f"chunk content offset {content_offset} is past its content size {content_size}"
            )
    if not 1 <= total <= MAX_CHUNKS:
        raise OutOfRangeError(f"chunk total {total} out of range 1..{MAX_CHUNKS}")
    if index >= total:
        raise OutOfRangeError(f"chunk index {index} out of range for total {total}")
    if name_len == 0:
        raise BadNameError("name is empty")
    if name_len > MAX_NAME_BYTES:
        raise BadNameError(f"name of {name_len} bytes exceeds limit {MAX_NAME_BYTES}")
    start = head + name_len
    if start > len(payload):
        raise IngestProtocolError(
            f"chunk name of {name_len} bytes overruns the payload of {len(payload)} bytes"
        )
    name = check_name(_text("name", payload[head:start], BadNameError))
    if len(payload) - start > max_chunk_bytes:
        raise IngestLimitError(
            f"chunk data of {len(payload) - start} bytes exceeds limit {max_chunk_bytes}"
        )
    chunk = Chunk(
        file_id=FileId(fid),
        index=index,
        total=total,
        size=size,
        name=name,
        payload_digest=payload_digest,
        digest=digest,
        data=memoryview(payload)[start:],  # no copy
        content_size=content_size,
        content_offset=content_offset,
    )
    if verify:
        verify_chunk(chunk)
    return chunk


def _decode_ids(kind: str, payload: bytes) -> tuple[FileId, ...]:
    _at_least(kind, payload, _U16.size)
    (count,) = cast("tuple[int]", _U16.unpack_from(payload))
    if count > MAX_SUBSCRIBE_IDS:
        raise IngestLimitError(f"{kind} of {count} file ids exceeds limit {MAX_SUBSCRIBE_IDS}")
    _exact(kind, payload, _U16.size + FILE_ID_BYTES * count)
    return tuple(
        FileId(payload[at : at + FILE_ID_BYTES])
        for at in range(_U16.size, len(payload), FILE_ID_BYTES)
    )


def _decode_ack(payload: bytes) -> Ack:
    fid, index, committed, total, flags = cast(
        "tuple[bytes, int, int, int, int]", _ACK.unpack(_exact("ack", payload, _ACK.size))
    )
    _flags("ack", flags, _ACK_DUPLICATE | _ACK_COMPLETE | _ACK_PUBLISHED)
    return Ack(
        file_id=FileId(fid),
        index=index,
        committed=committed,
        total=total,
        duplicate=bool(flags & _ACK_DUPLICATE),
        complete=bool(flags & _ACK_COMPLETE),
        published=bool(flags & _ACK_PUBLISHED),
    )


def _decode_status(payload: bytes) -> Status:
    _at_least("status", payload, _STATUS.size)
    fid, state, total, committed, size, name_len = cast(
        "tuple[bytes, int, int, int, int, int]", _STATUS.unpack_from(payload)
    )
    if state not in UploadState.__members__.values():
        raise IngestProtocolError(f"unknown upload state {state}")
    name_end = _STATUS.size + name_len
    at = name_end + _U32.size
    if at > len(payload):
        raise IngestProtocolError(
            f"status name of {name_len} bytes overruns the payload of {len(payload)} bytes"
        )
    (count,) = cast("tuple[int]", _U32.unpack_from(payload, name_end))
    if count > MAX_STATUS_RANGES:
        raise IngestLimitError(f"status of {count} ranges exceeds limit {MAX_STATUS_RANGES}")
    if len(payload) != at + _RANGE.size * count:
        raise IngestProtocolError(
            f"status payload of {len(payload)} bytes, "
            f"expected {at + _RANGE.size * count} for {count} ranges"
        )
    missing = cast("list[tuple[int, int]]", list(_RANGE.iter_unpack(payload[at:])))
    previous = -1
    for first, last in missing:
        if not previous < first <= last < total:
            raise IngestProtocolError(
                f"status range {first}-{last} is not ascending, disjoint and below total {total}"
            )
        previous = last
    return Status(
        file_id=FileId(fid),
        state=UploadState(state),
        total=total,
        committed=committed,
        size=size,
        name=_text("status name", payload[_STATUS.size : name_end]),
        missing=tuple(missing),
    )


def _decode_error(payload: bytes) -> ErrorReply:
    _at_least("error", payload, _U16.size)
    (code,) = cast("tuple[int]", _U16.unpack_from(payload))
    return ErrorReply(code=_code(code), message=_text("error message", payload[_U16.size :]))


def _decode_chunk_stored(payload: bytes) -> ChunkStored:
    fid, index, committed, total = cast(
        "tuple[bytes, int, int, int]",
        _CHUNK_STORED.unpack(_exact("chunk stored", payload, _CHUNK_STORED.size)),
    )
    return ChunkStored(file_id=FileId(fid), index=index, committed=committed, total=total)


def _decode_published(payload: bytes) -> Published:
    _at_least("published", payload, _PUBLISHED.size)
    fid, size, digest, payload_digest, flags = cast(
        "tuple[bytes, int, bytes, bytes, int]", _PUBLISHED.unpack_from(payload)
    )
    _flags("published", flags, _PUBLISHED_REPLACED)
    return Published(
        file_id=FileId(fid),
        name=check_name(_text("name", payload[_PUBLISHED.size :], BadNameError)),
        size=size,
        digest=digest,
        payload_digest=payload_digest,
        replaced=bool(flags & _PUBLISHED_REPLACED),
    )


def _decode_failed(payload: bytes) -> Failed:
    _at_least("failed", payload, _FAILED.size)
    fid, code = cast("tuple[bytes, int]", _FAILED.unpack_from(payload))
    return Failed(
        file_id=FileId(fid),
        code=_code(code),
        message=_text("failed message", payload[_FAILED.size :]),
    )


# Every type but CHUNK, which alone needs the chunk limit.
_DECODERS: Final[dict[int, Callable[[bytes], Message]]] = {
    MsgType.QUERY: lambda p: Query(file_id=FileId(_exact("query", p, FILE_ID_BYTES))),
    MsgType.PING: lambda p: _empty("ping", p, Ping()),
    MsgType.ACK: _decode_ack,
    MsgType.STATUS: _decode_status,
    MsgType.PONG: lambda p: _empty("pong", p, Pong()),
    MsgType.ERROR: _decode_error,
    MsgType.SUBSCRIBE: lambda p: Subscribe(file_ids=_decode_ids("subscribe", p)),
    MsgType.SUBSCRIBED: lambda p: Subscribed(file_ids=_decode_ids("subscribed", p)),
    MsgType.CHUNK_STORED: _decode_chunk_stored,
    MsgType.PUBLISHED: _decode_published,
    MsgType.FAILED: _decode_failed,
}


def decode(
    frame: Frame, *, max_chunk_bytes: int = MAX_CHUNK_BYTES, verify_chunks: bool = True
) -> Message:
    """Return the message a well-formed frame carries, whichever direction it goes.

    Raises IngestProtocolError (unknown type, frame flags other than CHUNK's
    SELF_CHECKED set, malformed payload), OutOfRangeError (chunk index or total),
    BadNameError, IngestLimitError (chunk data over `max_chunk_bytes`, too many ids or
    ranges) and ChecksumError (chunk digest).
    """
    return decode_parts(
        frame.type,
        frame.flags,
        frame.payload,
        max_chunk_bytes=max_chunk_bytes,
        verify_chunks=verify_chunks,
    )


def decode_parts(
    kind: int,
    flags: int,
    payload: bytes | bytearray,
    *,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    verify_chunks: bool = True,
) -> Message:
    """decode() from a frame's fields, for a payload received into a buffer of its own
    (a CHUNK's data is then a view of that bytearray). Raises as decode() does."""
    if kind != MsgType.CHUNK and kind not in _DECODERS:
        raise IngestProtocolError(f"unknown message type 0x{kind:02x}")
    if kind == MsgType.CHUNK:
        if flags & ~_CHUNK_FLAGS:
            raise IngestProtocolError(
                f"chunk frame flags 0x{flags:04x} set, expected bits of 0x{_CHUNK_FLAGS:04x}"
            )
        return _decode_chunk(payload, max_chunk_bytes, verify_chunks, bool(flags & FRAMED))
    if flags:
        raise IngestProtocolError(f"frame flags 0x{flags:04x} set, expected 0")
    return _DECODERS[kind](payload if isinstance(payload, bytes) else bytes(payload))


class MessageDecoder(framing.MessageStream[Message]):
    """Incremental decoder for one connection: `feed` bytes, then call `next_event`
    until it returns NEED_DATA (see core.framing.MessageStream).

    `max_chunk_bytes` is the chunk data limit; `max_payload_bytes` the frame payload
    limit, by default `max_chunk_bytes + CHUNK_OVERHEAD_BYTES`. A CHUNK frame with the
    SELF_CHECKED flag and a CRC-32 of 0 skips the frame CRC: its digest is checked
    instead (here, or with `verify_chunks` off by the caller, with verify_chunk).
    Raises ConfigError if a limit is out of range; `next_event` raises FrameError or the
    IngestError subclasses of `decode`.
    """

    __slots__ = ()

    def __init__(
        self,
        *,
        max_payload_bytes: int | None = None,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        verify_chunks: bool = True,
    ) -> None:
        if not 0 <= max_chunk_bytes <= framing.MAX_PAYLOAD_BYTES - CHUNK_OVERHEAD_BYTES:
            raise ConfigError(
                f"max_chunk_bytes {max_chunk_bytes} out of range "
                f"0..{framing.MAX_PAYLOAD_BYTES - CHUNK_OVERHEAD_BYTES}"
            )
        if max_payload_bytes is None:
            max_payload_bytes = max_chunk_bytes + CHUNK_OVERHEAD_BYTES
        super().__init__(
            lambda frame: decode(
                frame, max_chunk_bytes=max_chunk_bytes, verify_chunks=verify_chunks
            ),
            max_payload_bytes,
            SELF_CHECKED,
        )
