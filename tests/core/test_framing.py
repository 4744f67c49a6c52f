"""Tests for postoffice.core.framing: the shared binary frame codec, bytes only."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.core import framing
from postoffice.core.errors import ConfigError, LimitExceeded, ProtocolError
from postoffice.core.framing import (
    HEADER,
    HEADER_BYTES,
    MAGIC,
    MAX_PAYLOAD_BYTES,
    NEED_DATA,
    VERSION,
    Frame,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    NeedData,
    encode,
    encode_header,
    encode_parts,
)
from tests.builds import compiled

# The header layout spelled out independently of the module under test, so a change to
# HEADER that breaks the wire format fails these tests.
_WIRE_HEADER = struct.Struct(">2sBBHHQII")


def _wire(
    payload: bytes = b"",
    *,
    magic: bytes = b"PO",
    version: int = 1,
    type: int = 0,
    flags: int = 0,
    reserved: int = 0,
    request_id: int = 0,
    length: int | None = None,
    crc: int | None = None,
) -> bytes:
    """Build frame bytes by hand, with any field overridable to make bad frames."""
    return (
        _WIRE_HEADER.pack(
            magic,
            version,
            type,
            flags,
            reserved,
            request_id,
            len(payload) if length is None else length,
            zlib.crc32(payload) if crc is None else crc,
        )
        + payload
    )


def _drain(decoder: FrameDecoder) -> list[Frame]:
    frames: list[Frame] = []
    while True:
        event = decoder.next_event()
        if event is NEED_DATA:
            return frames
        frames.append(event)


def _decode_chunks(chunks: list[bytes], max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> list[Frame]:
    """Feed each chunk in turn, draining after each; assert nothing is left over."""
    decoder = FrameDecoder(max_payload_bytes)
    frames: list[Frame] = []
    for chunk in chunks:
        decoder.feed(chunk)
        frames.extend(_drain(decoder))
    assert decoder.buffered_bytes == 0
    return frames


def _cuts(data: bytes) -> list[list[bytes]]:
    """Every way to split `data` into two feeds (including an empty first or last one)."""
    return [[data[:i], data[i:]] for i in range(len(data) + 1)]


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- constants -------------------------------------------------------------------------


def test_header_constants_match_the_documented_layout() -> None:
    assert HEADER.format == _WIRE_HEADER.format
    assert HEADER.size == HEADER_BYTES == 24
    assert MAGIC == b"PO"
    assert VERSION == 1
    assert MAX_PAYLOAD_BYTES == 16 * 1024 * 1024


# --- table tests: good wire bytes -> frames ----------------------------------------------

_DOC_EXAMPLE = bytes.fromhex(
    "504f010300010000000000000000002a0000000c3a8b3b0e68656c6c6f2c2073746f7265"
)

VALID: list[tuple[bytes, Frame]] = [
    (
        _DOC_EXAMPLE,
        Frame(type=3, flags=0x0001, request_id=42, payload=b"hello, store"),
    ),
    (
        bytes.fromhex("504f01020000000000000000000000010000000000000000"),
        Frame(type=2, flags=0, request_id=1, payload=b""),
    ),
    (
        _wire(b"\x00\xff" * 5, type=255, flags=0xFFFF, request_id=2**64 - 1),
        Frame(type=255, flags=0xFFFF, request_id=2**64 - 1, payload=b"\x00\xff" * 5),
    ),
    (
        _wire(b"PO\x01" * 7, type=9, request_id=7),
        Frame(type=9, flags=0, request_id=7, payload=b"PO\x01" * 7),
    ),
]


@pytest.mark.parametrize(("wire", "expected"), VALID)
def test_valid_frame_decodes(wire: bytes, expected: Frame) -> None:
    assert _decode_chunks([wire]) == [expected]


@pytest.mark.parametrize(("wire", "expected"), VALID)
def test_valid_frame_encodes_to_the_same_bytes(wire: bytes, expected: Frame) -> None:
    assert encode(expected) == wire
    assert (
        encode_parts(expected.type, expected.flags, expected.request_id, expected.payload) == wire
    )
    assert (
        encode_header(expected.type, expected.flags, expected.request_id, expected.payload)
        == wire[:HEADER_BYTES]
    )


@pytest.mark.parametrize(("wire", "expected"), VALID)
def test_valid_frame_split_one_byte_at_a_time(wire: bytes, expected: Frame) -> None:
    assert _decode_chunks(_bytewise(wire)) == [expected]


@pytest.mark.parametrize(("wire", "expected"), VALID)
def test_valid_frame_split_at_every_cut_point(wire: bytes, expected: Frame) -> None:
    for chunks in _cuts(wire):
        assert _decode_chunks(chunks) == [expected], chunks


def test_payload_of_exactly_the_limit_is_accepted() -> None:
    wire = _wire(b"12345678", request_id=5)
    assert _decode_chunks([wire], max_payload_bytes=8) == [
        Frame(type=0, flags=0, request_id=5, payload=b"12345678")
    ]


def test_zero_limit_still_accepts_empty_payloads() -> None:
    assert _decode_chunks([_wire(type=1)], max_payload_bytes=0) == [
        Frame(type=1, flags=0, request_id=0, payload=b"")
    ]


def test_large_payload_split_across_feeds() -> None:
    """Payloads large enough to be copied out through a memoryview decode the same."""
    payload = bytes(range(256)) * 1024  # 256 KiB
    frame = Frame(type=4, flags=2, request_id=99, payload=payload)
    wire = encode(frame) + encode(frame)
    chunks = [wire[i : i + 65_537] for i in range(0, len(wire), 65_537)]
    assert _decode_chunks(chunks) == [frame, frame]


# --- table tests: bad wire bytes -> error messages ---------------------------------------

INVALID: list[tuple[bytes, str]] = [
    (_wire(b"abc", magic=b"XY"), r"^bad frame magic b'XY', expected b'PO'$"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", r"^bad frame magic b'GE', expected b'PO'$"),
    (_wire(b"abc", magic=b"op"), r"^bad frame magic b'op', expected b'PO'$"),
    (_wire(b"abc", version=2), r"^unsupported frame version 2, expected 1$"),
    (_wire(b"abc", version=0), r"^unsupported frame version 0, expected 1$"),
    (_wire(b"abc", reserved=1), r"^frame reserved field 0x0001, expected 0$"),
    (_wire(b"abc", reserved=0x8000), r"^frame reserved field 0x8000, expected 0$"),
    (
        _wire(b"", length=MAX_PAYLOAD_BYTES + 1),
        r"^frame payload length 16777217 exceeds limit 16777216$",
    ),
    (_wire(b"", length=2**32 - 1), r"^frame payload length 4294967295 exceeds limit 16777216$"),
    (
        _wire(b"hello", crc=0xDEADBEEF),
        r"^payload checksum 0x3610a686 does not match header 0xdeadbeef$",
    ),
    (_wire(b"", crc=1), r"^payload checksum 0x00000000 does not match header 0x00000001$"),
    # A valid frame first: the error in the second one must still be found.
    (_DOC_EXAMPLE + _wire(b"x", version=7), r"^unsupported frame version 7, expected 1$"),
]


def _decode_until_error(chunks: list[bytes], max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
    decoder = FrameDecoder(max_payload_bytes)
    for chunk in chunks:
        decoder.feed(chunk)
        _drain(decoder)


@pytest.mark.parametrize(("wire", "message"), INVALID)
def test_invalid_frame_raises(wire: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        _decode_until_error([wire])


@pytest.mark.parametrize(("wire", "message"), INVALID)
def test_invalid_frame_split_one_byte_at_a_time(wire: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        _decode_until_error(_bytewise(wire))


@pytest.mark.parametrize(("wire", "message"), INVALID)
def test_invalid_frame_split_at_every_cut_point(wire: bytes, message: str) -> None:
    for chunks in _cuts(wire):
        with pytest.raises(FrameError, match=message):
            _decode_until_error(chunks)


def test_decoder_limit_below_the_hard_ceiling() -> None:
    wire = _wire(b"", length=9_000_001)
    with pytest.raises(
        FrameTooLarge, match=r"^frame payload length 9000001 exceeds limit 8388608$"
    ):
        _decode_until_error([wire], max_payload_bytes=8 * 1024 * 1024)


def test_bad_magic_is_detected_from_the_first_two_bytes() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"P")
    assert decoder.next_event() is NEED_DATA
    decoder.feed(b"X")
    with pytest.raises(FrameError, match=r"^bad frame magic b'PX', expected b'PO'$"):
        decoder.next_event()


def test_magic_prefix_waits_for_the_rest_of_the_header() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"PO\x01")
    assert decoder.next_event() is NEED_DATA
    assert decoder.buffered_bytes == 3


# --- limits are checked from the header alone --------------------------------------------


def test_oversized_length_raises_before_any_payload_arrives() -> None:
    decoder = FrameDecoder(max_payload_bytes=1024)
    decoder.feed(_wire(b"", type=6, request_id=77, length=1025))
    with pytest.raises(
        FrameTooLarge, match=r"^frame payload length 1025 exceeds limit 1024$"
    ) as info:
        decoder.next_event()
    error = info.value
    assert isinstance(error, FrameError)
    assert isinstance(error, ProtocolError)
    assert isinstance(error, LimitExceeded)
    assert error.wire_code == "LIMIT"
    assert (error.length, error.limit, error.request_id) == (1025, 1024, 77)
    assert decoder.buffered_bytes == 0


def test_oversized_length_over_the_hard_ceiling_raises_from_the_header() -> None:
    decoder = FrameDecoder()
    decoder.feed(_wire(b"", length=MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(FrameTooLarge):
        decoder.next_event()


def test_header_is_validated_before_the_payload_is_complete() -> None:
    decoder = FrameDecoder()
    decoder.feed(_wire(b"abc", reserved=2)[:HEADER_BYTES])
    with pytest.raises(FrameError, match=r"^frame reserved field 0x0002, expected 0$"):
        decoder.next_event()


def test_checksum_error_carries_the_request_id() -> None:
    decoder = FrameDecoder()
    decoder.feed(_wire(b"data", request_id=31337, crc=0))
    with pytest.raises(FrameError) as info:
        decoder.next_event()
    assert info.value.request_id == 31337
    assert info.value.wire_code == "PROTO"


def test_header_errors_carry_no_request_id() -> None:
    decoder = FrameDecoder()
    decoder.feed(_wire(b"", request_id=5, version=9))
    with pytest.raises(FrameError) as info:
        decoder.next_event()
    assert info.value.request_id is None


def test_a_whole_header_with_a_bad_magic_carries_no_request_id() -> None:
    decoder = FrameDecoder()
    decoder.feed(_wire(b"", request_id=5, magic=b"XY"))
    with pytest.raises(FrameError, match=r"^bad frame magic b'XY', expected b'PO'$") as info:
        decoder.next_event()
    assert info.value.request_id is None


def test_a_reserved_field_error_carries_the_request_id_of_its_version_1_header() -> None:
    decoder = FrameDecoder()
    decoder.feed(_wire(b"abc", request_id=6, reserved=1))
    with pytest.raises(FrameError, match=r"^frame reserved field 0x0001, expected 0$") as info:
        decoder.next_event()
    assert info.value.request_id == 6


# --- poisoned after an error --------------------------------------------------------------


def test_decoder_stays_failed_after_an_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(_wire(b"abc", magic=b"XY"))
    with pytest.raises(FrameError) as first:
        decoder.next_event()
    assert decoder.failed
    decoder.feed(_DOC_EXAMPLE)  # valid bytes cannot resynchronise a lost stream
    assert decoder.buffered_bytes == 0
    for _ in range(3):
        with pytest.raises(FrameError, match=r"^bad frame magic b'XY', expected b'PO'$") as again:
            decoder.next_event()
        assert again.value is first.value


def test_frames_before_the_error_are_delivered() -> None:
    decoder = FrameDecoder()
    decoder.feed(_DOC_EXAMPLE + _DOC_EXAMPLE + _wire(b"z", crc=5) + _DOC_EXAMPLE)
    assert isinstance(decoder.next_event(), Frame)
    assert isinstance(decoder.next_event(), Frame)
    with pytest.raises(FrameError, match=r"^payload checksum 0x[0-9a-f]{8} does not match"):
        decoder.next_event()
    with pytest.raises(FrameError):
        decoder.next_event()


def test_fresh_decoder_is_not_failed() -> None:
    assert not FrameDecoder().failed


# --- several frames, partial frames, buffering ---------------------------------------------


def test_several_frames_in_one_feed() -> None:
    frames = [
        Frame(type=1, flags=0, request_id=1, payload=b"one"),
        Frame(type=2, flags=1, request_id=2, payload=b""),
        Frame(type=3, flags=2, request_id=3, payload=b"three" * 50),
    ]
    assert _decode_chunks([b"".join(encode(f) for f in frames)]) == frames


def test_trailing_partial_frame_stays_buffered() -> None:
    whole = encode(Frame(type=1, flags=0, request_id=1, payload=b"abc"))
    partial = encode(Frame(type=1, flags=0, request_id=2, payload=b"defgh"))[:-2]
    decoder = FrameDecoder()
    decoder.feed(whole + partial)
    assert len(_drain(decoder)) == 1
    assert decoder.buffered_bytes == len(partial)
    assert decoder.next_event() is NEED_DATA
    decoder.feed(b"gh")
    assert _drain(decoder) == [Frame(type=1, flags=0, request_id=2, payload=b"defgh")]
    assert decoder.buffered_bytes == 0


def test_many_frames_in_small_odd_sized_feeds() -> None:
    """Exercises buffer compaction: the read offset repeatedly passes half the buffer."""
    frames = [
        Frame(type=i % 256, flags=i, request_id=i, payload=bytes([i % 256]) * (i % 37))
        for i in range(300)
    ]
    wire = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder()
    decoded: list[Frame] = []
    for i in range(0, len(wire), 7):
        decoder.feed(wire[i : i + 7])
        decoded.extend(_drain(decoder))
        assert decoder.buffered_bytes == min(i + 7, len(wire)) - sum(
            HEADER_BYTES + len(f.payload) for f in decoded
        )
    assert decoded == frames


def test_feed_accepts_bytearray_and_memoryview() -> None:
    decoder = FrameDecoder()
    decoder.feed(bytearray(_DOC_EXAMPLE[:10]))
    decoder.feed(memoryview(_DOC_EXAMPLE)[10:])
    assert _drain(decoder) == [VALID[0][1]]


def test_empty_feed_needs_data() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"")
    assert decoder.next_event() is NEED_DATA
    assert decoder.buffered_bytes == 0


def test_need_data_sentinel() -> None:
    assert NEED_DATA is NeedData.NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA"


# --- encoding errors ------------------------------------------------------------------------

BAD_FIELDS: list[tuple[int, int, int, str]] = [
    (256, 0, 0, r"^frame type 256 out of range 0\.\.255$"),
    (-1, 0, 0, r"^frame type -1 out of range 0\.\.255$"),
    (0, 65536, 0, r"^frame flags 65536 out of range 0\.\.65535$"),
    (0, -2, 0, r"^frame flags -2 out of range 0\.\.65535$"),
    (
        0,
        0,
        2**64,
        r"^frame request id 18446744073709551616 out of range 0\.\.18446744073709551615$",
    ),
    (0, 0, -1, r"^frame request id -1 out of range 0\.\.18446744073709551615$"),
]


@pytest.mark.parametrize(("type_", "flags", "request_id", "message"), BAD_FIELDS)
def test_encode_rejects_out_of_range_fields(
    type_: int, flags: int, request_id: int, message: str
) -> None:
    with pytest.raises(FrameError, match=message):
        encode_parts(type_, flags, request_id, b"x")
    with pytest.raises(FrameError, match=message):
        encode_header(type_, flags, request_id, b"x")
    with pytest.raises(FrameError, match=message):
        encode(Frame(type=type_, flags=flags, request_id=request_id, payload=b"x"))


def test_encode_rejects_payload_over_the_hard_ceiling() -> None:
    payload = bytes(MAX_PAYLOAD_BYTES + 1)
    message = r"^frame payload length 16777217 exceeds limit 16777216$"
    with pytest.raises(FrameTooLarge, match=message):
        encode_parts(1, 0, 3, payload)
    with pytest.raises(FrameTooLarge, match=message):
        encode_header(1, 0, 3, payload)


def test_encode_accepts_payload_of_exactly_the_hard_ceiling() -> None:
    payload = bytes(MAX_PAYLOAD_BYTES)
    wire = encode_parts(1, 0, 3, payload)
    assert len(wire) == HEADER_BYTES + MAX_PAYLOAD_BYTES
    assert _decode_chunks([wire]) == [Frame(type=1, flags=0, request_id=3, payload=payload)]


@pytest.mark.parametrize("limit", [-1, MAX_PAYLOAD_BYTES + 1])
def test_decoder_rejects_a_limit_out_of_range(limit: int) -> None:
    with pytest.raises(
        ConfigError, match=rf"^max_payload_bytes {limit} out of range 0\.\.16777216$"
    ):
        FrameDecoder(limit)


# --- repr -------------------------------------------------------------------------------------


def test_frame_repr_shows_short_payloads_and_truncates_long_ones() -> None:
    short = Frame(type=1, flags=2, request_id=3, payload=b"hi")
    assert repr(short) == "Frame(type=1, flags=0x0002, request_id=3, payload=b'hi')"
    long = Frame(type=1, flags=0, request_id=3, payload=b"a" * 1000)
    assert repr(long).endswith(f"payload={b'a' * 32!r}...<1000 bytes>)")


def test_decoder_repr_shows_state() -> None:
    decoder = FrameDecoder(max_payload_bytes=100)
    assert "HEADER buffered=0 limit=100" in repr(decoder)
    decoder.feed(_DOC_EXAMPLE[:30])
    assert decoder.next_event() is NEED_DATA
    assert "PAYLOAD buffered=30 limit=100" in repr(decoder)
    decoder.feed(b"XY")
    assert decoder.next_event() is NEED_DATA
    decoder.feed(_DOC_EXAMPLE[32:])
    with pytest.raises(FrameError):
        decoder.next_event()
    assert "FAILED" in repr(decoder)


# --- Hypothesis --------------------------------------------------------------------------------

frames = st.builds(
    Frame,
    type=st.integers(0, 255),
    flags=st.integers(0, 0xFFFF),
    request_id=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=300),
)


@given(frame=frames)
def test_round_trip(frame: Frame) -> None:
    assert _decode_chunks([encode(frame)]) == [frame]


@given(frame_list=st.lists(frames, max_size=8), data=st.data())
def test_round_trip_split_at_arbitrary_points(frame_list: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(encode(f) for f in frame_list)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert _decode_chunks(chunks) == frame_list


def _feed_robustly(chunks: list[bytes]) -> None:
    """Feed chunks, draining each time; only Frames, NEED_DATA or FrameError may come out."""
    decoder = FrameDecoder(max_payload_bytes=4096)
    consumed = 0
    fed = 0
    for chunk in chunks:
        decoder.feed(chunk)
        fed += len(chunk)
        try:
            while (event := decoder.next_event()) is not NEED_DATA:
                assert isinstance(event, Frame)
                consumed += HEADER_BYTES + len(event.payload)
        except FrameError:
            assert decoder.failed
            with pytest.raises(FrameError):
                decoder.next_event()
            return
        assert decoder.buffered_bytes == fed - consumed


@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_bytes_give_frames_or_frame_error(chunks: list[bytes]) -> None:
    _feed_robustly(chunks)


@settings(max_examples=300)
@given(
    frame_list=st.lists(frames, min_size=1, max_size=5),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=3),
    truncate=st.integers(min_value=0, max_value=64),
    data=st.data(),
)
def test_corrupted_streams_give_frames_or_frame_error(
    frame_list: list[Frame],
    flips: list[tuple[int, int]],
    truncate: int,
    data: st.DataObject,
) -> None:
    """Mostly-valid streams reach deep decoder states that random bytes rarely do."""
    wire = bytearray(b"".join(encode(f) for f in frame_list))
    for position, mask in flips:
        wire[position % len(wire)] ^= mask
    stream = bytes(wire[: max(0, len(wire) - truncate)])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    _feed_robustly([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)])


def test_encode_rejects_non_integer_fields() -> None:
    """A caller bypassing the types gets an error, never a frame: FrameError naming the
    fields on the pure build; on the compiled one mypyc's argument check refuses first."""
    if compiled(framing):
        with pytest.raises(TypeError, match=r"^int object expected; got float$"):
            encode_parts(1, 1.5, 0, b"")  # type: ignore[arg-type]  # a caller bypassing types
        return
    with pytest.raises(FrameError, match=r"^frame fields type=1 flags=1\.5 request_id=0 cannot"):
        encode_parts(1, 1.5, 0, b"")  # type: ignore[arg-type]  # a caller bypassing types


