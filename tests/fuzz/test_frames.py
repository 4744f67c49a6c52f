"""core.framing under hostile input: FrameDecoder (both its event and its batch form) and
MessageStream, within budget and alike however the bytes are cut."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.core.errors import FrameError, ProtocolError
from postoffice.core.framing import MAX_PAYLOAD_BYTES, Frame, FrameDecoder, MessageStream
from tests.fuzz.budget import (
    MAX_PEAK_BYTES,
    assert_split_feeds_agree,
    assert_within_budget,
    drain,
    frame_pieces,
    good_frames,
    joined,
    repeated,
    split,
)

#: A decoder's limit: the hard ceiling, and one small enough for real payloads to pass it.
LIMITS = [MAX_PAYLOAD_BYTES, 100]
SELF_CHECKED = 0x0001


class OddType(ProtocolError):
    """The refusal of the test's message decoder."""


def decode(frame: Frame) -> tuple[int, bytes]:
    """A service's decoder in miniature: odd types are refused, framing holds."""
    if frame.type % 2:
        raise OddType(f"type {frame.type} is odd")
    return frame.type, frame.payload


pieces = frame_pieces(
    st.integers(0, 255), st.binary(max_size=160), limit=100, self_checked_flag=SELF_CHECKED
)
hostile = repeated(pieces) | repeated(good_frames(st.integers(0, 255), st.binary(max_size=160)))
short = joined(pieces)
limits = st.sampled_from(LIMITS)
cuts = st.lists(st.integers(0, 1 << 16), max_size=12)
fuzz_settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def frames(chunks: Sequence[bytes], limit: int) -> list[object]:
    return drain(FrameDecoder(limit, SELF_CHECKED), chunks, fatal=FrameError, refused=())


def batches(chunks: Sequence[bytes], limit: int) -> list[object]:
    """`frames`, read with `read_frames` (a few frames per call) instead of `next_event`."""
    decoder = FrameDecoder(limit, SELF_CHECKED)
    out: list[object] = []
    for chunk in chunks:
        decoder.feed(chunk)
        while True:
            got: list[tuple[int, int, int, bytes]] = []
            try:
                count = decoder.read_frames(got, 3)
            except FrameError as exc:
                out += [Frame(type=t, flags=f, request_id=r, payload=p) for t, f, r, p in got]
                out.append(("fatal", type(exc).__name__, str(exc)))
                return out
            assert count == len(got)
            out += [Frame(type=t, flags=f, request_id=r, payload=p) for t, f, r, p in got]
            if count < 3:
                break
    out.append(("buffered", decoder.buffered_bytes))
    return out


def messages(chunks: Sequence[bytes], limit: int) -> list[object]:
    stream = MessageStream(decode, limit, SELF_CHECKED)
    return drain(stream, chunks, fatal=FrameError, refused=OddType)


@fuzz_settings
@given(hostile, st.integers(0, 1 << 16), limits)
def test_any_input_costs_the_frame_decoder_little(data: bytes, cut: int, limit: int) -> None:
    """Whole or in two reads, 64 KiB of frames, huge headers and garbage cost at most 4 MiB
    and 100 ms, whatever length the headers declare, and end in frames or FrameError."""
    chunks = [data[:cut], data[cut:]]
    assert_within_budget(lambda: frames(chunks, limit), len(data), MAX_PEAK_BYTES)
    assert_within_budget(lambda: messages(chunks, limit), len(data), MAX_PEAK_BYTES)


@fuzz_settings
@given(hostile, st.integers(0, 1 << 16), limits)
def test_any_input_costs_the_batch_reader_little(data: bytes, cut: int, limit: int) -> None:
    chunks = [data[:cut], data[cut:]]
    assert_within_budget(lambda: batches(chunks, limit), len(data), MAX_PEAK_BYTES)


@fuzz_settings
@given(short, st.integers(0, 2**32), cuts, limits)
def test_frames_come_out_the_same_however_the_bytes_are_cut(
    data: bytes, seed: int, pieces: list[int], limit: int
) -> None:
    assert_split_feeds_agree(data, seed, pieces, lambda chunks: frames(chunks, limit))
    assert_split_feeds_agree(data, seed, pieces, lambda chunks: messages(chunks, limit))


@fuzz_settings
@given(short, cuts, limits)
def test_the_batch_reader_gives_what_next_event_gives(
    data: bytes, pieces: list[int], limit: int
) -> None:
    chunks = split(data, pieces)
    assert batches(chunks, limit) == frames(chunks, limit)
