"""receive.py: large CHUNK payloads received straight into their own buffer, against the
plain MessageDecoder fed the same bytes."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.core.framing import HEADER_BYTES
from postoffice.ingest.errors import IngestProtocolError
from postoffice.ingest.messages import Chunk, FileId, Message, Ping, Query
from postoffice.ingest.protocol import (
    NEED_DATA,
    SELF_CHECKED,
    MessageDecoder,
    encode,
    encode_chunk,
)
from postoffice.ingest.receive import SCRATCH_BYTES, ReceivingDecoder

FID = FileId(bytes(range(16)))
LIMIT = 8 * 1024 * 1024


def chunk_wire(data: bytes, *, index: int = 0, request_id: int = 1, checked: bool = True) -> bytes:
    return encode_chunk(
        file_id=FID,
        index=index,
        total=8,
        size=8 * len(data),
        name="big.bin",
        payload_digest=bytes(16),
        data=data,
        request_id=request_id,
        self_checked=checked,
    )


def receive(wire: bytes, reads: list[int]) -> tuple[ReceivingDecoder, list[tuple[int, Message]]]:
    """Deliver `wire` as a BufferedProtocol transport would: each read fills at most the
    buffer handed out and the next of `reads` bytes (cycled), then the connection's steps."""
    decoder = ReceivingDecoder(max_chunk_bytes=LIMIT)
    got: list[tuple[int, Message]] = []
    at = 0
    turn = 0
    while at < len(wire):
        buffer = decoder.get_buffer()
        size = min(len(buffer), reads[turn % len(reads)], len(wire) - at)
        turn += 1
        buffer[:size] = wire[at : at + size]
        at += size
        data = decoder.buffer_updated(size)
        if data is not None:
            decoder.feed(data)
        elif not decoder.payload_complete:
            continue
        while (event := decoder.next_event()) is not NEED_DATA:
            got.append(event)
        decoder.take_over()
    return decoder, got


def plain(wire: bytes) -> list[tuple[int, Message]]:
    decoder = MessageDecoder(max_chunk_bytes=LIMIT)
    decoder.feed(wire)
    got = []
    while (event := decoder.next_event()) is not NEED_DATA:
        got.append(event)
    return got


def test_a_large_chunk_is_received_into_its_own_buffer() -> None:
    data = os.urandom(4 * 1024 * 1024)
    wire = encode(Ping(), 1) + chunk_wire(data, request_id=2) + encode(Query(file_id=FID), 3)
    decoder, got = receive(wire, [65_536, 200_000, 1_000_000])
    assert got == plain(wire)
    request_id, chunk = got[1]
    assert isinstance(chunk, Chunk)
    assert request_id == 2
    assert bytes(chunk.data) == data
    assert isinstance(chunk.data, memoryview)
    assert isinstance(chunk.data.obj, bytearray)  # a view of the received buffer: no join
    assert decoder.buffered_bytes == 0


def test_receive_buffers_never_reach_past_the_payload() -> None:
    data = os.urandom(1024 * 1024)
    wire = chunk_wire(data)
    decoder = ReceivingDecoder(max_chunk_bytes=LIMIT)
    first = decoder.get_buffer()
    assert len(first) == SCRATCH_BYTES
    first[:1000] = wire[:1000]
    fed = decoder.buffer_updated(1000)
    assert fed == wire[:1000]
    decoder.feed(fed)
    assert decoder.next_event() is NEED_DATA
    decoder.take_over()
    rest = decoder.get_buffer()
    assert len(rest) == len(wire) - 1000  # exactly the payload's remaining bytes
    assert decoder.buffered_bytes == 1000
    rest[:] = wire[1000:]
    assert decoder.buffer_updated(len(rest)) is None
    assert decoder.payload_complete
    event = decoder.next_event()
    assert event is not NEED_DATA
    assert len(decoder.get_buffer()) == SCRATCH_BYTES  # the next frame: scratch again