def test_message_stream_decodes_and_survives_a_bad_message() -> None:
    """A decode error consumes its frame only: the next frame still decodes, and
    last_request_id says where the error reply goes."""
    from postoffice.core.framing import MessageStream

    def decode_upper(frame: Frame) -> bytes:
        if not frame.payload.isascii():
            raise ProtocolError(f"payload of request {frame.request_id} is not ascii")
        return frame.payload.upper()

    stream = MessageStream(decode_upper, max_payload_bytes=64)
    stream.feed(encode_parts(1, 0, 7, "é".encode()) + encode_parts(1, 0, 8, b"ok"))
    with pytest.raises(ProtocolError, match=r"^payload of request 7 is not ascii$"):
        stream.next_event()
    assert stream.last_request_id == 7
    assert stream.next_event() == (8, b"OK")
    assert stream.next_event() is NEED_DATA
    assert not stream.failed
    assert "MessageStream" in repr(stream)


# --- self-checked frames -----------------------------------------------------------------


def test_self_checked_flag_skips_the_crc_only_when_the_field_is_zero() -> None:
    decoder = FrameDecoder(self_checked_flag=0x0001)
    payload = b"carries its own checksum"
    # Flag set, CRC field 0: handed on unchecked.
    decoder.feed(_wire(payload, flags=0x0001, crc=0))
    frame = decoder.next_event()
    assert isinstance(frame, Frame)
    assert (frame.flags, frame.payload) == (0x0001, payload)
    # Flag set and a real CRC: checked as usual, and accepted.
    decoder.feed(_wire(payload, flags=0x0003))
    assert isinstance(decoder.next_event(), Frame)
    # Flag set and a wrong non-zero CRC: still a checksum error.
    decoder.feed(_wire(payload, flags=0x0001, crc=1))
    with pytest.raises(FrameError, match=r"^payload checksum 0x[0-9a-f]{8} does not match"):
        decoder.next_event()


