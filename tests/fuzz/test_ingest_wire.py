"""The ingest wire codec under hostile input: MessageDecoder, and the ReceivingDecoder that
takes large payloads straight from the socket, within budget and alike however cut."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.core.errors import FrameError
from postoffice.ingest.chunkdigest import chunk_digest
from postoffice.ingest.errors import ErrorCode, IngestError
from postoffice.ingest.messages import (
    MAX_CHUNK_BYTES,
    MAX_CHUNKS,
    MAX_NAME_BYTES,
    MAX_STATUS_RANGES,
    MAX_SUBSCRIBE_IDS,
)
from postoffice.ingest.protocol import MAX_MESSAGE_BYTES, SELF_CHECKED, MessageDecoder, MsgType
from postoffice.ingest.receive import ReceivingDecoder
from tests.fuzz.budget import (
    MAX_PEAK_BYTES,
    assert_split_feeds_agree,
    assert_within_budget,
    drain,
    drain_events,
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

ids = st.sampled_from([bytes(16), bytes(range(16))])
counts32 = st.one_of(st.integers(0, 4), st.sampled_from([MAX_CHUNKS, MAX_CHUNKS + 1, 2**32 - 1]))
names = st.one_of(
    st.sampled_from([b"a.bin", b"", b".", b"..", b"a/b", b".hidden", b" a", b"a\x00", b"\xff"]),
    st.sampled_from([MAX_NAME_BYTES, MAX_NAME_BYTES + 1]).map(b"n".__mul__),
    st.text(max_size=6).map(str.encode),
)


def chunk(
    fid: bytes, index: int, total: int, name_len: int | None, name: bytes, data: bytes, good: bool
) -> bytes:
    """A CHUNK payload with any fields, its name length field right or not, and its digest
    right (so decoding reaches past it) or not."""
    length = len(name) if name_len is None else name_len
    fields = struct.pack(">16sIIQH16s", fid, index, total, len(data), length & 0xFFFF, bytes(16))
    digest = chunk_digest(fields, name, data) if good else bytes(16)
    return fields + digest + name + data


chunks = st.builds(
    chunk,
    ids,
    counts32,
    counts32,
    st.none() | lengths(MAX_NAME_BYTES),
    names,
    st.binary(max_size=64),
    st.booleans(),
)
id_lists = st.builds(
    lambda count, n: u16(count) + bytes(16) * n,
    lengths(MAX_SUBSCRIBE_IDS),
    st.integers(0, 4),
)
statuses = st.builds(
    lambda state, total, name, count, spans: (
        struct.pack(">16sBIIQH", bytes(16), state, total & 0xFFFF_FFFF, 0, 0, len(name))
        + name
        + u32(count)
        + b"".join(struct.pack(">II", a, b) for a, b in spans)
    ),
    st.sampled_from([0, 1, 4, 5, 255]),
    counts32,
    names,
    st.one_of(lengths(MAX_STATUS_RANGES), st.just(2**32 - 1)),
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=4),
)
codes = st.sampled_from([*list(ErrorCode), 0, 13, 0xFFFF])
payloads = st.one_of(
    chunks,
    id_lists,
    statuses,
    st.builds(lambda code, text: u16(code) + text, codes, names),
    st.builds(lambda fid, rest: fid + rest, ids, st.binary(max_size=50)),
    st.binary(max_size=24),
)
types = st.one_of(st.sampled_from(list(MsgType)), st.integers(0, 255))
pieces = frame_pieces(types, payloads, limit=MAX_MESSAGE_BYTES, self_checked_flag=SELF_CHECKED)


flood = repeated(pieces) | repeated(good_frames(types, payloads))


def messages(chunks: Sequence[bytes], *, verify: bool = True) -> list[object]:
    return drain(
        MessageDecoder(verify_chunks=verify), chunks, fatal=FrameError, refused=IngestError
    )


def receive(reads: Sequence[bytes], held: list[int] | None = None) -> list[object]:
    """`reads` delivered as a data connection's transport delivers them: each into the
    buffer the decoder hands out (never past it), then the connection's steps. The most
    memory the decoder says it holds goes to `held`."""
    decoder = ReceivingDecoder(max_chunk_bytes=MAX_CHUNK_BYTES, verify_chunks=False)
    out: list[object] = []
    for read in reads:
        at = 0
        while at < len(read):
            buffer = decoder.get_buffer()
            size = min(len(buffer), len(read) - at)
            buffer[:size] = read[at : at + size]
            at += size
            data = decoder.buffer_updated(size)
            if data is not None:
                decoder.feed(data)
            elif not decoder.payload_complete:
                continue
            if not drain_events(decoder, out, fatal=FrameError, refused=IngestError):
                return out
            decoder.take_over()
            if held is not None:
                held[0] = max(held[0], decoder.held_bytes)
    out.append(("buffered", decoder.buffered_bytes))
    return out


@fuzz_settings
@given(flood, st.integers(0, 1 << 16))
def test_any_input_costs_the_message_decoder_little(data: bytes, cut: int) -> None:
    """64 KiB of messages with counts and lengths at and past every limit, whole or in two
    reads, cost at most 4 MiB and 100 ms and end in messages, IngestError or FrameError."""
    reads = [data[:cut], data[cut:]]
    assert_within_budget(lambda: messages(reads), len(data), MAX_PEAK_BYTES)


@fuzz_settings
@given(flood, st.integers(0, 1 << 16))
def test_any_input_costs_the_receiving_decoder_little_beyond_what_it_reports(
    data: bytes, cut: int
) -> None:
    """The receiving decoder sets aside a large self-checked payload's whole declared
    length (up to MAX_MESSAGE_BYTES) as soon as its header is in, and reports it in
    `held_bytes`, which the connection manager counts against `max_partial_bytes`; past
    that, 64 KiB cost at most 4 MiB and 100 ms."""
    reads = [data[:cut], data[cut:]]
    held = [0]
    receive(reads, held)
    assert held[0] <= MAX_MESSAGE_BYTES + len(data)
    assert_within_budget(lambda: receive(reads), len(data), MAX_PEAK_BYTES + held[0])


@fuzz_settings
@given(joined(pieces), st.integers(0, 2**32), cuts)
def test_messages_come_out_the_same_however_the_bytes_are_cut(
    data: bytes, seed: int, pieces: list[int]
) -> None:
    assert_split_feeds_agree(data, seed, pieces, messages)


@fuzz_settings
@given(joined(pieces), st.integers(0, 2**32), cuts)
def test_the_receiving_decoder_gives_what_the_message_decoder_gives(
    data: bytes, seed: int, pieces: list[int]
) -> None:
    assert receive([data]) == messages([data], verify=False)
    assert_split_feeds_agree(data, seed, pieces, receive)


def framed(type_: int, payload: bytes) -> bytes:
    return header(type_, len(payload), crc=zlib.crc32(payload)) + payload


#: The most a 64 KiB read holds: missing ranges, subscribed ids, one chunk's data.
_RANGES = 8000
WORST = [
    framed(
        MsgType.STATUS,
        struct.pack(">16sBIIQH", bytes(16), 1, 2**32 - 1, 0, 0, 1)
        + b"a"
        + u32(_RANGES)
        + b"".join(struct.pack(">II", 2 * i, 2 * i) for i in range(_RANGES)),
    ),
    framed(MsgType.SUBSCRIBE, u16(MAX_SUBSCRIBE_IDS) + bytes(16) * MAX_SUBSCRIBE_IDS) * 3,
    framed(MsgType.CHUNK, chunk(bytes(16), 0, 1, None, b"a.bin", bytes(60_000), True)),
]


@pytest.mark.parametrize("wire", WORST, ids=["status", "subscribe", "chunk"])
def test_the_largest_messages_a_read_holds_cost_little(wire: bytes) -> None:
    assert_within_budget(lambda: messages([wire]), len(wire), MAX_PEAK_BYTES)
    assert_within_budget(lambda: receive([wire]), len(wire), MAX_PEAK_BYTES)
