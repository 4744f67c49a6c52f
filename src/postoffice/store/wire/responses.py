"""The store protocol's responses: the RESPONSE frame and each request kind's body.

Pure sans-I/O on top of core.framing; the messages and limits are in `messages`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Final, cast, final

from postoffice.core import framing
from postoffice.core.framing import NEED_DATA, Frame, NeedData
from postoffice.store.errors import Status, StoreLimitError, StoreProtocolError
from postoffice.store.wire.messages import (
    MAX_KEY_BYTES,
    MAX_SCAN_LIMIT,
    RESPONSE_TYPE,
    Response,
    ScanPage,
    check_key,
    check_overrun,
    check_value,
)

_U8: Final = struct.Struct(">B")
_ITEM_HEAD: Final = struct.Struct(">HI")  # scan item: key len, value len
_PAGE_HEAD: Final = struct.Struct(">IB")  # scan body: count, more

# A response frame's header with its status byte, and the CRC-32 of each status byte
# alone (a response's CRC continues from it over the body).
_RESPONSE_HEAD: Final = struct.Struct(framing.HEADER.format + "B")
_STATUS_CRC: Final = tuple(zlib.crc32(bytes([code])) for code in range(8))


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
        check_key("scan item key", key)
        check_value("scan item value", len(value))
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
    check_value("get value", len(body))
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
        check_overrun(f"scan item {index} header", at + _ITEM_HEAD.size, body)
        key_len, value_len = cast("tuple[int, int]", _ITEM_HEAD.unpack_from(body, at))
        at += _ITEM_HEAD.size
        if key_len > MAX_KEY_BYTES:
            raise StoreLimitError(
                f"scan item {index} key of {key_len} bytes exceeds limit {MAX_KEY_BYTES}"
            )
        check_value(f"scan item {index} value", value_len)
        end = at + key_len + value_len
        check_overrun(f"scan item {index}", end, body)
        key = check_key(f"scan item {index} key", body[at : at + key_len])
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
    """The statistics object in a STATS OK body; raises StoreProtocolError (not UTF-8, not
    JSON, nested too deeply, not an object)."""
    text = _text("stats body", body)
    try:
        parsed: object = json.loads(text)
    except ValueError as exc:
        raise StoreProtocolError(f"stats body is not valid json: {exc}") from exc
    except RecursionError as exc:  # the scanner recurses once per level of nesting
        raise StoreProtocolError("stats body is not valid json: nested too deeply") from exc
    if not isinstance(parsed, dict):
        raise StoreProtocolError(f"stats body is a json {type(parsed).__name__}, expected object")
    return cast("dict[str, object]", parsed)


def decode_error_body(body: bytes) -> str:
    """The message in a non-OK body; raises StoreProtocolError if it is not UTF-8."""
    return _text("error message", body)


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