def test_without_the_self_checked_flag_a_zero_crc_is_an_error() -> None:
    # The default decoder (what the store uses) checks every frame, whatever its flags.
    for decoder in (FrameDecoder(), FrameDecoder(self_checked_flag=0x0002)):
        decoder.feed(_wire(b"abc", flags=0x0001, crc=0))
        with pytest.raises(FrameError, match=r"does not match header 0x00000000$"):
            decoder.next_event()


@pytest.mark.parametrize("flag", [3, 0x10000, -1])
def test_self_checked_flag_must_be_one_bit(flag: int) -> None:
    with pytest.raises(ConfigError, match=r"^self_checked_flag .* is not one flag bit$"):
        FrameDecoder(self_checked_flag=flag)


# --- large payloads gathered block by block -------------------------------------------------


_BIG = bytes(range(256)) * 1200  # 300 KiB: past the size gathered as a list of blocks


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, 120_000), min_size=1, max_size=20))
def test_large_payloads_split_anywhere_come_back_whole(cuts: list[int]) -> None:
    frames = [
        Frame(type=1, flags=0, request_id=1, payload=_BIG),
        Frame(type=2, flags=0, request_id=2, payload=b"small"),
        Frame(type=3, flags=0, request_id=3, payload=_BIG[::-1]),
        Frame(type=4, flags=0, request_id=4, payload=b""),
    ]
    wire = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder()
    got: list[Frame] = []
    at = 0
    for cut in [*cuts, len(wire)]:
        piece = wire[at : at + cut]
        at += len(piece)
        decoder.feed(memoryview(piece))  # a view: the decoder must not keep the caller's buffer
        got.extend(_drain(decoder))
        if at >= len(wire):
            break
    decoder.feed(wire[at:])
    got.extend(_drain(decoder))
    assert got == frames
    assert decoder.buffered_bytes == 0


