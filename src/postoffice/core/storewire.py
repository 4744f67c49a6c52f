"""The store's binary protocol (port 7400): typed requests and responses on core frames.

Core layer, pure sans-I/O, on top of core.framing. Wire format: docs/protocols/store.md.
It lives in core, not in the store service, because more than the store speaks it: the
command server forwards GET/SET/DEL/SCAN/DBSIZE to a store, and services never import
one another.
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, NamedTuple, TypeAlias, assert_never, cast, final

from postoffice.core import framing
from postoffice.core.errors import LimitExceeded, ProtocolError
from postoffice.core.framing import NEED_DATA, Frame, NeedData

# Design
# ------
# Every request is one core frame whose type names the request and whose flags are 0.
# Every response is one RESPONSE frame (type 0x80) echoing the request id: a status
# byte, then a body whose layout depends on the request it answers (the response does
# not repeat the request kind; the client knows what it asked). There is no state
# machine: `RequestDecoder` is `FrameDecoder` plus `decode_request`, and the two
# failure kinds stay apart on purpose. A FrameError means framing is lost and the
# connection must close; a StoreProtocolError means one well-framed request was bad, so
# the server answers it with the error's `status` and keeps reading.
#
# Encoders apply the same rules as decoders (key and value limits, scan limit range),
# so a client can never send a request the server would reject as malformed. Tools that
# want to probe a server with bad requests build frames with `framing.encode_parts`.

__all__ = [
    "MAX_BATCH_OPS",
    "MAX_BOUND_BYTES",
    "MAX_KEY_BYTES",
    "MAX_SCAN_LIMIT",
    "MAX_VALUE_BYTES",
    "NEED_DATA",
    "RESPONSE_TYPE",
    "BatchOp",
    "BatchRequest",
    "DeleteRequest",
    "GetRequest",
    "NeedData",
    "PingRequest",
    "PutRequest",
    "Request",
    "RequestDecoder",
    "RequestType",
    "Response",
    "ResponseDecoder",
    "ScanPage",
    "ScanRequest",
    "StatsRequest",
    "Status",
    "StoreLimitError",
    "StoreProtocolError",
    "decode_delete_body",
    "decode_empty_body",
    "decode_error_body",
    "decode_get_body",
    "decode_request",
    "decode_request_parts",
    "decode_response",
    "decode_response_parts",
    "decode_scan_body",
    "decode_stats_body",
    "encode_delete_body",
    "encode_error",
    "encode_get",
    "encode_put",
    "encode_request",
    "encode_response",
    "encode_scan_body",
    "encode_stats_body",
    "next_start",
    "response_head",
    "split_put",
]

MAX_KEY_BYTES: Final = 1024
"""Longest key, in bytes: keys are names, not payloads (the engine's default limit)."""

MAX_VALUE_BYTES: Final = 16 * 1024 * 1024
"""Longest value, in bytes (the engine's default). One frame carries at most
framing.MAX_PAYLOAD_BYTES, so a PUT's value is in practice 2 + key bytes shorter."""

MAX_BATCH_OPS: Final = 10_000
"""Most operations in one BATCH: bounds the work one atomic request can pin."""

MAX_SCAN_LIMIT: Final = 10_000
"""Most items one SCAN may ask for: bounds one response's size and the index walk."""

MAX_BOUND_BYTES: Final = MAX_KEY_BYTES + 1
"""Longest scan bound, in bytes: one more than a key, so the continuation of a page
ending at a longest key (that key + b"\\0") is still a valid start."""

RESPONSE_TYPE: Final = 0x80
"""Frame type of every response."""

_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_OP_HEAD: Final = struct.Struct(">BHI")  # batch op: kind, key len, value len
_SCAN_HEAD: Final = struct.Struct(">BI")  # scan: flags, limit
_ITEM_HEAD: Final = struct.Struct(">HI")  # scan item: key len, value len
_PAGE_HEAD: Final = struct.Struct(">IB")  # scan body: count, more

# A response frame's header with its status byte, and the CRC-32 of each status byte
# alone (a response's CRC continues from it over the body).
_RESPONSE_HEAD: Final = struct.Struct(framing.HEADER.format + "B")
_STATUS_CRC: Final = tuple(zlib.crc32(bytes([code])) for code in range(8))

_OP_PUT: Final = 1
_OP_DELETE: Final = 2

_SCAN_PREFIX: Final = 0x01
_SCAN_START: Final = 0x02
_SCAN_END: Final = 0x04
_SCAN_KNOWN: Final = _SCAN_PREFIX | _SCAN_START | _SCAN_END


class RequestType(enum.IntEnum):
    """The frame `type` of each request."""

    PING = 0x01
    GET = 0x02
    PUT = 0x03
    DELETE = 0x04
    BATCH = 0x05
    SCAN = 0x06
    STATS = 0x07


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


class StoreProtocolError(ProtocolError):
    """A well-framed store request or response is malformed; answer with `status`."""

    wire_code = "BAD_REQUEST"
    status: ClassVar[Status] = Status.BAD_REQUEST


@final
class StoreLimitError(StoreProtocolError, LimitExceeded):
    """A key, value, bound or batch is over its limit; answer with TOO_LARGE."""

    wire_code = "TOO_LARGE"
    status: ClassVar[Status] = Status.TOO_LARGE


# --- messages -------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PingRequest:
    """Liveness probe; answered OK with an empty body."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GetRequest:
    """Read one key; answered OK with the value, or NOT_FOUND."""

    key: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PutRequest:
    """Set `key` to `value`; answered OK with an empty body. Also a batch operation."""

    key: bytes
    value: bytes

    def __repr__(self) -> str:
        # Never print up to 16 MiB of value into a log line.
        return f"PutRequest(key={self.key!r}, value=<{len(self.value)} bytes>)"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteRequest:
    """Remove one key; answered OK with `existed`. Also a batch operation."""

    key: bytes


BatchOp: TypeAlias = PutRequest | DeleteRequest


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRequest:
    """Apply all `ops` atomically, in order; answered OK with an empty body."""

    ops: tuple[BatchOp, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ScanRequest:
    """Up to `limit` items in key order with start <= key < end and the prefix.

    A bound that is None is absent (an empty bytes bound is present and empty). The
    next page starts at `next_start(page)`: the last key returned + b"\\0".
    """

    prefix: bytes | None = None
    start: bytes | None = None
    end: bytes | None = None
    limit: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StatsRequest:
    """Ask for the server's statistics; answered OK with a JSON object."""


Request: TypeAlias = (
    PingRequest
    | GetRequest
    | PutRequest
    | DeleteRequest
    | BatchRequest
    | ScanRequest
    | StatsRequest
)


@final
class Response(NamedTuple):
    """One response: the request id it answers, its status, and the raw body.

    Read the body with the decoder for the request kind (decode_get_body, ...) when
    the status is OK, and with decode_error_body otherwise. A named tuple: a client
    makes one per response, and a tuple costs a fifth of a frozen dataclass.
    """

    request_id: int
    status: Status
    body: bytes

    def __repr__(self) -> str:
        body = self.body
        shown = repr(body) if len(body) <= 32 else f"{body[:32]!r}...<{len(body)} bytes>"
        return f"Response(request_id={self.request_id}, status={self.status.name}, body={shown})"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ScanPage:
    """A SCAN's OK body: the items in key order, and `more` when the limit was hit."""

    items: tuple[tuple[bytes, bytes], ...]
    more: bool


def next_start(page: ScanPage) -> bytes | None:
    """The `start` of the next page (the last key + b"\\0"), or None when done."""
    if not page.more or not page.items:
        return None
    return page.items[-1][0] + b"\0"


# --- checks shared by encoders and decoders -------------------------------------------


def _check_key(what: str, key: bytes) -> bytes:
    if not key:
        raise StoreProtocolError(f"{what} is empty")
    if len(key) > MAX_KEY_BYTES:
        raise StoreLimitError(f"{what} of {len(key)} bytes exceeds limit {MAX_KEY_BYTES}")
    return key


def _check_value(what: str, length: int) -> None:
    if length > MAX_VALUE_BYTES:
        raise StoreLimitError(f"{what} of {length} bytes exceeds limit {MAX_VALUE_BYTES}")


def _check_bound(what: str, bound: bytes) -> None:
    if len(bound) > MAX_BOUND_BYTES:
        raise StoreLimitError(f"{what} of {len(bound)} bytes exceeds limit {MAX_BOUND_BYTES}")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_SCAN_LIMIT:
        raise StoreProtocolError(f"scan limit {limit} out of range 1..{MAX_SCAN_LIMIT}")


def _check_ops(count: int) -> None:
    if count > MAX_BATCH_OPS:
        raise StoreLimitError(f"batch of {count} ops exceeds limit {MAX_BATCH_OPS}")


# --- encoding -------------------------------------------------------------------------


def _encode_op(index: int, op: BatchOp) -> bytes:
    match op:
        case PutRequest():
            _check_key(f"batch op {index} key", op.key)
            _check_value(f"batch op {index} value", len(op.value))
            return _OP_HEAD.pack(_OP_PUT, len(op.key), len(op.value)) + op.key + op.value
        case DeleteRequest():
            _check_key(f"batch op {index} key", op.key)
            return _OP_HEAD.pack(_OP_DELETE, len(op.key), 0) + op.key
        case _:
            assert_never(op)


def _encode_scan(req: ScanRequest) -> bytes:
    _check_limit(req.limit)
    flags = 0
    bounds: list[bytes] = []
    for bit, name, bound in (
        (_SCAN_PREFIX, "prefix", req.prefix),
        (_SCAN_START, "start", req.start),
        (_SCAN_END, "end", req.end),
    ):
        if bound is not None:
            _check_bound(f"scan {name}", bound)
            flags |= bit
            bounds += (_U16.pack(len(bound)), bound)
    return b"".join((_SCAN_HEAD.pack(flags, req.limit), *bounds))


def encode_get(key: bytes, request_id: int) -> bytes:
    """`encode_request(GetRequest(key=key), request_id)` without making the request."""
    if not key or len(key) > MAX_KEY_BYTES:
        _check_key("get key", key)
    return framing.encode_parts(RequestType.GET, 0, request_id, key)


def encode_put(key: bytes, value: bytes, request_id: int) -> bytes:
    """`encode_request(PutRequest(key=key, value=value), request_id)` without the request."""
    if not key or len(key) > MAX_KEY_BYTES:
        _check_key("put key", key)
    if len(value) > MAX_VALUE_BYTES:
        _check_value("put value", len(value))
    payload = b"".join((_U16.pack(len(key)), key, value))
    return framing.encode_parts(RequestType.PUT, 0, request_id, payload)


def encode_request(req: Request, request_id: int) -> bytes:
    """Return the wire bytes of one request frame.

    Raises StoreProtocolError (empty key, scan limit out of range), StoreLimitError (key,
    value, bound or op count over its limit), FrameError (request id out of range) and
    FrameTooLarge (the payload is over framing.MAX_PAYLOAD_BYTES).
    """
    match req:
        case PingRequest():
            kind, payload = RequestType.PING, b""
        case GetRequest():
            kind, payload = RequestType.GET, _check_key("get key", req.key)
        case PutRequest():
            _check_key("put key", req.key)
            _check_value("put value", len(req.value))
            kind = RequestType.PUT
            payload = b"".join((_U16.pack(len(req.key)), req.key, req.value))
        case DeleteRequest():
            kind, payload = RequestType.DELETE, _check_key("delete key", req.key)
        case BatchRequest():
            _check_ops(len(req.ops))
            kind = RequestType.BATCH
            parts = [_encode_op(i, op) for i, op in enumerate(req.ops)]
            payload = b"".join((_U32.pack(len(parts)), *parts))
        case ScanRequest():
            kind, payload = RequestType.SCAN, _encode_scan(req)
        case StatsRequest():
            kind, payload = RequestType.STATS, b""
        case _:
            assert_never(req)
    return framing.encode_parts(kind, 0, request_id, payload)


def response_head(request_id: int, status: Status, body: bytes = b"") -> bytes:
    """The first 25 bytes of a RESPONSE frame: its header and the status byte.

    `response_head(...) + body` is `encode_response(...)`; a server writes the two parts
    without joining them, so a value is never copied to prepend 25 bytes.
    Raises FrameError (request id out of range), FrameTooLarge (body too long).
    """
    if len(body) < framing.MAX_PAYLOAD_BYTES and 0 <= status < len(_STATUS_CRC):
        try:
            return _RESPONSE_HEAD.pack(
                framing.MAGIC,
                framing.VERSION,
                RESPONSE_TYPE,
                0,
                0,
                request_id,
                len(body) + 1,
                zlib.crc32(body, _STATUS_CRC[status]),
                status,
            )
        except struct.error:
            pass
    # The slow path: the frame encoder says which field is wrong.
    frame = framing.encode_parts(RESPONSE_TYPE, 0, request_id, _U8.pack(status) + body)
    return frame[: _RESPONSE_HEAD.size]


def encode_response(request_id: int, status: Status, body: bytes = b"") -> bytes:
    """Return the wire bytes of one RESPONSE frame: `status` then `body`.

    Raises FrameError (request id out of range), FrameTooLarge (body too long).
    """
    return response_head(request_id, status, body) + body


def encode_error(request_id: int, status: Status, message: str) -> bytes:
    """Return a non-OK RESPONSE frame whose body is `message` in UTF-8.

    Raises StoreProtocolError if `status` is OK, FrameError / FrameTooLarge as
    encode_response.
    """
    if status is Status.OK:
        raise StoreProtocolError("error response needs a non-ok status, found ok")
    return encode_response(request_id, status, message.encode("utf-8", "replace"))


def encode_delete_body(existed: bool) -> bytes:
    """The OK body of a DELETE response: 1 if the key existed, else 0."""
    return _U8.pack(1 if existed else 0)


def encode_scan_body(items: Sequence[tuple[bytes, bytes]], more: bool) -> bytes:
    """The OK body of a SCAN response.

    Raises StoreLimitError if there are more than MAX_SCAN_LIMIT items or a key or value
    is over its limit, StoreProtocolError for an empty key.
    """
    if len(items) > MAX_SCAN_LIMIT:
        raise StoreLimitError(f"scan page of {len(items)} items exceeds limit {MAX_SCAN_LIMIT}")
    parts = [_PAGE_HEAD.pack(len(items), 1 if more else 0)]
    for key, value in items:
        _check_key("scan item key", key)
        _check_value("scan item value", len(value))
        parts += (_ITEM_HEAD.pack(len(key), len(value)), key, value)
    return b"".join(parts)


def encode_stats_body(stats: Mapping[str, object]) -> bytes:
    """The OK body of a STATS response: `stats` as compact, key-sorted UTF-8 JSON.

    Raises StoreProtocolError if a value is not JSON-serialisable.
    """
    try:
        text = json.dumps(dict(stats), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreProtocolError(f"stats are not serialisable as json: {exc}") from exc
    return text.encode("utf-8")


# --- decoding -------------------------------------------------------------------------


def _exact(kind: str, payload: bytes, size: int) -> None:
    if len(payload) != size:
        raise StoreProtocolError(f"{kind} payload of {len(payload)} bytes, expected {size}")


def _at_least(kind: str, payload: bytes, size: int) -> None:
    if len(payload) < size:
        raise StoreProtocolError(
            f"{kind} payload of {len(payload)} bytes, expected at least {size}"
        )


def _overrun(what: str, end: int, payload: bytes) -> None:
    if end > len(payload):
        raise StoreProtocolError(
            f"{what} ends at byte {end}, past the payload of {len(payload)} bytes"
        )


def split_put(payload: bytes) -> tuple[bytes, bytes]:
    """The key and value of a PUT payload, without making a PutRequest (a server's hot path).

    Raises StoreProtocolError (truncated, empty key) and StoreLimitError (key or value
    over its limit), as decode_request does.
    """
    size = len(payload)
    if size >= 3:
        start = 2 + ((payload[0] << 8) | payload[1])
        if 2 < start <= size and start <= 2 + MAX_KEY_BYTES and size - start <= MAX_VALUE_BYTES:
            return payload[2:start], payload[start:]
    request = _decode_put(payload)  # raises the precise error
    return request.key, request.value


def _decode_put(payload: bytes) -> PutRequest:
    _at_least("put", payload, _U16.size)
    (key_len,) = cast("tuple[int]", _U16.unpack_from(payload))
    start = _U16.size + key_len
    _overrun(f"put key of {key_len} bytes", start, payload)
    key = _check_key("put key", payload[_U16.size : start])
    _check_value("put value", len(payload) - start)
    return PutRequest(key=key, value=payload[start:])


def _decode_batch(payload: bytes) -> BatchRequest:
    _at_least("batch", payload, _U32.size)
    (count,) = cast("tuple[int]", _U32.unpack_from(payload))
    _check_ops(count)  # before the loop, so a huge count allocates nothing
    ops: list[BatchOp] = []
    at = _U32.size
    for index in range(count):
        _overrun(f"batch op {index} header", at + _OP_HEAD.size, payload)
        kind, key_len, value_len = cast("tuple[int, int, int]", _OP_HEAD.unpack_from(payload, at))
        at += _OP_HEAD.size
        if kind not in (_OP_PUT, _OP_DELETE):
            raise StoreProtocolError(
                f"batch op {index} kind {kind} unknown, expected 1 (put) or 2 (delete)"
            )
        if kind == _OP_DELETE and value_len:
            raise StoreProtocolError(
                f"batch op {index} delete has value length {value_len}, expected 0"
            )
        if key_len > MAX_KEY_BYTES:
            raise StoreLimitError(
                f"batch op {index} key of {key_len} bytes exceeds limit {MAX_KEY_BYTES}"
            )
        _check_value(f"batch op {index} value", value_len)
        end = at + key_len + value_len
        _overrun(f"batch op {index}", end, payload)
        key = _check_key(f"batch op {index} key", payload[at : at + key_len])
        if kind == _OP_PUT:
            ops.append(PutRequest(key=key, value=payload[at + key_len : end]))
        else:
            ops.append(DeleteRequest(key=key))
        at = end
    if at != len(payload):
        raise StoreProtocolError(f"batch payload has {len(payload) - at} trailing bytes")
    return BatchRequest(ops=tuple(ops))


def _decode_scan(payload: bytes) -> ScanRequest:
    _at_least("scan", payload, _SCAN_HEAD.size)
    flags, limit = cast("tuple[int, int]", _SCAN_HEAD.unpack_from(payload))
    if flags & ~_SCAN_KNOWN:
        raise StoreProtocolError(
            f"scan flags 0x{flags:02x} has unknown bits, known 0x{_SCAN_KNOWN:02x}"
        )
    _check_limit(limit)
    at = _SCAN_HEAD.size
    bounds: list[bytes | None] = []
    for bit, name in ((_SCAN_PREFIX, "prefix"), (_SCAN_START, "start"), (_SCAN_END, "end")):
        if not flags & bit:
            bounds.append(None)
            continue
        _overrun(f"scan {name} length", at + _U16.size, payload)
        (length,) = cast("tuple[int]", _U16.unpack_from(payload, at))
        if length > MAX_BOUND_BYTES:
            raise StoreLimitError(f"scan {name} of {length} bytes exceeds limit {MAX_BOUND_BYTES}")
        at += _U16.size
        _overrun(f"scan {name} of {length} bytes", at + length, payload)
        bounds.append(payload[at : at + length])
        at += length
    if at != len(payload):
        raise StoreProtocolError(f"scan payload has {len(payload) - at} trailing bytes")
    prefix, start, end = bounds
    return ScanRequest(prefix=prefix, start=start, end=end, limit=limit)


def _decode_empty(kind: str, payload: bytes, req: Request) -> Request:
    _exact(kind, payload, 0)
    return req


_DECODERS: Final[dict[int, Callable[[bytes], Request]]] = {
    RequestType.PING: lambda p: _decode_empty("ping", p, PingRequest()),
    RequestType.GET: lambda p: GetRequest(key=_check_key("get key", p)),
    RequestType.PUT: _decode_put,
    RequestType.DELETE: lambda p: DeleteRequest(key=_check_key("delete key", p)),
    RequestType.BATCH: _decode_batch,
    RequestType.SCAN: _decode_scan,
    RequestType.STATS: lambda p: _decode_empty("stats", p, StatsRequest()),
}


def decode_request(frame: Frame) -> Request:
    """Return the request a well-formed frame carries.

    Raises StoreProtocolError (unknown type, frame flags set, malformed payload, empty
    key, scan limit out of range) and StoreLimitError (a key, value, bound or op count
    over its limit). Both leave the connection usable: answer with the error's status.
    """
    return decode_request_parts(frame.type, frame.flags, frame.payload)


def decode_request_parts(type_: int, flags: int, payload: bytes) -> Request:
    """`decode_request` of a frame's fields (as `FrameDecoder.read_frames` gives them)."""
    decoder = _DECODERS.get(type_)
    if decoder is None:
        raise StoreProtocolError(f"unknown request type 0x{type_:02x}")
    if flags:
        raise StoreProtocolError(f"frame flags 0x{flags:04x} set, expected 0")
    return decoder(payload)


def decode_response(frame: Frame) -> Response:
    """Return the response a well-formed frame carries.

    Raises StoreProtocolError (not a RESPONSE frame, flags set, empty payload, unknown
    status).
    """
    return decode_response_parts(frame.type, frame.flags, frame.request_id, frame.payload)


_STATUSES: Final = tuple(Status)  # by code: the codes are 0..7 without gaps
_new_response: Final = tuple.__new__  # Response(...) without the keyword-argument parsing


def decode_response_parts(type_: int, flags: int, request_id: int, payload: bytes) -> Response:
    """`decode_response` of a frame's fields (as `FrameDecoder.read_frames` gives them)."""
    if type_ == RESPONSE_TYPE and not flags and payload and payload[0] < len(_STATUSES):
        return _new_response(Response, (request_id, _STATUSES[payload[0]], payload[1:]))
    if type_ != RESPONSE_TYPE:
        raise StoreProtocolError(
            f"response frame type 0x{type_:02x}, expected 0x{RESPONSE_TYPE:02x}"
        )
    if flags:
        raise StoreProtocolError(f"frame flags 0x{flags:04x} set, expected 0")
    if not payload:
        raise StoreProtocolError("response payload is empty, expected a status byte")
    raise StoreProtocolError(f"unknown response status {payload[0]}")


def decode_empty_body(body: bytes) -> None:
    """Check the OK body of PING, PUT and BATCH is empty; raises StoreProtocolError."""
    if body:
        raise StoreProtocolError(f"response body of {len(body)} bytes, expected 0")


def decode_get_body(body: bytes) -> bytes:
    """The value in a GET's OK body. Raises StoreLimitError if over MAX_VALUE_BYTES."""
    _check_value("get value", len(body))
    return body


def decode_delete_body(body: bytes) -> bool:
    """Whether the key existed, from a DELETE's OK body; raises StoreProtocolError."""
    if len(body) != 1 or body[0] > 1:
        raise StoreProtocolError(
            f"delete response body {body[:8]!r}, expected b'\\x00' or b'\\x01'"
        )
    return body[0] == 1


def decode_scan_body(body: bytes) -> ScanPage:
    """The page in a SCAN's OK body.

    Raises StoreProtocolError (truncated, trailing bytes, bad `more`, empty key) and
    StoreLimitError (item count, key or value over its limit).
    """
    if len(body) < _PAGE_HEAD.size:
        raise StoreProtocolError(
            f"scan response body of {len(body)} bytes, expected at least {_PAGE_HEAD.size}"
        )
    count, more = cast("tuple[int, int]", _PAGE_HEAD.unpack_from(body))
    if more > 1:
        raise StoreProtocolError(f"scan response more flag {more}, expected 0 or 1")
    if count > MAX_SCAN_LIMIT:
        raise StoreLimitError(f"scan page of {count} items exceeds limit {MAX_SCAN_LIMIT}")
    items: list[tuple[bytes, bytes]] = []
    at = _PAGE_HEAD.size
    for index in range(count):
        _overrun(f"scan item {index} header", at + _ITEM_HEAD.size, body)
        key_len, value_len = cast("tuple[int, int]", _ITEM_HEAD.unpack_from(body, at))
        at += _ITEM_HEAD.size
        if key_len > MAX_KEY_BYTES:
            raise StoreLimitError(
                f"scan item {index} key of {key_len} bytes exceeds limit {MAX_KEY_BYTES}"
            )
        _check_value(f"scan item {index} value", value_len)
        end = at + key_len + value_len
        _overrun(f"scan item {index}", end, body)
        key = _check_key(f"scan item {index} key", body[at : at + key_len])
        items.append((key, body[at + key_len : end]))
        at = end
    if at != len(body):
        raise StoreProtocolError(f"scan response body has {len(body) - at} trailing bytes")
    return ScanPage(items=tuple(items), more=more == 1)


def _text(what: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreProtocolError(f"{what} is not valid utf-8 at byte {exc.start}") from exc


def decode_stats_body(body: bytes) -> dict[str, object]:
    """The statistics object in a STATS OK body; raises StoreProtocolError."""
    text = _text("stats body", body)
    try:
        parsed: object = json.loads(text)
    except ValueError as exc:
        raise StoreProtocolError(f"stats body is not valid json: {exc}") from exc
    if not isinstance(parsed, dict):
        raise StoreProtocolError(f"stats body is a json {type(parsed).__name__}, expected object")
    return cast("dict[str, object]", parsed)


def decode_error_body(body: bytes) -> str:
    """The message in a non-OK body; raises StoreProtocolError if it is not UTF-8."""
    return _text("error message", body)


# --- incremental decoders -------------------------------------------------------------


@final
class RequestDecoder(framing.MessageStream[Request]):
    """Server side: `feed` bytes, then call `next_event` until it returns NEED_DATA.

    `max_payload_bytes` (at most framing.MAX_PAYLOAD_BYTES) is the largest request
    frame accepted; ConfigError if it is out of range. `next_event` raises FrameError
    (framing lost: answer if the error has a request id, then close) or
    StoreProtocolError (answer `last_request_id` with the error's `status`, go on).
    """

    __slots__ = ()

    def __init__(self, max_payload_bytes: int = framing.MAX_PAYLOAD_BYTES) -> None:
        super().__init__(decode_request, max_payload_bytes)


@final
class ResponseDecoder:
    """Client side: `feed` bytes, then call `next_event` until it returns NEED_DATA.

    Any error (FrameError or StoreProtocolError) from a server is fatal to the
    connection: fail every request in flight and close. Raises ConfigError if
    `max_payload_bytes` is out of range.
    """

    __slots__ = ("_frames",)

    def __init__(self, max_payload_bytes: int = framing.MAX_PAYLOAD_BYTES) -> None:
        self._frames = framing.FrameDecoder(max_payload_bytes)

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed but not yet decoded; non-zero at end of stream means a cut frame."""
        return self._frames.buffered_bytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (discarded once framing is lost)."""
        self._frames.feed(data)

    def next_event(self) -> Response | NeedData:
        """Return the next Response, or NEED_DATA.

        Raises FrameError and StoreProtocolError as decode_response.
        """
        frame = self._frames.next_event()
        if frame is NEED_DATA:
            return NEED_DATA
        return decode_response(frame)

    def __repr__(self) -> str:
        state = "FAILED" if self._frames.failed else "OK"
        return f"<ResponseDecoder at 0x{id(self):x} {state} buffered={self.buffered_bytes}>"
