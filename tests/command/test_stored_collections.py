"""The stored forms of hashes, sorted sets and streams: Hypothesis round-trips, and any
bytes read back as one of them give the value or CommandError, nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.command.errors import CommandError
from postoffice.command.hashes import decode_hash, encode_hash
from postoffice.command.streams import (
    Group,
    Pending,
    Stream,
    StreamId,
    decode_stream,
    encode_stream,
)
from postoffice.command.zsets import decode_zset, encode_zset

_U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
_IDS = st.tuples(_U64, _U64)
_SMALL = st.binary(max_size=20)


@given(st.sampled_from([0, 1]), st.dictionaries(_SMALL, _SMALL, max_size=20))
def test_a_hash_round_trips(header: int, fields: dict[bytes, bytes]) -> None:
    assert decode_hash(encode_hash(header, fields)) == (header, fields)


@given(
    st.sampled_from([0, 1]),
    st.dictionaries(_SMALL, st.floats(allow_nan=False), max_size=20),
)
def test_a_sorted_set_round_trips_in_score_order(header: int, members: dict[bytes, float]) -> None:
    decoded_header, decoded = decode_zset(encode_zset(header, members))
    assert (decoded_header, decoded) == (header, members)
    assert list(decoded.items()) == sorted(members.items(), key=lambda p: (p[1], p[0]))


_PENDING = st.builds(
    Pending,
    consumer=_SMALL,
    delivered_at=st.integers(min_value=0, max_value=1 << 50),
    deliveries=st.integers(min_value=0, max_value=1 << 40),
)
_GROUPS = st.builds(
    Group,
    last_id=_IDS,
    entries_read=st.integers(min_value=-1, max_value=1 << 40),
    pending=st.dictionaries(_IDS, _PENDING, max_size=5),
    consumers=st.dictionaries(_SMALL, st.integers(min_value=0, max_value=1 << 50), max_size=5),
)


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    ids: list[StreamId] = sorted(draw(st.sets(_IDS, max_size=20)))
    return Stream(
        entries={sid: draw(_SMALL) for sid in ids},
        last_id=draw(_IDS),
        max_deleted=draw(_IDS),
        first_id=ids[0] if ids else (0, 0),
        entries_added=draw(st.integers(min_value=0, max_value=1 << 60)),
        groups=draw(st.dictionaries(_SMALL, _GROUPS, max_size=3)),
    )


@given(streams())
def test_a_stream_round_trips(stream: Stream) -> None:
    assert decode_stream(encode_stream(stream)) == stream


def _decode_all_of_a_stream(raw: bytes) -> object:
    stream = decode_stream(raw)
    return stream.entries  # the entries are decoded only when asked for


@pytest.mark.parametrize("decode", [decode_hash, decode_zset, _decode_all_of_a_stream])
@given(raw=st.binary(max_size=200))
def test_any_bytes_decode_or_raise_command_error(
    decode: Callable[[bytes], object], raw: bytes
) -> None:
    try:
        decode(raw)
    except CommandError:
        pass


@given(streams(), st.integers(min_value=0), st.integers(min_value=0, max_value=255), st.booleans())
def test_a_damaged_stream_decodes_or_raises_command_error(
    stream: Stream, where: int, byte: int, truncate: bool
) -> None:
    raw = bytearray(encode_stream(stream))
    cut = where % len(raw)
    damaged = bytes(raw[:cut]) if truncate else bytes(raw[:cut] + bytes((byte,)) + raw[cut + 1 :])
    try:
        _decode_all_of_a_stream(damaged)
    except CommandError:
        pass