def test_a_gathered_payload_counts_as_buffered_and_its_crc_is_checked() -> None:
    wire = _wire(_BIG, type=5, request_id=9, crc=zlib.crc32(_BIG) ^ 1)
    decoder = FrameDecoder()
    decoder.feed(wire[:100_000])
    assert decoder.next_event() is NEED_DATA
    decoder.feed(wire[100_000:200_000])
    assert decoder.next_event() is NEED_DATA
    assert decoder.buffered_bytes == 200_000
    decoder.feed(wire[200_000:])
    with pytest.raises(FrameError, match=r"does not match header") as caught:
        decoder.next_event()
    assert caught.value.request_id == 9
    assert decoder.failed


def test_read_frames_finishes_a_payload_next_event_started_gathering() -> None:
    big = encode(Frame(type=1, flags=0, request_id=1, payload=_BIG))
    small = encode(Frame(type=2, flags=0, request_id=2, payload=b"after"))
    decoder = FrameDecoder()
    decoder.feed(big[:50_000])
    assert decoder.next_event() is NEED_DATA
    decoder.feed(big[50_000:] + small)
    out: list[tuple[int, int, int, bytes]] = []
    assert decoder.read_frames(out, 10) == 2
    assert out == [(1, 0, 1, _BIG), (2, 0, 2, b"after")]


