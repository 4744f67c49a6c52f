"""The command workers' channel decoder under hostile input: frames of JSON, nested as
deep as the bytes allow, within budget and alike however the bytes are cut."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.command.channel import (
    MAX_CHANNEL_PAYLOAD_BYTES,
    MAX_NAME_CHARS,
    ChannelError,
    Kind,
    channel_stream,
    decode_message,
)
from postoffice.core.errors import FrameError
from postoffice.core.framing import Frame
from tests.fuzz.budget import (
    MAX_PEAK_BYTES,
    assert_split_feeds_agree,
    assert_within_budget,
    drain,
    frame_pieces,
    good_frames,
    header,
    joined,
    repeated,
)

fuzz_settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
cuts = st.lists(st.integers(0, 1 << 16), max_size=12)

names = st.one_of(
    st.text(max_size=8),
    st.sampled_from([MAX_NAME_CHARS, MAX_NAME_CHARS + 1]).map("n".__mul__),
    st.integers(),
    st.none(),
)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
objects = st.fixed_dictionaries(
    {},
    optional={"op": names, "event": names, "message": names, "args": values, "value": values},
).map(lambda body: json.dumps(body).encode())
#: JSON as deep as a frame can nest it (alone or inside a message), and the rest.
nested = st.builds(
    lambda prefix, opener, depth: prefix + opener * depth,
    st.sampled_from([b"", b'{"value":', b'{"op":"x","args":{"a":']),
    st.sampled_from([b"[", b'{"a":']),
    st.integers(1, 64) | st.sampled_from([1_000, 5_000, 40_000]),
)
payloads = st.one_of(
    objects,
    nested,
    st.builds(lambda n: b'{"value":' + b"9" * n + b"}", st.sampled_from([4300, 4301, 20_000])),
    st.sampled_from([b"", b"[]", b"null", b'{"value":NaN}', b"\xff\xfe", b'{"a":"\\ud800"}']),
    st.binary(max_size=16),
)
kinds = st.one_of(st.sampled_from(list(Kind)), st.integers(0, 255))
pieces = frame_pieces(kinds, payloads, limit=MAX_CHANNEL_PAYLOAD_BYTES)


def messages(chunks: Sequence[bytes]) -> list[object]:
    # repr: a JSON NaN is not equal to itself, and its repr is.
    return drain(channel_stream(), chunks, fatal=FrameError, refused=ChannelError, show=repr)


@fuzz_settings
@given(repeated(pieces) | repeated(good_frames(kinds, payloads)), st.integers(0, 1 << 16))
def test_any_input_costs_the_channel_decoder_little(data: bytes, cut: int) -> None:
    """64 KiB of channel frames, whole or in two reads, cost at most 4 MiB and 100 ms and
    end in messages, ChannelError or FrameError."""
    chunks = [data[:cut], data[cut:]]
    assert_within_budget(lambda: messages(chunks), len(data), MAX_PEAK_BYTES)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(list(Kind)), payloads)
def test_any_payload_is_a_message_or_a_channel_error(kind: int, payload: bytes) -> None:
    frame = Frame(type=kind, flags=0, request_id=1, payload=payload)

    def read() -> object:
        try:
            return decode_message(frame)
        except ChannelError as exc:
            return str(exc)

    assert_within_budget(read, len(payload), MAX_PEAK_BYTES)


@fuzz_settings
@given(joined(pieces), st.integers(0, 2**32), cuts)
def test_messages_come_out_the_same_however_the_bytes_are_cut(
    data: bytes, seed: int, pieces: list[int]
) -> None:
    assert_split_feeds_agree(data, seed, pieces, messages)


@pytest.mark.parametrize(
    "payload", [b"[" * 100_000, b'{"value":' + b"[" * 5_000 + b"]" * 5_000 + b"}"]
)
def test_json_nested_past_the_recursion_limit_is_refused(payload: bytes) -> None:
    """The JSON scanner recurses once per level; a bomb of brackets is a channel error,
    not a RecursionError that escapes the link's reader."""
    with pytest.raises(ChannelError, match=r"^channel payload is not JSON: nested too deeply$"):
        decode_message(Frame(type=Kind.RESULT, flags=0, request_id=1, payload=payload))


#: The most values a 64 KiB payload holds, in a list and as an object's keys.
WORST = [
    b'{"value":[' + b",".join([b"0"] * 30_000) + b"]}",
    b'{"op":"x","args":' + json.dumps({f"k{i}": i for i in range(5000)}).encode() + b"}",
]


@pytest.mark.parametrize("payload", WORST, ids=["list", "object"])
def test_the_largest_payloads_a_read_holds_cost_little(payload: bytes) -> None:
    wire = header(Kind.CALL, len(payload), crc=zlib.crc32(payload)) + payload
    assert_within_budget(lambda: messages([wire]), len(wire), MAX_PEAK_BYTES)