def test_connections_share_one_scratch_buffer_and_each_gets_its_own_bytes() -> None:
    """Reads of many connections interleave, one read at a time as on the event loop:
    the scratch buffer is shared (no 256 KiB per connection), and what one read brought
    is copied out before the next connection's read overwrites it."""
    wires = [encode(Ping(), request_id=i + 1) * 50 for i in range(3)]
    decoders = [ReceivingDecoder(max_chunk_bytes=LIMIT) for _ in wires]
    buffers = [d.get_buffer() for d in decoders]
    assert all(b.obj is buffers[0].obj for b in buffers)
    got: list[list[int]] = [[] for _ in wires]
    step = 7
    for at in range(0, max(len(w) for w in wires), step):
        for i, (decoder, wire) in enumerate(zip(decoders, wires, strict=True)):
            piece = wire[at : at + step]
            if not piece:
                continue
            buffer = decoder.get_buffer()
            buffer[: len(piece)] = piece
            data = decoder.buffer_updated(len(piece))
            assert data == piece
            decoder.feed(data)
            while (event := decoder.next_event()) is not NEED_DATA:
                got[i].append(event[0])
    assert got == [[i + 1] * 50 for i in range(3)]


def test_a_frame_with_a_crc_to_check_takes_the_usual_road() -> None:
    data = os.urandom(1024 * 1024)
    wire = chunk_wire(data, checked=False)
    _, got = receive(wire, [100_000])
    assert got == plain(wire)
    chunk = got[0][1]
    assert isinstance(chunk, Chunk)
    assert isinstance(chunk.data, memoryview)
    assert isinstance(chunk.data.obj, bytes)


def test_a_bad_directly_received_message_is_refused_and_framing_holds() -> None:
    data = os.urandom(512 * 1024)
    good = chunk_wire(data)
    # Flags 0x0005: self-checked (so it is taken over) plus a bit CHUNK does not define.
    flags_at = 4
    bad = bytearray(chunk_wire(data, request_id=7))
    bad[flags_at : flags_at + 2] = (SELF_CHECKED | 0x0004).to_bytes(2, "big")
    decoder = ReceivingDecoder(max_chunk_bytes=LIMIT)
    wire = bytes(bad) + good
    at = 0
    errors: list[tuple[int | None, str]] = []
    got: list[tuple[int, Message]] = []
    while at < len(wire):
        buffer = decoder.get_buffer()
        size = min(len(buffer), 300_000, len(wire) - at)
        buffer[:size] = wire[at : at + size]
        at += size
        data_in = decoder.buffer_updated(size)
        if data_in is not None:
            decoder.feed(data_in)
        while True:
            try:
                event = decoder.next_event()
            except IngestProtocolError as exc:
                errors.append((decoder.last_request_id, str(exc)))
                continue
            if event is NEED_DATA:
                break
            got.append(event)
        decoder.take_over()
    assert errors == [(7, "chunk frame flags 0x0005 set, expected bits of 0x0003")]
    assert got == plain(good)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 700_000), min_size=1, max_size=5),
    reads=st.lists(st.integers(1, 400_000), min_size=1, max_size=8),
)
def test_any_mix_of_frames_and_read_sizes_decodes_as_the_plain_decoder(
    sizes: list[int], reads: list[int]
) -> None:
    rng = random.Random(sum(sizes))
    wire = b"".join(
        chunk_wire(rng.randbytes(size), index=i % 8, request_id=i + 1) + encode(Ping(), 100 + i)
        for i, size in enumerate(sizes)
    )
    decoder, got = receive(wire, reads)
    assert got == plain(wire)
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize("cut", [1, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 1])
def test_a_header_split_anywhere_still_takes_the_payload_over(cut: int) -> None:
    data = os.urandom(600_000)
    wire = chunk_wire(data)
    _, got = receive(wire, [cut, 50_000])
    assert got == plain(wire)
    chunk = got[0][1]
    assert isinstance(chunk, Chunk)
    assert isinstance(chunk.data, memoryview)
    assert isinstance(chunk.data.obj, bytearray)