def test_read_frames_honours_the_self_checked_flag() -> None:
    decoder = FrameDecoder(self_checked_flag=0x0001)
    decoder.feed(_wire(b"own checksum", type=1, flags=0x0001, request_id=3, crc=0))
    out: list[tuple[int, int, int, bytes]] = []
    assert decoder.read_frames(out, 10) == 1
    assert out == [(1, 0x0001, 3, b"own checksum")]


def test_detach_payload_hands_over_a_self_checked_payload_being_gathered() -> None:
    decoder = FrameDecoder(self_checked_flag=0x0001)
    assert decoder.detach_payload() is None  # nothing gathered
    wire = _wire(_BIG, type=7, flags=0x0001, request_id=11, crc=0)
    decoder.feed(wire[:1000])
    assert decoder.next_event() is NEED_DATA
    decoder.feed(wire[1000:5000])
    assert decoder.next_event() is NEED_DATA
    detached = decoder.detach_payload()
    assert detached is not None
    type_, flags, request_id, length, blocks = detached
    assert (type_, flags, request_id, length) == (7, 0x0001, 11, len(_BIG))
    assert b"".join(bytes(block) for block in blocks) == _BIG[: 5000 - 24]
    assert decoder.buffered_bytes == 0
    assert decoder.detach_payload() is None
    # The caller took the rest of the payload; the decoder reads the next frame.
    decoder.feed(_wire(b"next", type=2, request_id=12))
    frame = decoder.next_event()
    assert isinstance(frame, Frame)
    assert (frame.type, frame.request_id, frame.payload) == (2, 12, b"next")


def test_detach_payload_keeps_a_frame_whose_crc_must_be_checked() -> None:
    for flags, crc in ((0x0001, zlib.crc32(_BIG)), (0x0000, zlib.crc32(_BIG))):
        decoder = FrameDecoder(self_checked_flag=0x0001)
        wire = _wire(_BIG, type=7, flags=flags, request_id=11, crc=crc)
        decoder.feed(wire[:5000])
        assert decoder.next_event() is NEED_DATA
        assert decoder.detach_payload() is None
        decoder.feed(wire[5000:])
        frame = decoder.next_event()
        assert isinstance(frame, Frame)
        assert frame.payload == _BIG


def test_a_small_pending_payload_is_not_detached() -> None:
    decoder = FrameDecoder(self_checked_flag=0x0001)
    wire = _wire(b"x" * 1000, flags=0x0001, crc=0)
    decoder.feed(wire[:500])
    assert decoder.next_event() is NEED_DATA
    assert decoder.detach_payload() is None
    decoder.feed(wire[500:])
    assert isinstance(decoder.next_event(), Frame)
