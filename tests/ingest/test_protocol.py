"""Tests for postoffice.ingest.protocol: the ingest wire codec, bytes only."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from postoffice.core.errors import ConfigError
from postoffice.core.framing import (
    NEED_DATA,
    Frame,
    FrameError,
    FrameTooLarge,
    encode_parts,
)
from postoffice.ingest.chunkdigest import digest_for, new_chunk
from postoffice.ingest.errors import (
    BadNameError,
    ChecksumError,
    ErrorCode,
    IngestError,
    IngestLimitError,
    IngestProtocolError,
    OutOfRangeError,
    error_for,
)
from postoffice.ingest.messages import (
    MAX_CHUNK_BYTES,
    MAX_CHUNKS,
    MAX_NAME_BYTES,
    MAX_STATUS_RANGES,
    MAX_SUBSCRIBE_IDS,
    Ack,
    Chunk,
    ChunkStored,
    ErrorReply,
    Failed,
    FileId,
    Message,
    Ping,
    Pong,
    Published,
    Query,
    Status,
    Subscribe,
    Subscribed,
    UploadState,
    check_name,
    ranges,
)
from postoffice.ingest.protocol import (
    CHUNK_OVERHEAD_BYTES,
    MAX_MESSAGE_BYTES,
    MessageDecoder,
    MsgType,
    decode,
    encode,
    encode_chunk,
)
from tests.ingest.test_messages import HOSTILE_NAMES
from tests.strategies import cut_points

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocols" / "ingest.md"

# The frame header spelled out independently of the code under test.
_WIRE_HEADER = struct.Struct(">2sBBHHQII")

FID_HEX = "00112233445566778899aabbccddeeff"
FID = FileId(bytes.fromhex(FID_HEX))
FID2 = FileId(bytes(range(0xF0, 0x100)))
NAME_HEX = "68656c6c6f2e747874"  # "hello.txt"

# The example upload of docs/protocols/ingest.md: "hello, post office\n" twice (38
# bytes), zstd level 3 (34 bytes), sent as two chunks of 17 bytes.
ZST = bytes.fromhex("28b52ffd2026cd00009868656c6c6f2c20706f7374206f66666963650a01002d9961")
CHUNK1_DATA = ZST[17:]
TEXT_DIGEST_HEX = xxhash.xxh3_128_hexdigest(b"hello, post office\n" * 2)
ZST_DIGEST_HEX = xxhash.xxh3_128_hexdigest(ZST)
# XXH3-128 of chunk 1's 50 field bytes (the payload digest among them), name and data:
# computed here straight from the xxhash library, so a change to what the digest covers
# fails these tests.
CHUNK1_FIELDS_HEX = f"{FID_HEX} 00000001 00000002 0000000000000022 0009 {ZST_DIGEST_HEX}"
CHUNK1_DIGEST_HEX = xxhash.xxh3_128_hexdigest(
    bytes.fromhex(CHUNK1_FIELDS_HEX) + b"hello.txt" + CHUNK1_DATA
)
DIGEST0_HEX = "00" * 16

# Chunk 1 of 2 and its ack, request id 2, byte for byte as the doc shows them: the
# SELF_CHECKED flag, so the frame CRC-32 is 0.
CHUNK_WIRE = bytes.fromhex(
    "504f 01 01 0001 0000 0000000000000002 0000005c 00000000"  # frame header
    f"{CHUNK1_FIELDS_HEX} {CHUNK1_DIGEST_HEX}"
    f"{NAME_HEX} 706f7374206f66666963650a01002d9961"
)
ACK_WIRE = bytes.fromhex(
    "504f 01 11 0000 0000 0000000000000002 0000001d f8def96b"
    f"{FID_HEX} 00000001 00000002 00000002 02"
)
CHUNK_MSG = Chunk(
    file_id=FID,
    index=1,
    total=2,
    size=34,
    name="hello.txt",
    payload_digest=bytes.fromhex(ZST_DIGEST_HEX),
    digest=bytes.fromhex(CHUNK1_DIGEST_HEX),
    data=CHUNK1_DATA,
)
ACK_MSG = Ack(file_id=FID, index=1, committed=2, total=2, complete=True)

# The FRAMED example of docs/protocols/ingest.md: the same 38 bytes sent as two chunks,
# each "hello, post office\n" as a zstd frame of its own (level 3, content size 19, 28
# bytes); chunk 1 holds content bytes 19..37 of 38.
FRAME_HEX = "28b52ffd201399000068656c6c6f2c20706f7374206f66666963650a"
FRAMED_ZST_DIGEST_HEX = xxhash.xxh3_128_hexdigest(bytes.fromhex(FRAME_HEX * 2))
FRAMED1_FIELDS_HEX = f"{FID_HEX} 00000001 00000002 0000000000000038 0009 {FRAMED_ZST_DIGEST_HEX}"
FRAMED1_CONTENT_HEX = "0000000000000026 0000000000000013"  # content size 38, offset 19
FRAMED1_DIGEST_HEX = xxhash.xxh3_128_hexdigest(
    bytes.fromhex(FRAMED1_FIELDS_HEX + FRAMED1_CONTENT_HEX)
    + b"hello.txt"
    + bytes.fromhex(FRAME_HEX)
)
FRAMED_CHUNK_WIRE = bytes.fromhex(
    "504f 01 01 0003 0000 0000000000000002 00000077 00000000"  # flags SELF_CHECKED|FRAMED
    f"{FRAMED1_FIELDS_HEX} {FRAMED1_DIGEST_HEX} {FRAMED1_CONTENT_HEX}"
    f"{NAME_HEX} {FRAME_HEX}"
)
FRAMED_CHUNK_MSG = Chunk(
    file_id=FID,
    index=1,
    total=2,
    size=56,
    name="hello.txt",
    payload_digest=bytes.fromhex(FRAMED_ZST_DIGEST_HEX),
    digest=bytes.fromhex(FRAMED1_DIGEST_HEX),
    data=bytes.fromhex(FRAME_HEX),
    content_size=38,
    content_offset=19,
)


def _wire(type: int, payload: bytes | str, request_id: int = 0, flags: int = 0) -> bytes:
    """A frame built by hand; `payload` may be hex with spaces."""
    data = bytes.fromhex(payload) if isinstance(payload, str) else payload
    header = _WIRE_HEADER.pack(b"PO", 1, type, flags, 0, request_id, len(data), zlib.crc32(data))
    return header + data


def _frame(type: int, payload: bytes | str, flags: int = 0) -> Frame:
    data = bytes.fromhex(payload) if isinstance(payload, str) else payload
    return Frame(type=type, flags=flags, request_id=0, payload=data)


def _hex(text: str) -> str:
    return text.encode().hex()


def _decode_all(chunks: list[bytes]) -> list[tuple[int, Message]]:
    """Feed each piece in turn, draining after each; assert nothing is left over."""
    decoder = MessageDecoder()
    out: list[tuple[int, Message]] = []
    for piece in chunks:
        decoder.feed(piece)
        while (event := decoder.next_event()) is not NEED_DATA:
            out.append(event)
    assert decoder.buffered_bytes == 0
    return out


# --- wire table -----------------------------------------------------------------------

WIRE_TABLE: list[tuple[bytes, int, Message]] = [
    (CHUNK_WIRE, 2, CHUNK_MSG),
    (_wire(0x02, FID_HEX, 3), 3, Query(file_id=FID)),
    (_wire(0x03, "", 4), 4, Ping()),
    (_wire(0x21, f"0002 {FID_HEX} {FID2.hex()}", 1), 1, Subscribe(file_ids=(FID, FID2))),
    (_wire(0x21, "0000", 1), 1, Subscribe(file_ids=())),
    (ACK_WIRE, 2, ACK_MSG),
    (
        _wire(0x11, f"{FID_HEX} 00000000 00000001 00000002 05", 9),
        9,
        Ack(file_id=FID, index=0, committed=1, total=2, duplicate=True, published=True),
    ),
    (
        _wire(
            0x12,
            f"{FID_HEX} 01 00000005 00000002 0000000000001000 0009 {NAME_HEX}"
            "00000002 00000000 00000001 00000004 00000004",
            5,
        ),
        5,
        Status(
            file_id=FID,
            state=UploadState.UPLOADING,
            total=5,
            committed=2,
            size=4096,
            name="hello.txt",
            missing=((0, 1), (4, 4)),
        ),
    ),
    (
        _wire(0x12, f"{FID_HEX} 00 00000000 00000000 0000000000000000 0000 00000000", 6),
        6,
        Status(
            file_id=FID,
            state=UploadState.UNKNOWN,
            total=0,
            committed=0,
            size=0,
            name="",
            missing=(),
        ),
    ),
    (_wire(0x13, "", 4), 4, Pong()),
    (
        _wire(0x1F, "0007" + _hex("chunk index 7 out of range for total 5"), 8),
        8,
        ErrorReply(code=ErrorCode.OUT_OF_RANGE, message="chunk index 7 out of range for total 5"),
    ),
    (_wire(0x31, f"0001 {FID_HEX}", 1), 1, Subscribed(file_ids=(FID,))),
    (
        _wire(0x32, f"{FID_HEX} 00000001 00000002 00000002"),
        0,
        ChunkStored(file_id=FID, index=1, committed=2, total=2),
    ),
    (
        _wire(0x33, f"{FID_HEX} 0000000000000026 {TEXT_DIGEST_HEX} {ZST_DIGEST_HEX} 01 {NAME_HEX}"),
        0,
        Published(
            file_id=FID,
            name="hello.txt",
            size=38,
            digest=bytes.fromhex(TEXT_DIGEST_HEX),
            payload_digest=bytes.fromhex(ZST_DIGEST_HEX),
            replaced=True,
        ),
    ),
    (
        _wire(0x34, f"{FID_HEX} 000b" + _hex("not zstd")),
        0,
        Failed(file_id=FID, code=ErrorCode.ASSEMBLY, message="not zstd"),
    ),
]


@pytest.mark.parametrize(("wire", "request_id", "message"), WIRE_TABLE)
def test_wire_bytes_decode_to_message(wire: bytes, request_id: int, message: Message) -> None:
    assert _decode_all([wire]) == [(request_id, message)]


@pytest.mark.parametrize(("wire", "request_id", "message"), WIRE_TABLE)
def test_message_encodes_to_wire_bytes(wire: bytes, request_id: int, message: Message) -> None:
    assert encode(message, request_id) == wire


def test_wire_table_covers_every_message_type() -> None:
    assert {wire[3] for wire, _, _ in WIRE_TABLE} == set(MsgType)


DOC_EXAMPLES = [
    ("subscribe", encode(Subscribe(file_ids=(FID,)), 1)),
    ("chunk", CHUNK_WIRE),
    ("framed-chunk", FRAMED_CHUNK_WIRE),
    ("ack", ACK_WIRE),
    (
        "published",
        encode(
            Published(
                file_id=FID,
                name="hello.txt",
                size=38,
                digest=bytes.fromhex(TEXT_DIGEST_HEX),
                payload_digest=bytes.fromhex(ZST_DIGEST_HEX),
            )
        ),
    ),
]


@pytest.mark.parametrize(("marker", "wire"), DOC_EXAMPLES)
def test_doc_example_matches_the_codec(marker: str, wire: bytes) -> None:
    """docs/protocols/ingest.md shows these exact frames; keep doc and code in step."""
    found = re.search(rf"<!-- wire: {marker} -->\s*```text\n([0-9a-f\n]+)```", DOC.read_text())
    assert found is not None, f"no '<!-- wire: {marker} -->' hex block in {DOC.name}"
    assert bytes.fromhex(found.group(1)) == wire


@pytest.mark.parametrize("data", [CHUNK1_DATA, bytearray(CHUNK1_DATA), memoryview(CHUNK1_DATA)])
def test_encode_chunk_matches_the_doc_and_takes_buffers(
    data: bytes | bytearray | memoryview,
) -> None:
    wire = encode_chunk(
        file_id=FID,
        index=1,
        total=2,
        size=34,
        name="hello.txt",
        payload_digest=bytes.fromhex(ZST_DIGEST_HEX),
        data=data,
        request_id=2,
    )
    assert wire == CHUNK_WIRE


def test_a_framed_chunk_carries_its_content_range_after_the_digest() -> None:
    """The FRAMED flag adds content size and offset at offset 66; the digest covers them."""
    assert _decode_all([FRAMED_CHUNK_WIRE]) == [(2, FRAMED_CHUNK_MSG)]
    assert encode(FRAMED_CHUNK_MSG, 2) == FRAMED_CHUNK_WIRE
    wire = encode_chunk(
        file_id=FID,
        index=1,
        total=2,
        size=56,
        name="hello.txt",
        payload_digest=bytes.fromhex(FRAMED_ZST_DIGEST_HEX),
        data=bytes.fromhex(FRAME_HEX),
        request_id=2,
        content_size=38,
        content_offset=19,
    )
    assert wire == FRAMED_CHUNK_WIRE


def test_a_framed_chunk_whose_content_offset_was_changed_fails_its_digest() -> None:
    wire = bytearray(FRAMED_CHUNK_WIRE)
    wire[24 + 66 + 15] = 0x14  # content offset 19 -> 20
    with pytest.raises(ChecksumError, match=r"^chunk digest mismatch: "):
        _decode_all([bytes(wire)])


def test_a_chunk_without_self_checked_carries_a_crc_and_decodes_the_same() -> None:
    wire = encode_chunk(
        file_id=FID,
        index=1,
        total=2,
        size=34,
        name="hello.txt",
        payload_digest=bytes.fromhex(ZST_DIGEST_HEX),
        data=CHUNK1_DATA,
        request_id=2,
        self_checked=False,
    )
    payload = CHUNK_WIRE[24:]
    assert wire == _wire(0x01, payload, 2)
    assert _decode_all([wire]) == [(2, CHUNK_MSG)]


def test_a_self_checked_chunk_with_a_bit_flipped_is_a_checksum_error_not_lost_framing() -> None:
    """No frame CRC: the chunk digest catches the flip, and the connection goes on."""
    for at in (24 + 20, 24 + 40, 24 + 66, len(CHUNK_WIRE) - 1):  # total, payload digest, name, data
        wire = bytearray(CHUNK_WIRE)
        wire[at] ^= 0x01
        decoder = MessageDecoder()
        decoder.feed(bytes(wire) + _wire(0x03, "", 9))
        with pytest.raises((ChecksumError, OutOfRangeError, BadNameError)):
            decoder.next_event()
        assert decoder.next_event() == (9, Ping())


# --- decode errors --------------------------------------------------------------------


def _chunk_payload(
    *,
    index: int = 0,
    total: int = 1,
    name: bytes = b"a",
    data: bytes = b"",
    digest: str | None = None,
) -> bytes:
    """A CHUNK payload by hand: size 0, payload digest 0, and the right digest unless
    `digest` is given."""
    fields = bytes.fromhex(
        f"{FID_HEX} {index:08x} {total:08x} 0000000000000000 {len(name):04x} {DIGEST0_HEX}"
    )
    if digest is None:
        digest = xxhash.xxh3_128_hexdigest(fields + name + data)
    return fields + bytes.fromhex(digest) + name + data


DECODE_ERRORS: list[tuple[Frame, type[IngestError], str]] = [
    (_frame(0x07, ""), IngestProtocolError, r"^unknown message type 0x07$"),
    (_frame(0xFF, ""), IngestProtocolError, r"^unknown message type 0xff$"),
    (_frame(0x03, "", flags=1), IngestProtocolError, r"^frame flags 0x0001 set, expected 0$"),
    (
        _frame(0x01, _chunk_payload(), flags=4),
        IngestProtocolError,
        r"^chunk frame flags 0x0004 set, expected bits of 0x0003$",
    ),
    (
        _frame(0x01, FID_HEX),
        IngestProtocolError,
        r"^chunk payload of 16 bytes, expected at least 66$",
    ),
    (
        _frame(0x01, _chunk_payload(), flags=2),
        IngestProtocolError,
        r"^framed chunk payload of 67 bytes, expected at least 82$",
    ),
    (
        _frame(
            0x01,
            FRAMED_CHUNK_WIRE[24:90]
            + bytes.fromhex("0000000000000026 0000000000000027")
            + FRAMED_CHUNK_WIRE[106:],
            flags=3,
        ),
        OutOfRangeError,
        r"^chunk content offset 39 is past its content size 38$",
    ),
    (
        _frame(0x01, _chunk_payload(total=0)),
        OutOfRangeError,
        rf"^chunk total 0 out of range 1\.\.{MAX_CHUNKS}$",
    ),
    (
        _frame(0x01, _chunk_payload(total=MAX_CHUNKS + 1)),
        OutOfRangeError,
        r"^chunk total 16777217 out of range 1\.\.16777216$",
    ),
    (
        _frame(0x01, _chunk_payload(index=7, total=5)),
        OutOfRangeError,
        r"^chunk index 7 out of range for total 5$",
    ),
    (
        _frame(0x01, _chunk_payload(index=5, total=5)),
        OutOfRangeError,
        r"^chunk index 5 out of range for total 5$",
    ),
    (_frame(0x01, _chunk_payload(name=b"")), BadNameError, r"^name is empty$"),
    (
        _frame(0x01, _chunk_payload(name=b"n" * 256)),
        BadNameError,
        r"^name of 256 bytes exceeds limit 255$",
    ),
    (
        _frame(0x01, _chunk_payload(name=b"abc")[:-1]),
        IngestProtocolError,
        r"^chunk name of 3 bytes overruns the payload of 68 bytes$",
    ),
    (
        _frame(0x01, _chunk_payload(name=b"ab\xffc")),
        BadNameError,
        r"^name is not valid utf-8 at byte 2$",
    ),
    (
        _frame(0x01, _chunk_payload(name=b"../etc")),
        BadNameError,
        r"^name '\.\./etc' contains path separator '/'$",
    ),
    (
        _frame(0x01, _chunk_payload(data=b"x" * 9, digest=DIGEST0_HEX)),
        ChecksumError,
        r"^chunk digest mismatch: header 000000000000\.\.\., payload [0-9a-f]{12}\.\.\.$",
    ),
    (
        _frame(0x02, FID_HEX + "00"),
        IngestProtocolError,
        r"^query payload of 17 bytes, expected 16$",
    ),
    (_frame(0x02, ""), IngestProtocolError, r"^query payload of 0 bytes, expected 16$"),
    (_frame(0x03, "00"), IngestProtocolError, r"^ping payload of 1 bytes, expected 0$"),
    (_frame(0x13, "0000"), IngestProtocolError, r"^pong payload of 2 bytes, expected 0$"),
    (
        _frame(0x21, "00"),
        IngestProtocolError,
        r"^subscribe payload of 1 bytes, expected at least 2$",
    ),
    (
        _frame(0x21, "0401" + FID_HEX),
        IngestLimitError,
        r"^subscribe of 1025 file ids exceeds limit 1024$",
    ),
    (
        _frame(0x21, "0002" + FID_HEX),
        IngestProtocolError,
        r"^subscribe payload of 18 bytes, expected 34$",
    ),
    (
        _frame(0x31, "0000" + FID_HEX),
        IngestProtocolError,
        r"^subscribed payload of 18 bytes, expected 2$",
    ),
    (_frame(0x11, FID_HEX), IngestProtocolError, r"^ack payload of 16 bytes, expected 29$"),
    (
        _frame(0x11, f"{FID_HEX} 00000000 00000001 00000001 08"),
        IngestProtocolError,
        r"^ack flags 0x08 has unknown bits, known 0x07$",
    ),
    (
        _frame(0x12, FID_HEX),
        IngestProtocolError,
        r"^status payload of 16 bytes, expected at least 35$",
    ),
    (
        _frame(0x12, f"{FID_HEX} 05 00000000 00000000 0000000000000000 0000 00000000"),
        IngestProtocolError,
        r"^unknown upload state 5$",
    ),
    (
        _frame(0x12, f"{FID_HEX} 01 00000001 00000000 0000000000000000 0009 6869 00000000"),
        IngestProtocolError,
        r"^status name of 9 bytes overruns the payload of 41 bytes$",
    ),
    (
        _frame(0x12, f"{FID_HEX} 01 00000001 00000000 0000000000000000 0001 ff 00000000"),
        IngestProtocolError,
        r"^status name is not valid utf-8 at byte 0$",
    ),
    (
        _frame(0x12, f"{FID_HEX} 01 00000001 00000000 0000000000000000 0000 00010001"),
        IngestLimitError,
        rf"^status of 65537 ranges exceeds limit {MAX_STATUS_RANGES}$",
    ),
    (
        _frame(0x12, f"{FID_HEX} 01 00000001 00000000 0000000000000000 0000 00000001"),
        IngestProtocolError,
        r"^status payload of 39 bytes, expected 47 for 1 ranges$",
    ),
    (
        _frame(
            0x12,
            f"{FID_HEX} 01 0000000a 00000000 0000000000000000 0000 00000002"
            "00000004 00000005 00000002 00000003",
        ),
        IngestProtocolError,
        r"^status range 2-3 is not ascending, disjoint and below total 10$",
    ),
    (
        _frame(
            0x12,
            f"{FID_HEX} 01 0000000a 00000000 0000000000000000 0000 00000002"
            "00000000 00000004 00000004 00000005",
        ),
        IngestProtocolError,
        r"^status range 4-5 is not ascending, disjoint and below total 10$",
    ),
    (
        _frame(
            0x12, f"{FID_HEX} 01 0000000a 00000000 0000000000000000 0000 00000001 00000003 00000002"
        ),
        IngestProtocolError,
        r"^status range 3-2 is not ascending, disjoint and below total 10$",
    ),
    (
        _frame(
            0x12, f"{FID_HEX} 01 0000000a 00000000 0000000000000000 0000 00000001 00000009 0000000a"
        ),
        IngestProtocolError,
        r"^status range 9-10 is not ascending, disjoint and below total 10$",
    ),
    (_frame(0x1F, "00"), IngestProtocolError, r"^error payload of 1 bytes, expected at least 2$"),
    (_frame(0x1F, "0000"), IngestProtocolError, r"^error code 0 is not a code$"),
    (
        _frame(0x1F, "0002 c328"),
        IngestProtocolError,
        r"^error message is not valid utf-8 at byte 0$",
    ),
    (
        _frame(0x32, FID_HEX),
        IngestProtocolError,
        r"^chunk stored payload of 16 bytes, expected 28$",
    ),
    (
        _frame(0x33, FID_HEX),
        IngestProtocolError,
        r"^published payload of 16 bytes, expected at least 57$",
    ),
    (
        _frame(0x33, f"{FID_HEX} 0000000000000001 {DIGEST0_HEX} {DIGEST0_HEX} 02 {NAME_HEX}"),
        IngestProtocolError,
        r"^published flags 0x02 has unknown bits, known 0x01$",
    ),
    (
        _frame(0x33, f"{FID_HEX} 0000000000000001 {DIGEST0_HEX} {DIGEST0_HEX} 00"),
        BadNameError,
        r"^name is empty$",
    ),
    (
        _frame(0x33, f"{FID_HEX} 0000000000000001 {DIGEST0_HEX} {DIGEST0_HEX} 00 2e2e"),
        BadNameError,
        r"^name '\.\.' is reserved$",
    ),
    (
        _frame(0x34, FID_HEX),
        IngestProtocolError,
        r"^failed payload of 16 bytes, expected at least 18$",
    ),
    (_frame(0x34, f"{FID_HEX} 0000"), IngestProtocolError, r"^error code 0 is not a code$"),
    (
        _frame(0x34, f"{FID_HEX} 000b ff"),
        IngestProtocolError,
        r"^failed message is not valid utf-8 at byte 0$",
    ),
]


@pytest.mark.parametrize(("frame", "error", "message"), DECODE_ERRORS)
def test_decode_error(frame: Frame, error: type[IngestError], message: str) -> None:
    with pytest.raises(error, match=message):
        decode(frame)


def test_a_code_this_side_does_not_know_is_a_refusal_not_a_broken_message() -> None:
    """A newer server's code (99, 65535) decodes as CODE_<n>: the client treats it as
    "refused, connection open", as the protocol page asks, and re-encodes it unchanged."""
    for code in (15, 99, 0xFFFF):
        reply = decode(_frame(0x1F, f"{code:04x} {_hex('later')}"))
        assert isinstance(reply, ErrorReply)
        assert (int(reply.code), reply.code.name, reply.message) == (code, f"CODE_{code}", "later")
        assert reply.code == ErrorCode(code)
        assert _decode_all([encode(reply, 7)]) == [(7, reply)]
        assert type(error_for(reply.code, reply.message)) is IngestError
    assert ErrorCode(14) is ErrorCode.MOVED


def test_chunk_data_over_the_limit_is_refused_before_hashing() -> None:
    wrong_digest = _frame(0x01, _chunk_payload(data=b"x" * 9, digest=DIGEST0_HEX))
    with pytest.raises(IngestLimitError, match=r"^chunk data of 9 bytes exceeds limit 8$"):
        decode(wrong_digest, max_chunk_bytes=8)
    assert isinstance(decode(_frame(0x01, _chunk_payload(data=b"x" * 9)), max_chunk_bytes=9), Chunk)


def test_chunk_data_limit_default_is_8_mib() -> None:
    data = bytes(MAX_CHUNK_BYTES + 1)
    with pytest.raises(
        IngestLimitError, match=r"^chunk data of 8388609 bytes exceeds limit 8388608$"
    ):
        decode(_frame(0x01, _chunk_payload(data=data)))
    payload = _chunk_payload(data=data[1:])
    assert decode(_frame(0x01, payload)) == Chunk(
        file_id=FID,
        index=0,
        total=1,
        size=0,
        name="a",
        payload_digest=bytes(16),
        digest=payload[50:66],
        data=data[1:],
    )


# --- MessageDecoder -------------------------------------------------------------------


def test_bad_message_keeps_the_stream_and_names_its_request_id() -> None:
    decoder = MessageDecoder()
    assert decoder.last_request_id is None
    decoder.feed(_wire(0x02, "00", 41) + _wire(0x03, "", 42))
    with pytest.raises(IngestProtocolError, match=r"^query payload of 1 bytes, expected 16$"):
        decoder.next_event()
    assert decoder.last_request_id == 41
    assert not decoder.failed
    assert decoder.next_event() == (42, Ping())
    assert decoder.next_event() is NEED_DATA


def test_bad_frame_poisons_the_decoder() -> None:
    decoder = MessageDecoder()
    decoder.feed(b"GET / HTTP/1.1\r\n")
    for _ in range(2):
        with pytest.raises(FrameError, match=r"^bad frame magic b'GE', expected b'PO'$"):
            decoder.next_event()
    assert decoder.failed
    assert "FAILED" in repr(decoder)


def test_oversized_frame_is_refused_from_its_header() -> None:
    decoder = MessageDecoder(max_chunk_bytes=100)
    decoder.feed(_wire(0x01, bytes(100 + CHUNK_OVERHEAD_BYTES + 1), 7)[:24])
    with pytest.raises(FrameTooLarge, match=r"^frame payload length 438 exceeds limit 437$"):
        decoder.next_event()


@pytest.mark.parametrize(
    ("kwargs", "limit"),
    [
        ({}, MAX_CHUNK_BYTES + 82 + MAX_NAME_BYTES),
        ({"max_chunk_bytes": 0}, CHUNK_OVERHEAD_BYTES),
        ({"max_payload_bytes": 1000}, 1000),
    ],
)
def test_frame_payload_limit(kwargs: dict[str, Any], limit: int) -> None:
    """The default limit fits the largest valid chunk: 82-byte FRAMED header, longest
    name, data."""
    assert MAX_MESSAGE_BYTES == MAX_CHUNK_BYTES + CHUNK_OVERHEAD_BYTES
    at_limit = MessageDecoder(**kwargs)
    at_limit.feed(_WIRE_HEADER.pack(b"PO", 1, 1, 0, 0, 0, limit, 0))
    assert at_limit.next_event() is NEED_DATA
    over = MessageDecoder(**kwargs)
    over.feed(_WIRE_HEADER.pack(b"PO", 1, 1, 0, 0, 0, limit + 1, 0))
    with pytest.raises(
        FrameTooLarge, match=rf"^frame payload length {limit + 1} exceeds limit {limit}$"
    ):
        over.next_event()


@pytest.mark.parametrize("limit", [-1, 16 * 1024 * 1024 - CHUNK_OVERHEAD_BYTES + 1])
def test_chunk_limit_out_of_range_is_a_config_error(limit: int) -> None:
    with pytest.raises(ConfigError, match=rf"^max_chunk_bytes {limit} out of range 0\.\.16776879$"):
        MessageDecoder(max_chunk_bytes=limit)


# The three-message stream of the split-feed tests.
STREAM = CHUNK_WIRE + _wire(0x02, FID_HEX, 3) + _wire(0x03, "", 4)
STREAM_EVENTS = [(2, CHUNK_MSG), (3, Query(file_id=FID)), (4, Ping())]


@pytest.mark.parametrize(("head", "tail"), cut_points(STREAM))
def test_stream_split_at_every_cut_point(head: bytes, tail: bytes) -> None:
    assert _decode_all([head, tail]) == STREAM_EVENTS


def test_stream_fed_one_byte_at_a_time() -> None:
    assert _decode_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == STREAM_EVENTS


@pytest.mark.parametrize(("name", "message"), HOSTILE_NAMES[:-1])
def test_hostile_name_in_a_chunk_is_refused(name: str, message: str) -> None:
    frame = _frame(0x01, _chunk_payload(name=name.encode()))
    with pytest.raises(BadNameError, match=message):
        decode(frame)


# --- encode errors --------------------------------------------------------------------

ENCODE_ERRORS: list[tuple[Message, type[Exception], str]] = [
    (Query(file_id=FileId(b"short")), IngestProtocolError, r"^file id of 5 bytes, expected 16$"),
    (
        Subscribe(file_ids=(FID, FileId(bytes(17)))),
        IngestProtocolError,
        r"^file id of 17 bytes, expected 16$",
    ),
    (
        Published(file_id=FID, name="a", size=1, digest=b"x", payload_digest=bytes(16)),
        IngestProtocolError,
        r"^digest of 1 bytes, expected 16$",
    ),
    (
        Published(file_id=FID, name="a", size=1, digest=bytes(16), payload_digest=bytes(32)),
        IngestProtocolError,
        r"^payload digest of 32 bytes, expected 16$",
    ),
    (
        Ack(file_id=FID, index=-1, committed=0, total=1),
        IngestProtocolError,
        r"^cannot encode ack: .*$",
    ),
    (
        Chunk(
            file_id=FID,
            index=2**32,
            total=1,
            size=0,
            name="a",
            payload_digest=bytes(16),
            digest=bytes(16),
            data=b"",
        ),
        IngestProtocolError,
        r"^cannot encode chunk: .*$",
    ),
    (
        Chunk(
            file_id=FID,
            index=0,
            total=1,
            size=0,
            name="a",
            payload_digest=bytes(16),
            digest=bytes(15),
            data=b"",
        ),
        IngestProtocolError,
        r"^digest of 15 bytes, expected 16$",
    ),
    (
        Chunk(
            file_id=FID,
            index=0,
            total=1,
            size=0,
            name="\ud800",
            payload_digest=bytes(16),
            digest=bytes(16),
            data=b"",
        ),
        BadNameError,
        r"^name '\\ud800' is not encodable as utf-8$",
    ),
    (
        Chunk(
            file_id=FID,
            index=0,
            total=1,
            size=0,
            name="a",
            payload_digest=bytes(16),
            digest=bytes(16),
            data=bytes(2**24),
        ),
        FrameTooLarge,
        r"^frame payload length 16777283 exceeds limit 16777216$",
    ),
    (
        Subscribe(file_ids=(FID,) * 65536),
        IngestProtocolError,
        r"^cannot encode subscribe: .*$",
    ),
]


@pytest.mark.parametrize(("message", "error", "text"), ENCODE_ERRORS)
def test_encode_error(message: Message, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        encode(message, 1)


@pytest.mark.parametrize("message", [CHUNK_MSG, Ping()])
def test_request_id_out_of_range_is_a_frame_error(message: Message) -> None:
    with pytest.raises(FrameError, match=r"^frame request id -1 out of range 0\.\.\d+$"):
        encode(message, -1)


def test_encode_does_not_apply_decode_rules() -> None:
    """Tools build bad-but-framed chunks to probe a server; decode is the gate."""
    bad = Chunk(
        file_id=FID,
        index=9,
        total=3,
        size=0,
        name="../x",
        payload_digest=bytes(16),
        digest=bytes(16),
        data=b"",
    )
    with pytest.raises(OutOfRangeError):
        _decode_all([encode(bad, 1)])


# --- hypothesis -----------------------------------------------------------------------

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
file_ids = st.binary(min_size=16, max_size=16).map(FileId)
digests = st.binary(min_size=16, max_size=16)
texts = st.text(max_size=40)
codes = st.sampled_from(ErrorCode)


def _is_good_name(name: str) -> bool:
    try:
        check_name(name)
    except BadNameError:
        return False
    return True


names = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="/\\"),
    min_size=1,
    max_size=40,
).filter(_is_good_name)


@st.composite
def chunks(draw: st.DrawFn) -> Chunk:
    total = draw(st.integers(1, MAX_CHUNKS))
    data = draw(st.binary(max_size=300))
    content_size = draw(st.none() | u64)
    content_offset = 0 if content_size is None else draw(st.integers(0, content_size))
    return new_chunk(
        file_id=draw(file_ids),
        index=draw(st.integers(0, total - 1)),
        total=total,
        size=draw(u64),
        name=draw(names),
        payload_digest=draw(digests),
        data=data,
        content_size=content_size,
        content_offset=content_offset,
    )


@st.composite
def statuses(draw: st.DrawFn) -> Status:
    total = draw(u32)
    indexes = draw(st.lists(st.integers(0, total - 1), max_size=30)) if total else []
    return Status(
        file_id=draw(file_ids),
        state=draw(st.sampled_from(UploadState)),
        total=total,
        committed=draw(u32),
        size=draw(u64),
        name=draw(texts),
        missing=ranges(indexes),
    )


id_tuples = st.lists(file_ids, max_size=MAX_SUBSCRIBE_IDS // 64).map(tuple)

MESSAGE_STRATEGIES: dict[str, st.SearchStrategy[Message]] = {
    "chunk": chunks(),
    "query": st.builds(Query, file_id=file_ids),
    "ping": st.just(Ping()),
    "subscribe": st.builds(Subscribe, file_ids=id_tuples),
    "ack": st.builds(
        Ack,
        file_id=file_ids,
        index=u32,
        committed=u32,
        total=u32,
        duplicate=st.booleans(),
        complete=st.booleans(),
        published=st.booleans(),
    ),
    "status": statuses(),
    "pong": st.just(Pong()),
    "error": st.builds(ErrorReply, code=codes, message=texts),
    "subscribed": st.builds(Subscribed, file_ids=id_tuples),
    "chunk_stored": st.builds(ChunkStored, file_id=file_ids, index=u32, committed=u32, total=u32),
    "published": st.builds(
        Published,
        file_id=file_ids,
        name=names,
        size=u64,
        digest=digests,
        payload_digest=digests,
        replaced=st.booleans(),
    ),
    "failed": st.builds(Failed, file_id=file_ids, code=codes, message=texts),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())
# Mostly our types, so payload decoders see random bytes, plus any other type.
frame_types = st.one_of(st.sampled_from([int(t) for t in MsgType]), st.integers(0, 255))
request_ids = u64


def test_strategies_cover_every_message_type() -> None:
    assert {name.upper() for name in MESSAGE_STRATEGIES} == {t.name for t in MsgType}


@pytest.mark.parametrize("kind", sorted(MESSAGE_STRATEGIES))
@given(data=st.data(), request_id=request_ids)
def test_round_trip(kind: str, data: st.DataObject, request_id: int) -> None:
    message = data.draw(MESSAGE_STRATEGIES[kind])
    assert _decode_all([encode(message, request_id)]) == [(request_id, message)]


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_give_messages_or_our_errors(pieces: list[bytes]) -> None:
    _feed_tolerantly(pieces)


@given(st.lists(st.tuples(frame_types, u16, request_ids, st.binary(max_size=120)), max_size=4))
def test_arbitrary_frames_give_messages_or_our_errors(
    frames: list[tuple[int, int, int, bytes]],
) -> None:
    wire = b"".join(encode_parts(t, f & 1, rid, payload) for t, f, rid, payload in frames)
    _feed_tolerantly([wire])


@given(messages, st.data())
def test_mutated_payloads_decode_canonically_or_fail_cleanly(
    message: Message, data: st.DataObject
) -> None:
    """Flip, cut or extend a valid payload: any frame that still decodes re-encodes to
    the same bytes, and anything else is one of our errors."""
    wire = encode(message, 5)
    payload = bytearray(wire[24:])
    action = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if action == "flip" and payload:
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] ^= data.draw(st.integers(1, 255))
    elif action == "cut":
        del payload[data.draw(st.integers(0, len(payload))) :]
    else:
        payload += data.draw(st.binary(min_size=1, max_size=8))
    frame = encode_parts(wire[3], 0, 5, bytes(payload))
    try:
        events = _decode_all([frame])
    except IngestError:
        return
    # The payload is canonical; the header may differ only in how a CHUNK is checked
    # (encode sends it SELF_CHECKED, this frame carries a CRC-32).
    assert [(encode(msg, rid)[3], encode(msg, rid)[24:]) for rid, msg in events] == [
        (frame[3], frame[24:])
    ]


def _feed_tolerantly(pieces: list[bytes]) -> None:
    """Feed and drain, accepting only messages, FrameError (then stop) or IngestError."""
    decoder = MessageDecoder()
    for piece in pieces:
        decoder.feed(piece)
        while True:
            try:
                event = decoder.next_event()
            except FrameError:
                assert decoder.failed
                return
            except IngestError:
                assert not decoder.failed
                continue
            if event is NEED_DATA:
                break
            request_id, message = event
            assert isinstance(request_id, int)
            assert isinstance(message, _MESSAGE_TYPES)


_MESSAGE_TYPES = (
    Chunk,
    Query,
    Ping,
    Subscribe,
    Ack,
    Status,
    Pong,
    ErrorReply,
    Subscribed,
    ChunkStored,
    Published,
    Failed,
)


def test_chunk_hash_check_can_be_left_to_the_caller() -> None:
    """A server decodes on its loop and hashes on its I/O threads: decode can skip the hash."""
    from postoffice.core.framing import FrameDecoder
    from postoffice.ingest.chunkdigest import verify_chunk
    from postoffice.ingest.errors import ChecksumError
    from postoffice.ingest.messages import Chunk
    from postoffice.ingest.protocol import SELF_CHECKED, decode, encode_chunk

    fields = {
        "file_id": FileId(b"\x01" * 16),
        "index": 0,
        "total": 1,
        "size": 3,
        "name": "a.bin",
        "payload_digest": bytes(16),
    }
    wire = bytearray(
        encode_chunk(
            **fields,  # type: ignore[arg-type]  # the literal dict's values
            digest=digest_for(**fields, data=b"abc"),  # type: ignore[arg-type]
            data=b"abd",
            request_id=1,
        )
    )
    frames = FrameDecoder(self_checked_flag=SELF_CHECKED)
    frames.feed(bytes(wire))
    frame = frames.next_event()
    assert not isinstance(frame, type(NEED_DATA))
    with pytest.raises(ChecksumError, match=r"^chunk digest mismatch: header "):
        decode(frame)
    chunk = decode(frame, verify_chunks=False)
    assert isinstance(chunk, Chunk)
    with pytest.raises(ChecksumError, match=r"^chunk digest mismatch: header "):
        verify_chunk(chunk)
