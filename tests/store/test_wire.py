"""Tests for postoffice.store.wire: the store's binary request/response codec."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.core.errors import ConfigError, LimitExceeded, PostOfficeError, ProtocolError
from postoffice.core.framing import NEED_DATA, Frame, FrameDecoder, FrameError, encode_parts
from postoffice.store.errors import StoreStorageError, status_of
from postoffice.store.wire import (
    MAX_BATCH_OPS,
    MAX_BOUND_BYTES,
    MAX_KEY_BYTES,
    MAX_SCAN_LIMIT,
    RESPONSE_TYPE,
    BatchOp,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    RequestDecoder,
    RequestType,
    Response,
    ResponseDecoder,
    ScanPage,
    ScanRequest,
    StatsRequest,
    Status,
    StoreLimitError,
    StoreProtocolError,
    decode_delete_body,
    decode_empty_body,
    decode_error_body,
    decode_get_body,
    decode_request,
    decode_request_parts,
    decode_response,
    decode_scan_body,
    decode_stats_body,
    encode_delete_body,
    encode_error,
    encode_get,
    encode_put,
    encode_request,
    encode_response,
    encode_scan_body,
    encode_stats_body,
    next_start,
    response_head,
    split_put,
)
from tests.strategies import cut_points


def frame(kind: int, payload: bytes, *, flags: int = 0, request_id: int = 7) -> Frame:
    return Frame(type=kind, flags=flags, request_id=request_id, payload=payload)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def op(kind: int, key: bytes, value: bytes = b"", value_len: int | None = None) -> bytes:
    vlen = len(value) if value_len is None else value_len
    return struct.pack(">BHI", kind, len(key), vlen) + key + value


# --- requests: wire bytes <-> message -------------------------------------------------

REQUESTS: list[tuple[int, bytes, Request]] = [
    (0x01, b"", PingRequest()),
    (0x02, b"k", GetRequest(key=b"k")),
    (0x02, b"x" * MAX_KEY_BYTES, GetRequest(key=b"x" * MAX_KEY_BYTES)),
    (0x03, u16(3) + b"abc" + b"value", PutRequest(key=b"abc", value=b"value")),
    (0x03, u16(1) + b"a", PutRequest(key=b"a", value=b"")),
    (0x04, b"gone", DeleteRequest(key=b"gone")),
    (0x05, u32(0), BatchRequest(ops=())),
    (
        0x05,
        u32(2) + op(1, b"a", b"1") + op(2, b"b"),
        BatchRequest(ops=(PutRequest(key=b"a", value=b"1"), DeleteRequest(key=b"b"))),
    ),
    (0x06, b"\x00" + u32(10), ScanRequest(limit=10)),
    (0x06, b"\x01" + u32(1) + u16(2) + b"us", ScanRequest(prefix=b"us", limit=1)),
    (0x06, b"\x01" + u32(5) + u16(0), ScanRequest(prefix=b"", limit=5)),
    (
        0x06,
        b"\x07" + u32(MAX_SCAN_LIMIT) + u16(1) + b"p" + u16(2) + b"pa" + u16(2) + b"pz",
        ScanRequest(prefix=b"p", start=b"pa", end=b"pz", limit=MAX_SCAN_LIMIT),
    ),
    (
        0x06,
        b"\x06" + u32(3) + u16(1) + b"a" + u16(1) + b"m",
        ScanRequest(start=b"a", end=b"m", limit=3),
    ),
    (0x07, b"", StatsRequest()),
]


@pytest.mark.parametrize(("kind", "payload", "req"), REQUESTS)
def test_request_decodes(kind: int, payload: bytes, req: Request) -> None:
    assert decode_request(frame(kind, payload)) == req


@pytest.mark.parametrize(("kind", "payload", "req"), REQUESTS)
def test_request_encodes(kind: int, payload: bytes, req: Request) -> None:
    assert encode_request(req, 7) == encode_parts(kind, 0, 7, payload)


def test_request_types_match_the_table() -> None:
    assert [t.value for t in RequestType] == [1, 2, 3, 4, 5, 6, 7]
    assert RESPONSE_TYPE == 0x80


BAD_REQUESTS: list[tuple[int, bytes, int, type[StoreProtocolError], str]] = [
    (0x09, b"", 0, StoreProtocolError, r"^unknown request type 0x09$"),
    (0x80, b"\x00", 0, StoreProtocolError, r"^unknown request type 0x80$"),
    (
        0x01,
        b"",
        2,
        StoreProtocolError,
        r"^frame flags 0x0002 set, expected 0 or 0x0001 \(traced\)$",
    ),
    (0x01, b"x", 0, StoreProtocolError, r"^ping payload of 1 bytes, expected 0$"),
    (0x07, b"xy", 0, StoreProtocolError, r"^stats payload of 2 bytes, expected 0$"),
    (0x02, b"", 0, StoreProtocolError, r"^get key is empty$"),
    (0x02, b"x" * 1025, 0, StoreLimitError, r"^get key of 1025 bytes exceeds limit 1024$"),
    (0x04, b"", 0, StoreProtocolError, r"^delete key is empty$"),
    (0x04, b"x" * 1025, 0, StoreLimitError, r"^delete key of 1025 bytes exceeds limit 1024$"),
    (0x03, b"\x00", 0, StoreProtocolError, r"^put payload of 1 bytes, expected at least 2$"),
    (
        0x03,
        u16(5) + b"abcd",
        0,
        StoreProtocolError,
        r"^put key of 5 bytes ends at byte 7, past the payload of 6 bytes$",
    ),
    (0x03, u16(0) + b"v", 0, StoreProtocolError, r"^put key is empty$"),
    (
        0x03,
        u16(1025) + b"x" * 1025,
        0,
        StoreLimitError,
        r"^put key of 1025 bytes exceeds limit 1024$",
    ),
    (0x05, b"\x00\x00", 0, StoreProtocolError, r"^batch payload of 2 bytes, expected at least 4$"),
    (0x05, u32(10001), 0, StoreLimitError, r"^batch of 10001 ops exceeds limit 10000$"),
    (
        0x05,
        u32(1) + b"\x01\x00",
        0,
        StoreProtocolError,
        r"^batch op 0 header ends at byte 11, past the payload of 6 bytes$",
    ),
    (
        0x05,
        u32(1) + op(3, b"k"),
        0,
        StoreProtocolError,
        r"^batch op 0 kind 3 unknown, expected 1 \(put\) or 2 \(delete\)$",
    ),
    (
        0x05,
        u32(1) + op(2, b"k", value_len=4),
        0,
        StoreProtocolError,
        r"^batch op 0 delete has value length 4, expected 0$",
    ),
    (
        0x05,
        u32(2) + op(1, b"a", b"1") + op(1, b"x" * 1025),
        0,
        StoreLimitError,
        r"^batch op 1 key of 1025 bytes exceeds limit 1024$",
    ),
    (
        0x05,
        u32(1) + op(1, b"k", value_len=16 * 1024 * 1024 + 1),
        0,
        StoreLimitError,
        r"^batch op 0 value of 16777217 bytes exceeds limit 16777216$",
    ),
    (
        0x05,
        u32(1) + op(1, b"k", b"v", value_len=3),
        0,
        StoreProtocolError,
        r"^batch op 0 ends at byte 15, past the payload of 13 bytes$",
    ),
    (0x05, u32(1) + op(2, b""), 0, StoreProtocolError, r"^batch op 0 key is empty$"),
    (
        0x05,
        u32(1) + op(2, b"k") + b"zz",
        0,
        StoreProtocolError,
        r"^batch payload has 2 trailing bytes$",
    ),
    (0x06, b"\x00\x00", 0, StoreProtocolError, r"^scan payload of 2 bytes, expected at least 5$"),
    (
        0x06,
        b"\x08" + u32(1),
        0,
        StoreProtocolError,
        r"^scan flags 0x08 has unknown bits, known 0x07$",
    ),
    (0x06, b"\x00" + u32(0), 0, StoreProtocolError, r"^scan limit 0 out of range 1..10000$"),
    (
        0x06,
        b"\x00" + u32(10001),
        0,
        StoreProtocolError,
        r"^scan limit 10001 out of range 1..10000$",
    ),
    (
        0x06,
        b"\x01" + u32(1) + b"\x00",
        0,
        StoreProtocolError,
        r"^scan prefix length ends at byte 7, past the payload of 6 bytes$",
    ),
    (
        0x06,
        b"\x02" + u32(1) + u16(3) + b"ab",
        0,
        StoreProtocolError,
        r"^scan start of 3 bytes ends at byte 10, past the payload of 9 bytes$",
    ),
    (
        0x06,
        b"\x04" + u32(1) + u16(1026),
        0,
        StoreLimitError,
        r"^scan end of 1026 bytes exceeds limit 1025$",
    ),
    (0x06, b"\x00" + u32(1) + b"!", 0, StoreProtocolError, r"^scan payload has 1 trailing bytes$"),
]


@pytest.mark.parametrize(("kind", "payload", "flags", "error", "message"), BAD_REQUESTS)
def test_bad_request_raises(
    kind: int, payload: bytes, flags: int, error: type[StoreProtocolError], message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        decode_request(frame(kind, payload, flags=flags))
    assert type(info.value) is error
    assert isinstance(info.value, ProtocolError)


def test_error_classes_carry_their_status() -> None:
    assert status_of(StoreProtocolError("x")) is Status.BAD_REQUEST
    assert status_of(StoreLimitError("x")) is Status.TOO_LARGE
    assert status_of(StoreStorageError("x")) is Status.STORAGE
    assert status_of(PostOfficeError("x")) is Status.INTERNAL  # a code the store lacks
    assert issubclass(StoreLimitError, LimitExceeded)
    assert StoreLimitError.wire_code == "TOO_LARGE"


def test_scan_bound_may_be_one_longer_than_a_key() -> None:
    """The continuation of a page ending at a longest key is a valid start."""
    start = b"k" * MAX_KEY_BYTES + b"\0"
    assert len(start) == MAX_BOUND_BYTES
    req = ScanRequest(start=start, limit=1)
    assert decode_request(FrameDecoderHelper.one(encode_request(req, 1))) == req


BAD_ENCODES: list[tuple[Request, type[StoreProtocolError], str]] = [
    (GetRequest(key=b""), StoreProtocolError, r"^get key is empty$"),
    (
        DeleteRequest(key=b"x" * 1025),
        StoreLimitError,
        r"^delete key of 1025 bytes exceeds limit 1024$",
    ),
    (PutRequest(key=b"", value=b"v"), StoreProtocolError, r"^put key is empty$"),
    (
        PutRequest(key=b"k", value=bytes(16 * 1024 * 1024 + 1)),
        StoreLimitError,
        r"^put value of 16777217 bytes exceeds limit 16777216$",
    ),
    (
        BatchRequest(ops=(DeleteRequest(key=b"k"),) * (MAX_BATCH_OPS + 1)),
        StoreLimitError,
        r"^batch of 10001 ops exceeds limit 10000$",
    ),
    (
        BatchRequest(ops=(DeleteRequest(key=b"a"), PutRequest(key=b"", value=b""))),
        StoreProtocolError,
        r"^batch op 1 key is empty$",
    ),
    (ScanRequest(limit=0), StoreProtocolError, r"^scan limit 0 out of range 1..10000$"),
    (
        ScanRequest(prefix=b"p" * 1026, limit=1),
        StoreLimitError,
        r"^scan prefix of 1026 bytes exceeds limit 1025$",
    ),
]


@pytest.mark.parametrize(("req", "error", "message"), BAD_ENCODES)
def test_encoder_refuses_what_the_decoder_would(
    req: Request, error: type[StoreProtocolError], message: str
) -> None:
    with pytest.raises(error, match=message):
        encode_request(req, 1)


def test_encode_request_id_out_of_range_is_a_frame_error() -> None:
    with pytest.raises(
        FrameError, match=r"^frame request id -1 out of range 0..18446744073709551615$"
    ):
        encode_request(PingRequest(), -1)


_RESERVED = (
    r"^request id 0 is reserved for replies that answer no request, "
    r"expected 1\.\.18446744073709551615$"
)


def test_encoders_refuse_the_request_id_reserved_for_connection_replies() -> None:
    with pytest.raises(StoreProtocolError, match=_RESERVED):
        encode_request(PingRequest(), 0)
    with pytest.raises(StoreProtocolError, match=_RESERVED):
        encode_get(b"k", 0)
    with pytest.raises(StoreProtocolError, match=_RESERVED):
        encode_put(b"k", b"v", 0)
    assert encode_response(0, Status.BUSY, b"full")  # the server's own use of it


# --- responses ------------------------------------------------------------------------


def test_response_wire_bytes() -> None:
    wire = encode_response(9, Status.OK, b"val")
    assert wire == encode_parts(0x80, 0, 9, b"\x00val")
    assert decode_response(FrameDecoderHelper.one(wire)) == Response(
        request_id=9, status=Status.OK, body=b"val"
    )


def test_status_codes_match_the_table() -> None:
    assert [(s.name, s.value) for s in Status] == [
        ("OK", 0),
        ("NOT_FOUND", 1),
        ("BAD_REQUEST", 2),
        ("TOO_LARGE", 3),
        ("STORAGE", 4),
        ("BUSY", 5),
        ("SHUTTING_DOWN", 6),
        ("INTERNAL", 7),
    ]


def test_encode_error_body_is_utf8_message() -> None:
    wire = encode_error(3, Status.NOT_FOUND, "key b'k' not found")
    response = decode_response(FrameDecoderHelper.one(wire))
    assert response.status is Status.NOT_FOUND
    assert decode_error_body(response.body) == "key b'k' not found"


def test_encode_error_refuses_ok() -> None:
    with pytest.raises(
        StoreProtocolError, match=r"^error response needs a non-ok status, found ok$"
    ):
        encode_error(3, Status.OK, "x")


BAD_RESPONSES: list[tuple[Frame, str]] = [
    (frame(0x02, b"\x00"), r"^response frame type 0x02, expected 0x80$"),
    (frame(0x80, b"\x00", flags=2), r"^frame flags 0x0002 set, expected 0$"),
    (frame(0x80, b""), r"^response payload is empty, expected a status byte$"),
    (frame(0x80, b"\x08"), r"^unknown response status 8$"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_RESPONSES)
def test_bad_response_raises(bad: Frame, message: str) -> None:
    with pytest.raises(StoreProtocolError, match=message):
        decode_response(bad)


BODIES: list[tuple[bytes, object, str]] = [
    (b"", None, "empty"),
    (b"\x00", False, "delete"),
    (b"\x01", True, "delete"),
    (u32(0) + b"\x00", ScanPage(items=(), more=False), "scan"),
    (
        u32(2) + b"\x01" + u16(1) + u32(2) + b"a" + b"va" + u16(2) + u32(0) + b"bb",
        ScanPage(items=((b"a", b"va"), (b"bb", b"")), more=True),
        "scan",
    ),
    (b'{"active":1,"requests":3}', {"active": 1, "requests": 3}, "stats"),
]


@pytest.mark.parametrize(("body", "value", "kind"), BODIES)
def test_body_round_trips(body: bytes, value: object, kind: str) -> None:
    match kind:
        case "empty":
            decode_empty_body(body)
        case "delete":
            assert decode_delete_body(body) is value
            assert encode_delete_body(bool(value)) == body
        case "scan":
            assert isinstance(value, ScanPage)
            assert decode_scan_body(body) == value
            assert encode_scan_body(value.items, value.more) == body
        case "stats":
            assert isinstance(value, dict)
            assert decode_stats_body(body) == value
            assert encode_stats_body(value) == body


BAD_BODIES: list[tuple[str, bytes, type[StoreProtocolError], str]] = [
    ("empty", b"x", StoreProtocolError, r"^response body of 1 bytes, expected 0$"),
    (
        "delete",
        b"",
        StoreProtocolError,
        r"^delete response body b'', expected b'\\x00' or b'\\x01'$",
    ),
    (
        "delete",
        b"\x02",
        StoreProtocolError,
        r"^delete response body b'\\x02', expected b'\\x00' or b'\\x01'$",
    ),
    ("scan", b"\x00", StoreProtocolError, r"^scan response body of 1 bytes, expected at least 5$"),
    ("scan", u32(0) + b"\x02", StoreProtocolError, r"^scan response more flag 2, expected 0 or 1$"),
    (
        "scan",
        u32(10001) + b"\x00",
        StoreLimitError,
        r"^scan page of 10001 items exceeds limit 10000$",
    ),
    (
        "scan",
        u32(1) + b"\x00" + b"\x00",
        StoreProtocolError,
        r"^scan item 0 header ends at byte 11, past the payload of 6 bytes$",
    ),
    (
        "scan",
        u32(1) + b"\x00" + u16(1025) + u32(0),
        StoreLimitError,
        r"^scan item 0 key of 1025 bytes exceeds limit 1024$",
    ),
    (
        "scan",
        u32(1) + b"\x00" + u16(1) + u32(5) + b"k",
        StoreProtocolError,
        r"^scan item 0 ends at byte 17, past the payload of 12 bytes$",
    ),
    (
        "scan",
        u32(1) + b"\x00" + u16(0) + u32(0),
        StoreProtocolError,
        r"^scan item 0 key is empty$",
    ),
    ("scan", u32(0) + b"\x00!", StoreProtocolError, r"^scan response body has 1 trailing bytes$"),
    ("stats", b"\xff", StoreProtocolError, r"^stats body is not valid utf-8 at byte 0$"),
    ("stats", b"[1]", StoreProtocolError, r"^stats body is a json list, expected object$"),
    ("stats", b"{", StoreProtocolError, r"^stats body is not valid json: .+$"),
    ("error", b"\xc3", StoreProtocolError, r"^error message is not valid utf-8 at byte 0$"),
]


@pytest.mark.parametrize(("kind", "body", "error", "message"), BAD_BODIES)
def test_bad_body_raises(
    kind: str, body: bytes, error: type[StoreProtocolError], message: str
) -> None:
    decoders = {
        "empty": decode_empty_body,
        "delete": decode_delete_body,
        "scan": decode_scan_body,
        "stats": decode_stats_body,
        "error": decode_error_body,
    }
    with pytest.raises(error, match=message):
        decoders[kind](body)


def test_get_body_is_the_value() -> None:
    assert decode_get_body(b"hello") == b"hello"


def test_encode_stats_body_refuses_non_json() -> None:
    with pytest.raises(StoreProtocolError, match=r"^stats are not serialisable as json: .+$"):
        encode_stats_body({"x": object()})


def test_encode_scan_body_refuses_too_many_items() -> None:
    with pytest.raises(StoreLimitError, match=r"^scan page of 10001 items exceeds limit 10000$"):
        encode_scan_body([(b"k", b"")] * 10001, more=False)


def test_next_start_is_last_key_plus_nul() -> None:
    assert next_start(ScanPage(items=((b"a", b""), (b"b", b"")), more=True)) == b"b\0"
    assert next_start(ScanPage(items=((b"a", b""),), more=False)) is None
    assert next_start(ScanPage(items=(), more=True)) is None


# --- incremental decoders -------------------------------------------------------------


class FrameDecoderHelper:
    @staticmethod
    def one(wire: bytes) -> Frame:
        decoder = FrameDecoder()
        decoder.feed(wire)
        got = decoder.next_event()
        assert isinstance(got, Frame)
        assert decoder.next_event() is NEED_DATA
        return got


def drain(decoder: RequestDecoder) -> list[tuple[int, Request]]:
    out: list[tuple[int, Request]] = []
    while (event := decoder.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        out.append(event)
    return out


PIPELINE: bytes = b"".join(
    encode_request(req, i) for i, (_, _, req) in enumerate(REQUESTS, start=1)
)
EXPECTED: list[tuple[int, Request]] = [(i, req) for i, (_, _, req) in enumerate(REQUESTS, start=1)]


def test_pipelined_requests_decode_in_order() -> None:
    decoder = RequestDecoder()
    decoder.feed(PIPELINE)
    assert drain(decoder) == EXPECTED
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize(
    ("head", "tail"),
    cut_points(encode_request(PutRequest(key=b"ky", value=b"val"), 5))
    + cut_points(encode_request(ScanRequest(prefix=b"p", end=b"q", limit=2), 6)),
)
def test_request_split_at_every_cut_point(head: bytes, tail: bytes) -> None:
    decoder = RequestDecoder()
    decoder.feed(head)
    first = drain(decoder)
    decoder.feed(tail)
    events = first + drain(decoder)
    assert len(events) == 1
    assert decoder.buffered_bytes == 0


def test_pipeline_fed_one_byte_at_a_time() -> None:
    decoder = RequestDecoder()
    events: list[tuple[int, Request]] = []
    for i in range(len(PIPELINE)):
        decoder.feed(PIPELINE[i : i + 1])
        events += drain(decoder)
    assert events == EXPECTED


def test_bad_request_keeps_the_decoder_usable() -> None:
    decoder = RequestDecoder()
    decoder.feed(encode_parts(0x02, 0, 11, b"") + encode_request(PingRequest(), 12))
    with pytest.raises(StoreProtocolError, match=r"^get key is empty$"):
        decoder.next_event()
    assert decoder.last_request_id == 11
    assert not decoder.failed
    assert drain(decoder) == [(12, PingRequest())]


def test_oversized_frame_breaks_the_decoder() -> None:
    decoder = RequestDecoder(max_payload_bytes=8)
    decoder.feed(encode_request(GetRequest(key=b"123456789"), 4))
    with pytest.raises(FrameError, match=r"^frame payload length 9 exceeds limit 8$") as info:
        decoder.next_event()
    assert info.value.request_id == 4
    assert decoder.failed
    assert "FAILED" in repr(decoder)


def test_decoder_limit_out_of_range_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^max_payload_bytes -1 out of range 0..16777216$"):
        RequestDecoder(max_payload_bytes=-1)
    with pytest.raises(ConfigError, match=r"^max_payload_bytes 16777217 out of range 0..16777216$"):
        ResponseDecoder(max_payload_bytes=16 * 1024 * 1024 + 1)


def test_response_decoder_split_at_every_cut_point() -> None:
    wire = encode_response(1, Status.OK, b"v") + encode_error(2, Status.BUSY, "busy")
    expected = [
        Response(request_id=1, status=Status.OK, body=b"v"),
        Response(request_id=2, status=Status.BUSY, body=b"busy"),
    ]
    for head, tail in cut_points(wire):
        decoder = ResponseDecoder()
        got: list[Response] = []
        for part in (head, tail):
            decoder.feed(part)
            while (event := decoder.next_event()) is not NEED_DATA:
                assert isinstance(event, Response)
                got.append(event)
        assert got == expected
        assert decoder.buffered_bytes == 0
    assert "OK" in repr(ResponseDecoder())


# --- hypothesis -----------------------------------------------------------------------

# Any id a response may carry; a request's id is never 0 (reserved for the server).
request_ids = st.integers(0, 2**64 - 1)
client_ids = st.integers(1, 2**64 - 1)
keys = st.binary(min_size=1, max_size=40) | st.binary(
    min_size=MAX_KEY_BYTES, max_size=MAX_KEY_BYTES
)
values = st.binary(max_size=64)
bounds = st.none() | st.binary(max_size=MAX_BOUND_BYTES)
puts = st.builds(PutRequest, key=keys, value=values)
deletes = st.builds(DeleteRequest, key=keys)
batch_ops: st.SearchStrategy[BatchOp] = puts | deletes
requests: st.SearchStrategy[Request] = st.one_of(
    st.just(PingRequest()),
    st.builds(GetRequest, key=keys),
    puts,
    deletes,
    st.builds(BatchRequest, ops=st.lists(batch_ops, max_size=8).map(tuple)),
    st.builds(
        ScanRequest,
        prefix=bounds,
        start=bounds,
        end=bounds,
        limit=st.integers(1, MAX_SCAN_LIMIT),
    ),
    st.just(StatsRequest()),
)


@given(requests, client_ids)
def test_request_round_trip(req: Request, request_id: int) -> None:
    decoder = RequestDecoder()
    decoder.feed(encode_request(req, request_id))
    assert drain(decoder) == [(request_id, req)]


@given(st.sampled_from(Status), st.binary(max_size=64), request_ids)
def test_response_round_trip(status: Status, body: bytes, request_id: int) -> None:
    decoder = ResponseDecoder()
    decoder.feed(encode_response(request_id, status, body))
    assert decoder.next_event() == Response(request_id=request_id, status=status, body=body)


@given(st.lists(st.tuples(keys, values), max_size=8), st.booleans())
def test_scan_body_round_trip(items: list[tuple[bytes, bytes]], more: bool) -> None:
    page = decode_scan_body(encode_scan_body(items, more))
    assert page == ScanPage(items=tuple(items), more=more)


@given(st.booleans())
def test_delete_body_round_trip(existed: bool) -> None:
    assert decode_delete_body(encode_delete_body(existed)) is existed


@given(values)
def test_get_body_round_trip(value: bytes) -> None:
    response = decode_response(FrameDecoderHelper.one(encode_response(1, Status.OK, value)))
    assert decode_get_body(response.body) == value


json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=16)


@given(
    st.dictionaries(
        st.text(max_size=16), json_scalars | st.lists(json_scalars, max_size=4), max_size=8
    )
)
def test_stats_body_round_trip(stats: dict[str, object]) -> None:
    assert decode_stats_body(encode_stats_body(stats)) == stats


@given(st.sampled_from([s for s in Status if s is not Status.OK]), st.text(max_size=40))
def test_error_body_round_trip(status: Status, message: str) -> None:
    response = decode_response(FrameDecoderHelper.one(encode_error(1, status, message)))
    assert response.status is status
    assert decode_error_body(response.body) == message.encode("utf-8", "replace").decode()


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_requests_or_protocol_errors(data: bytes) -> None:
    decoder = RequestDecoder()
    decoder.feed(data)
    for _ in range(len(data) + 1):
        try:
            if decoder.next_event() is NEED_DATA:
                return
        except FrameError:
            return
        except StoreProtocolError:
            continue


@given(st.integers(0, 0xFF), st.binary(max_size=120))
def test_arbitrary_payloads_give_requests_or_store_errors(kind: int, payload: bytes) -> None:
    """Well-framed garbage never escapes as anything but StoreProtocolError."""
    try:
        decode_request(frame(kind, payload))
    except StoreProtocolError:
        pass


@given(st.binary(max_size=120))
def test_arbitrary_bodies_give_values_or_store_errors(body: bytes) -> None:
    for decoder in (decode_scan_body, decode_delete_body, decode_stats_body, decode_error_body):
        try:
            decoder(body)
        except StoreProtocolError:
            pass


def test_documented_put_example_matches_the_codec() -> None:
    """docs/protocols/store.md shows these exact bytes."""
    put = encode_request(PutRequest(key=b"user:1", value=b"alice"), 42)
    assert put.hex() == "504f010300000000000000000000002a0000000da85a14000006757365723a31616c696365"
    assert encode_response(42, Status.OK).hex() == (
        "504f018000000000000000000000002a00000001d202ef8d00"
    )


# --- the server's hot-path helpers ------------------------------------------------------------


@given(st.sampled_from(Status), st.binary(max_size=300), request_ids)
def test_response_head_then_body_is_the_response(
    status: Status, body: bytes, request_id: int
) -> None:
    head = response_head(request_id, status, body)
    assert len(head) == 25
    assert head + body == encode_response(request_id, status, body)
    assert decode_response(FrameDecoderHelper.one(head + body)).body == body


def test_response_head_refuses_what_a_frame_cannot_carry() -> None:
    with pytest.raises(FrameError, match=r"^frame request id -1 out of range"):
        response_head(-1, Status.OK)
    with pytest.raises(FrameError, match=r"^frame payload length 16777217 exceeds limit"):
        response_head(1, Status.OK, b"v" * (16 * 1024 * 1024))


def _outcome(call: object, *args: object) -> object:
    try:
        return call(*args)  # type: ignore[operator]
    except StoreProtocolError as exc:
        return (type(exc), str(exc))


@given(
    st.one_of(
        st.binary(max_size=40),
        st.builds(lambda k, v: u16(len(k)) + k + v, st.binary(max_size=40), st.binary(max_size=40)),
        st.builds(lambda n, rest: u16(n) + rest, st.integers(0, 0xFFFF), st.binary(max_size=40)),
    )
)
def test_split_put_agrees_with_decode_request(payload: bytes) -> None:
    """The same key and value, or the same error, for any payload."""

    def via_request(raw: bytes) -> tuple[bytes, bytes]:
        req = decode_request(frame(RequestType.PUT, raw))
        assert isinstance(req, PutRequest)
        return req.key, req.value

    assert _outcome(split_put, payload) == _outcome(via_request, payload)


def test_split_put_limits() -> None:
    key = b"k" * MAX_KEY_BYTES
    assert split_put(u16(len(key)) + key + b"v") == (key, b"v")
    with pytest.raises(StoreLimitError, match=r"^put key of 1025 bytes exceeds limit 1024$"):
        split_put(u16(MAX_KEY_BYTES + 1) + b"k" * (MAX_KEY_BYTES + 1))
    with pytest.raises(StoreProtocolError, match=r"^put key is empty$"):
        split_put(u16(0) + b"value")


@given(st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.binary(max_size=60))
def test_decode_request_parts_is_decode_request(kind: int, flags: int, payload: bytes) -> None:
    framed = frame(kind, payload, flags=flags)
    assert _outcome(decode_request_parts, kind, flags, payload) == _outcome(decode_request, framed)


def test_statuses_are_numbered_without_gaps() -> None:
    assert [status.value for status in Status] == list(range(len(Status)))


@given(keys, client_ids)
def test_encode_get_is_encode_request(key: bytes, request_id: int) -> None:
    assert encode_get(key, request_id) == encode_request(GetRequest(key=key), request_id)


@given(keys, values, client_ids)
def test_encode_put_is_encode_request(key: bytes, value: bytes, request_id: int) -> None:
    wire = encode_put(key, value, request_id)
    assert wire == encode_request(PutRequest(key=key, value=value), request_id)


def test_encode_get_and_put_refuse_what_encode_request_refuses() -> None:
    from postoffice.store.wire import encode_get, encode_put

    with pytest.raises(StoreProtocolError, match=r"^get key is empty$"):
        encode_get(b"", 1)
    with pytest.raises(StoreLimitError, match=r"^put key of 1025 bytes exceeds limit 1024$"):
        encode_put(b"k" * 1025, b"v", 1)
    with pytest.raises(StoreLimitError, match=r"^put value of 16777217 bytes exceeds limit"):
        encode_put(b"k", b"v" * (16 * 1024 * 1024 + 1), 1)


@given(st.integers(0, 0xFF), st.integers(0, 0xFFFF), request_ids, st.binary(max_size=40))
def test_decode_response_parts_is_decode_response(
    kind: int, flags: int, request_id: int, payload: bytes
) -> None:
    from postoffice.store.wire import decode_response_parts

    framed = frame(kind, payload, flags=flags, request_id=request_id)
    assert _outcome(decode_response_parts, kind, flags, request_id, payload) == _outcome(
        decode_response, framed
    )


def test_decode_response_parts_of_each_status() -> None:
    from postoffice.store.wire import decode_response_parts

    for status in Status:
        response = decode_response_parts(RESPONSE_TYPE, 0, 9, bytes([status]) + b"body")
        assert response == Response(request_id=9, status=status, body=b"body")
        assert response.status is status
    with pytest.raises(StoreProtocolError, match=r"^unknown response status 8$"):
        decode_response_parts(RESPONSE_TYPE, 0, 9, b"\x08")


# --- the frame binds a value before MAX_VALUE_BYTES does ------------------------------------

_MIB16 = 16 * 1024 * 1024


def test_the_largest_put_value_is_the_frame_payload_less_2_and_the_key() -> None:
    wire = encode_put(b"k", b"v" * (_MIB16 - 3), 1)
    assert len(wire) == 24 + _MIB16
    assert len(encode_request(PutRequest(key=b"kk", value=b"v" * (_MIB16 - 4)), 1)) == len(wire)


def test_a_put_value_one_byte_too_long_for_one_frame_is_a_store_limit_error() -> None:
    value = b"v" * (_MIB16 - 2)
    message = (
        r"^put value of 16777214 bytes exceeds limit 16777213 for a key of 1 bytes "
        r"\(a frame payload holds 16777216\)$"
    )
    with pytest.raises(StoreLimitError, match=message):
        encode_put(b"k", value, 1)
    with pytest.raises(StoreLimitError, match=message):
        encode_request(PutRequest(key=b"k", value=value), 1)


def test_the_largest_batch_value_is_the_frame_payload_less_12_and_the_key() -> None:
    fits = BatchRequest(ops=(PutRequest(key=b"k", value=b"v" * (_MIB16 - 12)),))
    assert len(encode_request(fits, 1)) == 24 + _MIB16
    over = BatchRequest(ops=(PutRequest(key=b"k", value=b"v" * (_MIB16 - 11)),))
    with pytest.raises(
        StoreLimitError, match=r"^batch payload of 16777217 bytes exceeds limit 16777216$"
    ):
        encode_request(over, 1)
