"""The store protocol's optional trace context: a request frame with the TRACED flag
carries 25 bytes (trace id, span id, flags) in front of its payload."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.core.framing import (
    MAX_PAYLOAD_BYTES,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    encode_parts,
)
from postoffice.core.tracecontext import TRACE_CONTEXT_BYTES, TraceContext
from postoffice.store.wire import (
    TRACED_FLAG,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    RequestDecoder,
    ScanRequest,
    StoreProtocolError,
    add_trace_context,
    decode_request,
    decode_traced_request,
    encode_get,
    encode_put,
    encode_request,
    split_trace_context,
)

DOC = Path(__file__).parents[2] / "docs" / "protocols" / "store.md"
CONTEXT = TraceContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331, flags=1
)

contexts = st.builds(
    TraceContext,
    trace_id=st.integers(1, (1 << 128) - 1),
    span_id=st.integers(1, (1 << 64) - 1),
    flags=st.integers(0, 255),
)
requests: st.SearchStrategy[Request] = st.one_of(
    st.just(PingRequest()),
    st.builds(GetRequest, key=st.binary(min_size=1, max_size=64)),
    st.builds(PutRequest, key=st.binary(min_size=1, max_size=64), value=st.binary(max_size=64)),
    st.builds(DeleteRequest, key=st.binary(min_size=1, max_size=64)),
    st.builds(ScanRequest, prefix=st.none() | st.binary(max_size=8), limit=st.integers(1, 100)),
)


def _decoded(wire: bytes) -> tuple[TraceContext | None, Request]:
    return decode_traced_request(_frame_of(wire))


def test_the_context_is_25_bytes_in_order() -> None:
    assert TRACE_CONTEXT_BYTES == 25
    assert CONTEXT.to_bytes() == bytes.fromhex(
        "0af7651916cd43dd8448eb211c80319c" + "b7ad6b7169203331" + "01"
    )


@given(req=requests, context=contexts, request_id=st.integers(1, 2**64 - 1))
def test_a_traced_request_round_trips_with_its_context(
    req: Request, context: TraceContext, request_id: int
) -> None:
    wire = encode_request(req, request_id, trace=context)
    assert wire[4:6] == TRACED_FLAG.to_bytes(2, "big")
    assert _decoded(wire) == (context, req)
    assert add_trace_context(encode_request(req, request_id), context) == wire


@given(req=requests, request_id=st.integers(1, 2**64 - 1))
def test_an_untraced_request_is_unchanged_and_has_no_context(req: Request, request_id: int) -> None:
    wire = encode_request(req, request_id)
    assert wire[4:6] == b"\0\0"
    assert _decoded(wire) == (None, req)


def test_the_fast_encoders_take_a_context_too() -> None:
    assert _decoded(add_trace_context(encode_get(b"k", 3), CONTEXT)) == (
        CONTEXT,
        GetRequest(key=b"k"),
    )
    assert _decoded(add_trace_context(encode_put(b"k", b"v", 4), CONTEXT)) == (
        CONTEXT,
        PutRequest(key=b"k", value=b"v"),
    )


def test_decode_request_checks_the_context_and_drops_it() -> None:
    frames = RequestDecoder()
    frames.feed(encode_request(GetRequest(key=b"k"), 9, trace=CONTEXT))
    assert frames.next_event() == (9, GetRequest(key=b"k"))


@pytest.mark.parametrize("cut", range(TRACE_CONTEXT_BYTES))
def test_a_context_cut_short_is_a_bad_request(cut: int) -> None:
    payload = CONTEXT.to_bytes()[:cut]
    with pytest.raises(StoreProtocolError, match=rf"^trace context of {cut} bytes, expected 25$"):
        split_trace_context(TRACED_FLAG, payload)
    with pytest.raises(StoreProtocolError, match=r"^trace context of"):
        decode_request(_frame(0x01, TRACED_FLAG, payload))


def test_a_context_with_a_zero_id_is_a_bad_request() -> None:
    zero_trace = bytes(16) + CONTEXT.to_bytes()[16:]
    zero_span = CONTEXT.to_bytes()[:16] + bytes(8) + b"\x01"
    with pytest.raises(
        StoreProtocolError, match=r"^trace context has trace id 0, expected a non-zero id$"
    ):
        split_trace_context(TRACED_FLAG, zero_trace)
    with pytest.raises(
        StoreProtocolError, match=r"^trace context has span id 0, expected a non-zero id$"
    ):
        split_trace_context(TRACED_FLAG, zero_span + b"key")


def test_a_traced_request_with_a_bad_payload_names_the_payload() -> None:
    frame = _frame(0x01, TRACED_FLAG, CONTEXT.to_bytes() + b"x")
    with pytest.raises(StoreProtocolError, match=r"^ping payload of 1 bytes, expected 0$"):
        decode_request(frame)


def test_another_flag_beside_traced_is_still_refused() -> None:
    frame = _frame(0x01, TRACED_FLAG | 0x0004, CONTEXT.to_bytes())
    with pytest.raises(
        StoreProtocolError, match=r"^frame flags 0x0004 set, expected 0 or 0x0001 \(traced\)$"
    ):
        decode_request(frame)


@given(flags=st.integers(0, 0xFFFF), payload=st.binary(max_size=80))
def test_garbage_gives_a_request_or_a_store_protocol_error(flags: int, payload: bytes) -> None:
    for kind in range(1, 8):
        try:
            decode_request(_frame(kind, flags, payload))
        except StoreProtocolError:
            pass


def test_a_context_that_does_not_fit_the_frame_is_refused() -> None:
    wire = encode_put(b"k", bytes(MAX_PAYLOAD_BYTES - 3), 1)
    with pytest.raises(FrameTooLarge):
        add_trace_context(wire, CONTEXT)


def test_only_an_untraced_request_frame_takes_a_context() -> None:
    traced = encode_request(PingRequest(), 1, trace=CONTEXT)
    with pytest.raises(
        StoreProtocolError, match=r"^expected an encoded request frame without flags$"
    ):
        add_trace_context(traced, CONTEXT)
    with pytest.raises(StoreProtocolError):
        add_trace_context(b"PO", CONTEXT)


def test_the_documented_traced_ping_matches_the_codec() -> None:
    """docs/protocols/store.md shows these exact bytes."""
    wire = encode_request(PingRequest(), 1, trace=CONTEXT)
    assert len(wire) == 49
    hexes = re.findall(r"^([0-9a-f]{40,})$", DOC.read_text(), flags=re.MULTILINE)
    assert wire.hex() in hexes


def _frame_of(wire: bytes) -> Frame:
    frames = FrameDecoder()
    frames.feed(wire)
    frame = frames.next_event()
    assert isinstance(frame, Frame)
    return frame


def _frame(kind: int, flags: int, payload: bytes) -> Frame:
    return _frame_of(encode_parts(kind, flags, 1, payload))
