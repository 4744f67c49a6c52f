"""The store protocol's requests: encoding them (a client) and decoding them (a server).

Pure sans-I/O on top of core.framing; the messages and limits are in `messages`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, assert_never, cast, final

from postoffice.core import framing
from postoffice.core.framing import Frame
from postoffice.core.tracecontext import TRACE_CONTEXT_BYTES, TraceContext
from postoffice.store.errors import StoreLimitError, StoreProtocolError
from postoffice.store.wire.messages import (
    MAX_BOUND_BYTES,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    PUT_HEAD_BYTES,
    TRACED_FLAG,
    BatchOp,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    RequestType,
    ScanRequest,
    StatsRequest,
    check_batch_fits,
    check_bound,
    check_key,
    check_limit,
    check_ops,
    check_overrun,
    check_put_fits,
    check_request_id,
    check_value,
)

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_OP_HEAD: Final = struct.Struct(">BHI")  # batch op: kind, key len, value len
_SCAN_HEAD: Final = struct.Struct(">BI")  # scan: flags, limit

# The longest key + value one PUT frame can carry.
_PUT_ROOM: Final = framing.MAX_PAYLOAD_BYTES - PUT_HEAD_BYTES
_OP_PUT: Final = 1
_OP_DELETE: Final = 2

_SCAN_PREFIX: Final = 0x01
_SCAN_START: Final = 0x02
_SCAN_END: Final = 0x04
_SCAN_KNOWN: Final = _SCAN_PREFIX | _SCAN_START | _SCAN_END


# --- encoding -------------------------------------------------------------------------


def _encode_op(index: int, op: BatchOp) -> bytes:
    match op:
        case PutRequest():
            check_key(f"batch op {index} key", op.key)
            check_value(f"batch op {index} value", len(op.value))
            return _OP_HEAD.pack(_OP_PUT, len(op.key), len(op.value)) + op.key + op.value
        case DeleteRequest():
            check_key(f"batch op {index} key", op.key)
            return _OP_HEAD.pack(_OP_DELETE, len(op.key), 0) + op.key
        case _:
            assert_never(op)


def _encode_scan(req: ScanRequest) -> bytes:
    check_limit(req.limit)
    flags = 0
    bounds: list[bytes] = []
    for bit, name, bound in (
        (_SCAN_PREFIX, "prefix", req.prefix),
        (_SCAN_START, "start", req.start),
        (_SCAN_END, "end", req.end),
    ):
        if bound is not None:
            check_bound(f"scan {name}", bound)
            flags |= bit
            bounds += (_U16.pack(len(bound)), bound)
    return b"".join((_SCAN_HEAD.pack(flags, req.limit), *bounds))


def encode_get(key: bytes, request_id: int) -> bytes:
    """`encode_request(GetRequest(key=key), request_id)` without making the request."""
    if not key or len(key) > MAX_KEY_BYTES:
        check_key("get key", key)
    if not request_id:
        check_request_id(request_id)
    return framing.encode_parts(RequestType.GET, 0, request_id, key)


def encode_put(key: bytes, value: bytes, request_id: int) -> bytes:
    """`encode_request(PutRequest(key=key, value=value), request_id)` without the request."""
    if not key or len(key) > MAX_KEY_BYTES:
        check_key("put key", key)
    if len(value) > _PUT_ROOM - len(key):  # the frame binds before MAX_VALUE_BYTES
        check_value("put value", len(value))
        check_put_fits(len(key), len(value))
    if not request_id:
        check_request_id(request_id)
    payload = b"".join((_U16.pack(len(key)), key, value))
    return framing.encode_parts(RequestType.PUT, 0, request_id, payload)


def encode_request(req: Request, request_id: int, *, trace: TraceContext | None = None) -> bytes:
    """Return the wire bytes of one request frame, carrying `trace` if given.

    Raises StoreProtocolError (empty key, scan limit out of range, request id 0, which
    is reserved for the server), StoreLimitError (key, value, bound or op count over its
    limit), FrameError (request id out of range) and FrameTooLarge (the payload is over
    framing.MAX_PAYLOAD_BYTES).
    """
    check_request_id(request_id)
    match req:
        case PingRequest():
            kind, payload = RequestType.PING, b""
        case GetRequest():
            kind, payload = RequestType.GET, check_key("get key", req.key)
        case PutRequest():
            check_key("put key", req.key)
            check_value("put value", len(req.value))
            check_put_fits(len(req.key), len(req.value))
            kind = RequestType.PUT
            payload = b"".join((_U16.pack(len(req.key)), req.key, req.value))
        case DeleteRequest():
            kind, payload = RequestType.DELETE, check_key("delete key", req.key)
        case BatchRequest():
            check_ops(len(req.ops))
            kind = RequestType.BATCH
            parts = [_encode_op(i, op) for i, op in enumerate(req.ops)]
            payload = b"".join((_U32.pack(len(parts)), *parts))
            check_batch_fits(len(payload))
        case ScanRequest():
            kind, payload = RequestType.SCAN, _encode_scan(req)
        case StatsRequest():
            kind, payload = RequestType.STATS, b""
        case _:
            assert_never(req)
    if trace is not None:
        return framing.encode_parts(kind, TRACED_FLAG, request_id, trace.to_bytes() + payload)
    return framing.encode_parts(kind, 0, request_id, payload)


def add_trace_context(wire: bytes, trace: TraceContext) -> bytes:
    """The request frame `wire` (as the encoders make it) again, carrying `trace`.

    Raises FrameTooLarge when the context would take its payload past the frame limit
    (a request within 25 bytes of it cannot carry one) and StoreProtocolError when `wire`
    is not an untraced request frame.
    """
    if len(wire) < framing.HEADER_BYTES or wire[4] or wire[5]:
        raise StoreProtocolError("expected an encoded request frame without flags")
    request_id = int.from_bytes(wire[8:16], "big")
    payload = wire[framing.HEADER_BYTES :]
    return framing.encode_parts(wire[3], TRACED_FLAG, request_id, trace.to_bytes() + payload)


# --- decoding -------------------------------------------------------------------------


def _exact(kind: str, payload: bytes, size: int) -> None:
    if len(payload) != size:
        raise StoreProtocolError(f"{kind} payload of {len(payload)} bytes, expected {size}")


def _at_least(kind: str, payload: bytes, size: int) -> None:
    if len(payload) < size:
        raise StoreProtocolError(
            f"{kind} payload of {len(payload)} bytes, expected at least {size}"
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
    check_overrun(f"put key of {key_len} bytes", start, payload)
    key = check_key("put key", payload[_U16.size : start])
    check_value("put value", len(payload) - start)
    return PutRequest(key=key, value=payload[start:])


def _decode_batch(payload: bytes) -> BatchRequest:
    _at_least("batch", payload, _U32.size)
    (count,) = cast("tuple[int]", _U32.unpack_from(payload))
    check_ops(count)  # before the loop, so a huge count allocates nothing
    ops: list[BatchOp] = []
    at = _U32.size
    for index in range(count):
        check_overrun(f"batch op {index} header", at + _OP_HEAD.size, payload)
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
        check_value(f"batch op {index} value", value_len)
        end = at + key_len + value_len
        check_overrun(f"batch op {index}", end, payload)
        key = check_key(f"batch op {index} key", payload[at : at + key_len])
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
    check_limit(limit)
    at = _SCAN_HEAD.size
    bounds: list[bytes | None] = []
    for bit, name in ((_SCAN_PREFIX, "prefix"), (_SCAN_START, "start"), (_SCAN_END, "end")):
        if not flags & bit:
            bounds.append(None)
            continue
        check_overrun(f"scan {name} length", at + _U16.size, payload)
        (length,) = cast("tuple[int]", _U16.unpack_from(payload, at))
        if length > MAX_BOUND_BYTES:
            raise StoreLimitError(f"scan {name} of {length} bytes exceeds limit {MAX_BOUND_BYTES}")
        at += _U16.size
        check_overrun(f"scan {name} of {length} bytes", at + length, payload)
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
    RequestType.GET: lambda p: GetRequest(key=check_key("get key", p)),
    RequestType.PUT: _decode_put,
    RequestType.DELETE: lambda p: DeleteRequest(key=check_key("delete key", p)),
    RequestType.BATCH: _decode_batch,
    RequestType.SCAN: _decode_scan,
    RequestType.STATS: lambda p: _decode_empty("stats", p, StatsRequest()),
}


def decode_request(frame: Frame) -> Request:
    """Return the request a well-formed frame carries.

    A trace context (TRACED_FLAG) is checked and dropped: `decode_traced_request` keeps it.
    Raises StoreProtocolError (unknown type, frame flags other than TRACED_FLAG set, a
    malformed trace context or payload, empty key, scan limit out of range) and
    StoreLimitError (a key, value, bound or op count over its limit). Both leave the
    connection usable: answer with the error's status.
    """
    return decode_request_parts(frame.type, frame.flags, frame.payload)


def split_trace_context(flags: int, payload: bytes) -> tuple[TraceContext | None, int, bytes]:
    """The trace context a request carries (None without TRACED_FLAG), the frame's other
    flags, and the request's own payload.

    Raises StoreProtocolError for a context cut short or one with a zero trace or span id.
    """
    if not flags & TRACED_FLAG:
        return None, flags, payload
    if len(payload) < TRACE_CONTEXT_BYTES:
        raise StoreProtocolError(
            f"trace context of {len(payload)} bytes, expected {TRACE_CONTEXT_BYTES}"
        )
    trace_id = int.from_bytes(payload[:16], "big")
    span_id = int.from_bytes(payload[16:24], "big")
    if not trace_id:
        raise StoreProtocolError("trace context has trace id 0, expected a non-zero id")
    if not span_id:
        raise StoreProtocolError("trace context has span id 0, expected a non-zero id")
    context = TraceContext(trace_id=trace_id, span_id=span_id, flags=payload[24])
    return context, flags & ~TRACED_FLAG, payload[TRACE_CONTEXT_BYTES:]


def decode_traced_request(frame: Frame) -> tuple[TraceContext | None, Request]:
    """The trace context a well-formed frame carries (or None) and its request.

    Raises as `split_trace_context` and `decode_request` do.
    """
    context, flags, payload = split_trace_context(frame.flags, frame.payload)
    return context, decode_request_parts(frame.type, flags, payload)


def decode_request_parts(type_: int, flags: int, payload: bytes) -> Request:
    """`decode_request` of a frame's fields (as `FrameDecoder.read_frames` gives them)."""
    decoder = _DECODERS.get(type_)
    if decoder is None:
        raise StoreProtocolError(f"unknown request type 0x{type_:02x}")
    if flags & TRACED_FLAG:  # a trace context is checked, then dropped
        _, flags, payload = split_trace_context(flags, payload)
    if flags:
        raise StoreProtocolError(
            f"frame flags 0x{flags:04x} set, expected 0 or 0x{TRACED_FLAG:04x} (traced)"
        )
    return decoder(payload)


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
