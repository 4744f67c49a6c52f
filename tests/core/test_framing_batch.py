"""FrameDecoder.read_frames, the batch form of next_event: the same frames, the same errors."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.core.framing import (
    HEADER,
    HEADER_BYTES,
    MAGIC,
    NEED_DATA,
    VERSION,
    Frame,
    FrameDecoder,
    FrameError,
    encode,
    encode_parts,
)
from tests.core.test_framing import INVALID, VALID, frames

_Fields = tuple[int, int, int, bytes]


def _fields(frame: Frame) -> _Fields:
    return (frame.type, frame.flags, frame.request_id, frame.payload)


def _by_events(
    chunks: list[bytes], limit: int, self_checked: int = 0
) -> tuple[list[_Fields], str | None, int]:
    """What next_event makes of the chunks: frames, the error message, bytes left."""
    decoder = FrameDecoder(limit, self_checked)
    out: list[_Fields] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (event := decoder.next_event()) is not NEED_DATA:
                out.append(_fields(event))
    except FrameError as exc:
        return out, str(exc), 0
    return out, None, decoder.buffered_bytes


def _by_batches(
    chunks: list[bytes], limit: int, per_call: int, self_checked: int = 0
) -> tuple[list[_Fields], str | None, int]:
    """The same through read_frames, at most `per_call` frames per call."""
    decoder = FrameDecoder(limit, self_checked)
    out: list[_Fields] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while decoder.read_frames(out, per_call) == per_call:
                pass
    except FrameError as exc:
        assert decoder.failed
        with pytest.raises(FrameError, match="^" + re.escape(str(exc)) + "$"):
            decoder.read_frames(out, per_call)  # poisoned, like next_event
        return out, str(exc), 0
    return out, None, decoder.buffered_bytes


@pytest.mark.parametrize(("wire", "expected"), VALID)
def test_valid_frames_in_one_call(wire: bytes, expected: Frame) -> None:
    decoder = FrameDecoder()
    decoder.feed(wire + wire)
    out: list[_Fields] = []
    assert decoder.read_frames(out, 100) == 2
    assert out == [_fields(expected)] * 2
    assert decoder.buffered_bytes == 0
    assert decoder.read_frames(out, 100) == 0


@pytest.mark.parametrize(("wire", "message"), INVALID)
def test_invalid_frames_raise_the_same_error_at_every_cut(wire: bytes, message: str) -> None:
    for cut in range(len(wire) + 1):
        chunks = [wire[:cut], wire[cut:]]
        assert _by_batches(chunks, 1 << 24, 64) == _by_events(chunks, 1 << 24)
        with pytest.raises(FrameError, match=message):
            _raise_first(chunks)


def _raise_first(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
        decoder.read_frames([], 64)


def test_good_frames_before_a_bad_one_are_appended_first() -> None:
    good = [encode_parts(2, 0, i, b"key%d" % i) for i in range(3)]
    bad = encode_parts(2, 0, 9, b"x")[:-1] + b"y"  # payload changed after the CRC
    decoder = FrameDecoder()
    decoder.feed(b"".join(good) + bad + good[0])
    out: list[_Fields] = []
    with pytest.raises(FrameError, match=r"^payload checksum .* does not match header"):
        decoder.read_frames(out, 100)
    assert [rid for _, _, rid, _ in out] == [0, 1, 2]


def test_a_wrong_magic_fails_from_two_bytes() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"P")
    assert decoder.read_frames([], 10) == 0  # one byte: no verdict yet
    decoder.feed(b"X")
    with pytest.raises(FrameError, match=r"^bad frame magic b'PX', expected b'PO'$"):
        decoder.read_frames([], 10)


def test_an_oversized_header_fails_before_its_payload() -> None:
    decoder = FrameDecoder(max_payload_bytes=100)
    decoder.feed(encode_parts(3, 0, 77, b"v" * 101)[:HEADER_BYTES])
    with pytest.raises(FrameError, match=r"^frame payload length 101 exceeds limit 100$") as info:
        decoder.read_frames([], 10)
    assert info.value.request_id == 77


def test_the_limit_leaves_the_rest_buffered() -> None:
    wire = b"".join(encode_parts(1, 0, i, b"p" * i) for i in range(10))
    decoder = FrameDecoder()
    decoder.feed(wire)
    out: list[_Fields] = []
    assert decoder.read_frames(out, 4) == 4
    assert decoder.buffered_bytes == len(wire) - sum(HEADER_BYTES + i for i in range(4))
    assert decoder.next_event() == Frame(type=1, flags=0, request_id=4, payload=b"pppp")
    assert decoder.read_frames(out, 100) == 5
    assert [rid for _, _, rid, _ in out] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert decoder.buffered_bytes == 0


def test_a_payload_split_across_feeds() -> None:
    wire = encode_parts(3, 0, 5, b"v" * 200_000)  # large: past the one-copy threshold
    decoder = FrameDecoder()
    out: list[_Fields] = []
    for at in range(0, len(wire), 65_000):
        decoder.feed(wire[at : at + 65_000])
        decoder.read_frames(out, 10)
        assert decoder.buffered_bytes == (0 if out else min(at + 65_000, len(wire)))
    assert out == [(3, 0, 5, b"v" * 200_000)]


@settings(max_examples=300)
@given(
    frame_list=st.lists(frames, min_size=1, max_size=6),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=2),
    truncate=st.integers(min_value=0, max_value=40),
    per_call=st.integers(1, 4),
    data=st.data(),
)
def test_batches_agree_with_events(
    frame_list: list[Frame],
    flips: list[tuple[int, int]],
    truncate: int,
    per_call: int,
    data: st.DataObject,
) -> None:
    """Valid, corrupted and truncated streams, cut anywhere: the two ways agree exactly."""
    wire = bytearray(b"".join(encode(f) for f in frame_list))
    for position, mask in flips:
        wire[position % len(wire)] ^= mask
    stream = bytes(wire[: max(0, len(wire) - truncate)])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert _by_batches(chunks, 4096, per_call) == _by_events(chunks, 4096)


def test_self_checked_frames_skip_the_crc_as_next_event_does() -> None:
    flag = 0x0100
    unchecked = HEADER.pack(MAGIC, VERSION, 4, flag, 0, 1, 3, 0) + b"abc"  # CRC 0: skipped
    checked = encode_parts(4, flag, 2, b"def")  # a CRC given: checked as usual
    wrong = HEADER.pack(MAGIC, VERSION, 4, 0, 0, 3, 3, 0) + b"ghi"  # no flag: CRC 0 is wrong
    stream = unchecked + checked + wrong
    for cut in range(len(stream) + 1):
        chunks = [stream[:cut], stream[cut:]]
        got = _by_batches(chunks, 4096, 8, flag)
        assert got == _by_events(chunks, 4096, flag)
        assert [rid for _, _, rid, _ in got[0]] == [1, 2]
        assert got[1] is not None
        assert got[1].startswith("payload checksum")
