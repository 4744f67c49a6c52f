"""The store's wire codec under hostile input: RequestDecoder, ResponseDecoder and every
response body decoder, within budget and alike however the bytes are cut."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.core.errors import FrameError
from postoffice.core.framing import MAX_PAYLOAD_BYTES
from postoffice.store.wire import (
    MAX_BATCH_OPS,
    MAX_BOUND_BYTES,
    MAX_KEY_BYTES,
    MAX_SCAN_LIMIT,
    MAX_VALUE_BYTES,
    RESPONSE_TYPE,
    RequestDecoder,
    RequestType,
    Response,
    ResponseDecoder,
    Status,
    StoreProtocolError,
    decode_delete_body,
    decode_empty_body,
    decode_error_body,
    decode_get_body,
    decode_scan_body,
    decode_stats_body,
)
from tests.fuzz.budget import (
    MAX_PEAK_BYTES,
    assert_split_feeds_agree,
    assert_within_budget,
    drain,
    frame_pieces,
    good_frames,
    header,
    joined,
    lengths,
    repeated,
    u16,
    u32,
)

fuzz_settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
cuts = st.lists(st.integers(0, 1 << 16), max_size=12)

# -- requests -------------------------------------------------------------------------

counts = st.one_of(
    st.integers(0, 4), st.sampled_from([MAX_BATCH_OPS - 1, MAX_BATCH_OPS, MAX_BATCH_OPS + 1])
)
keys = st.one_of(
    st.binary(max_size=8),
    st.sampled_from([MAX_KEY_BYTES, MAX_KEY_BYTES + 1, MAX_BOUND_BYTES + 1]).map(b"k".__mul__),
)


def batch_op(kind: int, key_len: int, value_len: int, body: bytes) -> bytes:
    return struct.pack(">BHI", kind, key_len & 0xFFFF, value_len & 0xFFFF_FFFF) + body


batch_ops = st.builds(
    batch_op,
    st.sampled_from([1, 2, 0, 3, 255]),
    lengths(MAX_KEY_BYTES),
    lengths(MAX_VALUE_BYTES),
    st.binary(max_size=12),
)
scan_bounds = st.builds(
    lambda n, body: u16(n) + body, lengths(MAX_BOUND_BYTES), st.binary(max_size=8)
)
request_payloads = st.one_of(
    st.binary(max_size=24),
    keys,
    st.builds(lambda key, value: u16(len(key)) + key + value, keys, st.binary(max_size=16)),
    st.builds(lambda n, rest: u16(n) + rest, lengths(MAX_KEY_BYTES), st.binary(max_size=16)),
    st.builds(
        lambda n, ops: u32(n) + b"".join(ops),
        counts | st.just(2**32 - 1),
        st.lists(batch_ops, max_size=5),
    ),
    st.builds(
        lambda flags, limit, bounds: bytes([flags]) + u32(limit) + b"".join(bounds),
        st.sampled_from([0, 1, 2, 4, 7, 8, 255]),
        st.sampled_from([0, 1, MAX_SCAN_LIMIT, MAX_SCAN_LIMIT + 1, 2**32 - 1]),
        st.lists(scan_bounds, max_size=3),
    ),
)
request_types = st.one_of(st.sampled_from(list(RequestType)), st.integers(0, 255))
request_pieces = frame_pieces(request_types, request_payloads, limit=MAX_PAYLOAD_BYTES)


def requests(chunks: Sequence[bytes]) -> list[object]:
    return drain(RequestDecoder(), chunks, fatal=FrameError, refused=StoreProtocolError)


@fuzz_settings
@given(
    repeated(request_pieces) | repeated(good_frames(request_types, request_payloads)),
    st.integers(0, 1 << 16),
)
def test_any_input_costs_the_request_decoder_little(data: bytes, cut: int) -> None:
    """64 KiB of requests with counts and lengths at and past every limit, whole or in two
    reads, cost at most 4 MiB and 100 ms and end in requests, refusals or FrameError."""
    chunks = [data[:cut], data[cut:]]
    assert_within_budget(lambda: requests(chunks), len(data), MAX_PEAK_BYTES)


@fuzz_settings
@given(joined(request_pieces), st.integers(0, 2**32), cuts)
def test_requests_come_out_the_same_however_the_bytes_are_cut(
    data: bytes, seed: int, pieces: list[int]
) -> None:
    assert_split_feeds_agree(data, seed, pieces, requests)


# -- responses and their bodies -------------------------------------------------------

items = st.builds(
    lambda key_len, value_len, body: (
        struct.pack(">HI", key_len & 0xFFFF, value_len & 0xFFFF_FFFF) + body
    ),
    lengths(MAX_KEY_BYTES),
    lengths(MAX_VALUE_BYTES),
    st.binary(max_size=12),
)
scan_bodies = st.builds(
    lambda count, more, parts: u32(count) + bytes([more]) + b"".join(parts),
    st.one_of(st.integers(0, 4), st.sampled_from([MAX_SCAN_LIMIT, MAX_SCAN_LIMIT + 1, 2**32 - 1])),
    st.sampled_from([0, 1, 2, 255]),
    st.lists(items, max_size=5),
)
#: JSON as deep as a frame can nest it, numbers longer than Python converts, and the rest.
stats_bodies = st.one_of(
    st.builds(
        lambda opener, depth, closed: opener * depth + (b"]" * depth if closed else b""),
        st.sampled_from([b"[", b'{"a":', b'{"a":[']),
        st.integers(1, 64) | st.sampled_from([1_000, 5_000, 40_000]),
        st.booleans(),
    ),
    st.builds(lambda n: b'{"n":' + b"9" * n + b"}", st.sampled_from([10, 4300, 4301, 20_000])),
    st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6), max_size=4).map(
        lambda stats: json.dumps(stats).encode()
    ),
    st.sampled_from([b"", b"{", b"null", b"NaN", b'{"a":NaN}', b"\xff", b'"\\ud800"']),
)
bodies = st.one_of(st.binary(max_size=16), scan_bodies, stats_bodies)
response_payloads = st.builds(
    lambda status, body: bytes([status]) + body, st.sampled_from([0, 1, 2, 7, 8, 255]), bodies
) | st.just(b"")
response_types = st.one_of(st.just(RESPONSE_TYPE), st.integers(0, 255))
response_pieces = frame_pieces(response_types, response_payloads, limit=MAX_PAYLOAD_BYTES)

BODY_DECODERS = [
    decode_empty_body,
    decode_get_body,
    decode_delete_body,
    decode_scan_body,
    decode_stats_body,
    decode_error_body,
]


def bodies_read(event: object) -> tuple[object, ...]:
    """A response, and what each body decoder makes of its body (a client knows which
    request a response answers; the fuzzer tries them all)."""
    assert isinstance(event, Response)
    read: list[object] = [event]
    for decoder in BODY_DECODERS:
        try:
            read.append(decoder(event.body))
        except StoreProtocolError as exc:
            read.append((type(exc).__name__, str(exc)))
    return tuple(read)


@fuzz_settings
@given(bodies)
def test_any_body_costs_the_body_decoders_little(body: bytes) -> None:
    """Each body decoder returns its value or raises StoreProtocolError, within budget."""
    event = Response(request_id=1, status=Status.OK, body=body)
    assert_within_budget(lambda: bodies_read(event), len(body), MAX_PEAK_BYTES)


def responses(chunks: Sequence[bytes]) -> list[object]:
    return drain(
        ResponseDecoder(), chunks, fatal=FrameError, refused=StoreProtocolError, show=bodies_read
    )


@fuzz_settings
@given(
    repeated(response_pieces) | repeated(good_frames(response_types, response_payloads)),
    st.integers(0, 1 << 16),
)
def test_any_input_costs_the_response_decoders_little(data: bytes, cut: int) -> None:
    """64 KiB of responses, scan pages and stats bodies at and past every limit, JSON nested
    as deep as the bytes allow, each body read by every body decoder: at most 4 MiB and
    100 ms, and only responses, StoreProtocolError or FrameError come out."""
    chunks = [data[:cut], data[cut:]]
    assert_within_budget(lambda: responses(chunks), len(data), MAX_PEAK_BYTES)


@fuzz_settings
@given(joined(response_pieces), st.integers(0, 2**32), cuts)
def test_responses_come_out_the_same_however_the_bytes_are_cut(
    data: bytes, seed: int, pieces: list[int]
) -> None:
    assert_split_feeds_agree(data, seed, pieces, responses)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000])
def test_stats_nested_past_the_recursion_limit_is_refused(body: bytes) -> None:
    """The JSON scanner recurses once per level; a bomb of brackets is a bad body, not a
    RecursionError that escapes the client's reader."""
    with pytest.raises(
        StoreProtocolError, match=r"^stats body is not valid json: nested too deeply$"
    ):
        decode_stats_body(body)


def framed(type_: int, payload: bytes) -> bytes:
    return header(type_, len(payload), crc=zlib.crc32(payload)) + payload


#: The most items a 64 KiB frame holds: a batch of one-byte deletes, a page of one-byte keys.
_OPS = 8000
_ITEMS = 9000
WORST_REQUESTS = [
    framed(
        RequestType.BATCH,
        u32(_OPS) + b"".join(struct.pack(">BHI", 2, 1, 0) + b"k" for _ in range(_OPS)),
    ),
    framed(RequestType.BATCH, u32(MAX_BATCH_OPS) + struct.pack(">BHI", 1, 1, 0) + b"k"),
    framed(
        RequestType.SCAN,
        bytes([7]) + u32(MAX_SCAN_LIMIT) + (u16(MAX_BOUND_BYTES) + b"s" * MAX_BOUND_BYTES) * 3,
    ),
    framed(RequestType.GET, b"k" * 60_000),
]
WORST_RESPONSES = [
    framed(
        RESPONSE_TYPE,
        b"\x00"
        + u32(_ITEMS)
        + b"\x00"
        + b"".join(struct.pack(">HI", 1, 0) + b"k" for _ in range(_ITEMS)),
    ),
    framed(RESPONSE_TYPE, b"\x00" + json.dumps({f"k{i}": i for i in range(5000)}).encode()),
    framed(RESPONSE_TYPE, b"\x00" + b"[" * 60_000),
]


@pytest.mark.parametrize("wire", WORST_REQUESTS, ids=["batch", "batch-count", "scan", "get"])
def test_the_largest_requests_a_read_holds_cost_little(wire: bytes) -> None:
    assert_within_budget(lambda: requests([wire]), len(wire), MAX_PEAK_BYTES)


@pytest.mark.parametrize("wire", WORST_RESPONSES, ids=["scan", "stats", "nested"])
def test_the_largest_responses_a_read_holds_cost_little(wire: bytes) -> None:
    assert_within_budget(lambda: responses([wire]), len(wire), MAX_PEAK_BYTES)
