"""The codec between bus servers: discovery datagrams and bridge frames, bytes only."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import netwire
from postoffice.bus.errors import BusProtocolError
from postoffice.core import framing
from postoffice.core.errors import FrameError
from postoffice.core.framing import NEED_DATA, Frame
from tests.strategies import cut_points

SERVER = 0x0102030405060708
TEXT_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\0")
ID = struct.pack(">Q", SERVER)


def datagram(kind: int, payload: bytes, *, flags: int = 0, request_id: int = 0) -> bytes:
    return framing.encode_parts(kind, flags, request_id, payload)


# -- discovery: table tests -----------------------------------------------------------

DATAGRAMS: list[tuple[bytes, netwire.Datagram]] = [
    (datagram(0x01, ID + b"\x04chat"), netwire.Query(server_id=SERVER, channel="chat")),
    (
        datagram(0x02, ID + b"\x04chat\x01"),
        netwire.Advertise(server_id=SERVER, channel="chat", reliable=True),
    ),
    (datagram(0x02, ID + b"\x01x\x00"), netwire.Advertise(server_id=SERVER, channel="x")),
    (
        datagram(0x03, ID + b"\x04chat\x1f\x90"),
        netwire.Subscribe(server_id=SERVER, channel="chat", port=8080),
    ),
]


@pytest.mark.parametrize(("data", "message"), DATAGRAMS)
def test_datagram_decodes_and_encodes_to_the_documented_bytes(
    data: bytes, message: netwire.Datagram
) -> None:
    assert netwire.decode_datagram(data) == message
    assert netwire.encode_datagram(message) == data


def test_datagrams_are_byte_exact_with_the_protocol_document() -> None:
    """The hex examples in docs/protocols/bus.md."""
    query = netwire.encode_datagram(netwire.Query(server_id=SERVER, channel="chat"))
    assert query.hex(" ") == (
        "50 4f 01 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 0d ba 85 bc be "
        "01 02 03 04 05 06 07 08 04 63 68 61 74"
    )
    subscribe = netwire.encode_datagram(
        netwire.Subscribe(server_id=SERVER, channel="chat", port=8080)
    )
    assert subscribe.hex(" ") == (
        "50 4f 01 03 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 0f c4 1d 49 31 "
        "01 02 03 04 05 06 07 08 04 63 68 61 74 1f 90"
    )
    message = netwire.encode_bridge(netwire.BridgedMessage(ordinal=5, data=b"hello"))
    assert message.hex(" ") == (
        "50 4f 01 12 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 0d af 8b 86 aa "
        "00 00 00 00 00 00 00 05 68 65 6c 6c 6f"
    )
    held = netwire.encode_bridge(netwire.BridgedMessage(ordinal=5, data=b"hello", held=True))
    assert held.hex(" ") == (
        "50 4f 01 13 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 0d af 8b 86 aa "
        "00 00 00 00 00 00 00 05 68 65 6c 6c 6f"
    )
    retired = netwire.encode_bridge(netwire.Retired(ordinals=(5, 6)))
    assert retired.hex(" ") == (
        "50 4f 01 14 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 10 4f 4f ab 2f "
        "00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 06"
    )


BAD_DATAGRAMS: list[tuple[bytes, str]] = [
    (b"", r"^datagram of 0 bytes holds no whole frame$"),
    (b"XY" + bytes(30), r"^datagram: bad frame magic b'XY', expected b'PO'$"),
    (datagram(0x01, ID + b"\x04chat")[:-1], r"^datagram of 36 bytes holds no whole frame$"),
    (datagram(0x01, ID + b"\x04chat") + b"!", r"^datagram has 1 bytes past its frame$"),
    (bytes(513), r"^datagram of 513 bytes exceeds the limit of 512$"),
    (datagram(0x09, ID + b"\x04chat"), r"^unknown discovery type 0x09$"),
    (datagram(0x01, ID + b"\x04chat", flags=1), r"^frame flags 0x0001, expected 0$"),
    (datagram(0x01, ID + b"\x04chat", request_id=3), r"^frame request id 3, expected 0$"),
    (datagram(0x01, bytes(8) + b"\x04chat"), r"^server id 0 is reserved$"),
    (datagram(0x01, ID + b"\x00"), r"^channel name is empty$"),
    (datagram(0x01, ID + b"\x04ch"), r"^QUERY payload of 11 bytes ends inside channel name$"),
    (datagram(0x01, ID + b"\x04chat!"), r"^QUERY payload has 1 bytes past its end$"),
    (datagram(0x01, ID + b"\x02\xff\xfe"), r"^channel name is not UTF-8: invalid start byte$"),
    (datagram(0x01, ID + b"\x02a\x00"), r"^channel name holds a NUL byte$"),
    (datagram(0x01, ID + b"\x81" + b"a" * 129), r"^channel name is 129 bytes, the limit is 128$"),
    (datagram(0x02, ID + b"\x01x\x02"), r"^ADVERTISE flags 0x02 set reserved bits$"),
    (datagram(0x03, ID + b"\x01x\x00\x00"), r"^bridge port 0 outside 1\.\.65535$"),
    (datagram(0x03, ID + b"\x01x\x01"), r"^SUBSCRIBE payload of 11 bytes ends inside bridge port$"),
]


@pytest.mark.parametrize(("data", "error"), BAD_DATAGRAMS)
def test_bad_datagram_is_refused_with_its_reason(data: bytes, error: str) -> None:
    with pytest.raises(BusProtocolError, match=error):
        netwire.decode_datagram(data)


def test_datagram_with_a_bad_checksum_is_refused() -> None:
    data = bytearray(datagram(0x01, ID + b"\x04chat"))
    data[-1] ^= 1
    with pytest.raises(BusProtocolError, match=r"^datagram: payload checksum 0x"):
        netwire.decode_datagram(bytes(data))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (netwire.Query(server_id=0, channel="x"), r"^server id 0 outside 1\.\.\d+$"),
        (netwire.Query(server_id=1, channel=""), r"^channel name is empty$"),
        (netwire.Subscribe(server_id=1, channel="x", port=0), r"^bridge port 0 outside"),
        (netwire.Subscribe(server_id=1, channel="x", port=65536), r"^bridge port 65536 outside"),
        (netwire.Advertise(server_id=1, channel="é" * 65), r"^channel name is 130 bytes"),
    ],
)
def test_encoding_a_bad_datagram_raises(message: netwire.Datagram, error: str) -> None:
    with pytest.raises(BusProtocolError, match=error):
        netwire.encode_datagram(message)


names = st.text(TEXT_CHARS, min_size=1).filter(
    lambda s: len(s.encode()) <= netwire.MAX_CHANNEL_NAME_BYTES
)
server_ids = st.integers(1, (1 << 64) - 1)
datagrams = st.one_of(
    st.builds(netwire.Query, server_id=server_ids, channel=names),
    st.builds(netwire.Advertise, server_id=server_ids, channel=names, reliable=st.booleans()),
    st.builds(netwire.Subscribe, server_id=server_ids, channel=names, port=st.integers(1, 65535)),
)


@given(datagrams)
def test_datagram_round_trips(message: netwire.Datagram) -> None:
    data = netwire.encode_datagram(message)
    assert len(data) <= netwire.MAX_DATAGRAM_BYTES
    assert netwire.decode_datagram(data) == message


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_datagram_decodes_or_raises_our_protocol_error(data: bytes) -> None:
    try:
        netwire.decode_datagram(data)
    except BusProtocolError:
        pass


@given(datagrams, st.data())
def test_a_flipped_byte_decodes_or_raises_our_protocol_error(
    message: netwire.Datagram, data: st.DataObject
) -> None:
    raw = bytearray(netwire.encode_datagram(message))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    try:
        netwire.decode_datagram(bytes(raw))
    except BusProtocolError:
        pass


# -- bridge frames --------------------------------------------------------------------

SUBSCRIBED_PAYLOAD = b"\x04chat\x04text" + struct.pack(">IIH", 64, 8, 0x0007)

BRIDGE: list[tuple[int, bytes, netwire.BridgeEvent]] = [
    (
        0x11,
        SUBSCRIBED_PAYLOAD,
        netwire.Subscribed(
            channel="chat",
            type="text",
            slot_size=64,
            num_slots=8,
            reliable=True,
            fixed_size=True,
            checksum=True,
        ),
    ),
    (0x11, b"\x01x\x00" + bytes(10), netwire.Subscribed(channel="x")),
    (0x12, struct.pack(">Q", 5) + b"hello", netwire.BridgedMessage(ordinal=5, data=b"hello")),
    (
        0x13,
        struct.pack(">Q", 5) + b"hello",
        netwire.BridgedMessage(ordinal=5, data=b"hello", held=True),
    ),
    (0x14, struct.pack(">QQ", 5, 6), netwire.Retired(ordinals=(5, 6))),
    (0x14, struct.pack(">Q", (1 << 64) - 1), netwire.Retired(ordinals=((1 << 64) - 1,))),
    (0x1F, b"\x05PROTO" + b"bad frame", netwire.BridgeError(code="PROTO", message="bad frame")),
    (0x1F, b"\x05STATE", netwire.BridgeError(code="STATE")),
]


@pytest.mark.parametrize(("kind", "payload", "event"), BRIDGE)
def test_bridge_frame_decodes_and_encodes_to_the_documented_bytes(
    kind: int, payload: bytes, event: netwire.BridgeEvent
) -> None:
    frame = Frame(type=kind, flags=0, request_id=0, payload=payload)
    assert netwire.decode_bridge(frame) == event
    assert netwire.encode_bridge(event) == framing.encode(frame)


BAD_BRIDGE: list[tuple[int, bytes, str]] = [
    (0x15, b"", r"^unknown bridge frame type 0x15$"),
    (0x01, b"", r"^unknown bridge frame type 0x01$"),
    (
        0x11,
        SUBSCRIBED_PAYLOAD[:-1],
        r"^SUBSCRIBED payload of 19 bytes ends inside channel details$",
    ),
    (0x11, SUBSCRIBED_PAYLOAD[:-2] + b"\x00\x08", r"^SUBSCRIBED flags 0x0008 set reserved bits$"),
    (
        0x11,
        b"\x01x\x00" + struct.pack(">IIH", (1 << 30) + 1, 0, 0),
        r"^slot size 1073741825 outside 0\.\.1073741824$",
    ),
    (0x11, b"\x01x\x00" + struct.pack(">IIH", 0, 65537, 0), r"^num_slots 65537 outside"),
    (0x11, b"\x01x\x41" + b"t" * 65 + bytes(10), r"^type is 65 bytes, the limit is 64$"),
    (0x12, struct.pack(">Q", 0) + b"x", r"^ordinal 0 is reserved$"),
    (0x12, struct.pack(">Q", 1), r"^MESSAGE carries no bytes: a message has 1 or more$"),
    (0x12, b"\x00\x01", r"^MESSAGE payload of 2 bytes ends inside ordinal$"),
    (0x13, struct.pack(">Q", 1), r"^HELD_MESSAGE carries no bytes: a message has 1 or more$"),
    (0x13, struct.pack(">Q", 0) + b"x", r"^ordinal 0 is reserved$"),
    (0x14, b"", r"^RETIRED carries 1\.\.1024 ordinals, not 0$"),
    (
        0x14,
        struct.pack(">QQ", 5, 6)[:-1],
        r"^RETIRED payload of 15 bytes is not a whole number of 8-byte ordinals$",
    ),
    (0x14, b"\x00\x00\x05", r"^RETIRED payload of 3 bytes is not a whole number of 8-byte"),
    (0x14, struct.pack(">QQ", 5, 0), r"^ordinal 0 is reserved$"),
    (0x14, struct.pack(">Q", 1) * 1025, r"^RETIRED carries 1\.\.1024 ordinals, not 1025$"),
    (0x1F, b"\x05proto", r"^error code 'proto' is not 1\.\.32 of A-Z and _$"),
    (0x1F, b"\x00", r"^error code '' is not 1\.\.32 of A-Z and _$"),
    (0x1F, b"\x01E" + bytes(1025), r"^error message is 1025 bytes, the limit is 1024$"),
]


@pytest.mark.parametrize(("kind", "payload", "error"), BAD_BRIDGE)
def test_bad_bridge_frame_is_refused_with_its_reason(kind: int, payload: bytes, error: str) -> None:
    with pytest.raises(BusProtocolError, match=error):
        netwire.decode_bridge(Frame(type=kind, flags=0, request_id=0, payload=payload))


def test_message_over_the_frame_limit_is_refused_before_it_is_sent() -> None:
    too_big = bytes(netwire.MAX_BRIDGED_MESSAGE_BYTES + 1)
    with pytest.raises(BusProtocolError, match=r"^a bridged message is 1\.\.16777208 bytes"):
        netwire.encode_message(1, too_big)
    with pytest.raises(BusProtocolError, match=r"^a bridged message is 1\.\.16777208 bytes"):
        netwire.encode_message(1, b"")


@pytest.mark.parametrize(
    ("ordinals", "error"),
    [
        ((), r"^RETIRED carries 1\.\.1024 ordinals, not 0$"),
        ((1,) * 1025, r"^RETIRED carries 1\.\.1024 ordinals, not 1025$"),
        ((3, 0), r"^ordinal 0 outside 1\.\.18446744073709551615$"),
        ((1 << 64,), r"^ordinal 18446744073709551616 outside 1\.\."),
    ],
)
def test_encoding_a_bad_retired_raises(ordinals: tuple[int, ...], error: str) -> None:
    with pytest.raises(BusProtocolError, match=error):
        netwire.encode_bridge(netwire.Retired(ordinals=ordinals))


def test_truncated_retired_frame_waits_for_the_rest_then_decodes() -> None:
    """A RETIRED cut anywhere is no event yet (the stream needs the rest), never an error."""
    data = netwire.encode_retired([7, 8, 9])
    for cut in range(len(data)):
        stream = netwire.bridge_stream()
        stream.feed(data[:cut])
        assert stream.next_event() is NEED_DATA
        stream.feed(data[cut:])
        item = stream.next_event()
        assert item is not NEED_DATA
        assert item[1] == netwire.Retired(ordinals=(7, 8, 9))


def test_bridge_stream_split_at_every_cut_point_gives_the_same_events() -> None:
    events = [event for _, _, event in BRIDGE]
    data = b"".join(netwire.encode_bridge(event) for event in events)
    for head, tail in cut_points(data):
        stream = netwire.bridge_stream()
        got: list[netwire.BridgeEvent] = []
        for part in (head, tail):
            stream.feed(part)
            while (item := stream.next_event()) is not NEED_DATA:
                got.append(item[1])
        assert got == events
    stream = netwire.bridge_stream()
    got = []
    for index in range(len(data)):
        stream.feed(data[index : index + 1])
        while (item := stream.next_event()) is not NEED_DATA:
            got.append(item[1])
    assert got == events


def test_bridge_stream_refuses_an_oversized_frame_from_its_header() -> None:
    stream = netwire.bridge_stream()
    header = framing.HEADER.pack(
        framing.MAGIC, 1, 0x12, 0, 0, 0, netwire.MAX_BRIDGE_PAYLOAD_BYTES + 1, 0
    )
    stream.feed(header)
    with pytest.raises(FrameError, match=r"^frame payload length 16777217 exceeds limit"):
        stream.next_event()


events = st.one_of(
    st.builds(
        netwire.Subscribed, channel=names,
        type=st.text(TEXT_CHARS)
        .filter(lambda s: len(s.encode()) <= netwire.MAX_TYPE_BYTES),
        slot_size=st.integers(0, netwire.MAX_SLOT_BYTES),
        num_slots=st.integers(0, netwire.MAX_NUM_SLOTS), reliable=st.booleans(),
        fixed_size=st.booleans(), checksum=st.booleans(),
    ),
    st.builds(
        netwire.BridgedMessage, ordinal=st.integers(1, (1 << 64) - 1),
        data=st.binary(min_size=1, max_size=300), held=st.booleans(),
    ),
    st.builds(
        netwire.Retired,
        ordinals=st.lists(st.integers(1, (1 << 64) - 1), min_size=1, max_size=40).map(tuple),
    ),
    st.builds(
        netwire.BridgeError, code=st.from_regex(r"[A-Z_]{1,32}", fullmatch=True),
        message=st.text(max_size=50),
    ),
)  # fmt: skip


@given(events)
def test_bridge_event_round_trips(event: netwire.BridgeEvent) -> None:
    stream = netwire.bridge_stream()
    stream.feed(netwire.encode_bridge(event))
    item = stream.next_event()
    assert item is not NEED_DATA
    got = item[1]
    if isinstance(event, netwire.BridgeError):
        assert got == netwire.BridgeError(code=event.code, message=event.message)
    else:
        assert got == event


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bridge_bytes_give_events_or_our_protocol_errors(data: bytes) -> None:
    stream = netwire.bridge_stream()
    stream.feed(data)
    try:
        while stream.next_event() is not NEED_DATA:
            pass
    except (FrameError, BusProtocolError):
        pass


def _documented_block(title: str) -> bytes:
    """The bytes of the annotated hex block that follows `title` in docs/protocols/bus.md
    (each line: hex bytes, then the comment)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocols" / "bus.md").read_text()
    after = text[text.index(title) :]
    block = after[after.index("```") + 3 :]
    block = block[: block.index("```")]
    data = bytearray()
    for line in block.strip().splitlines():
        for token in line.split():
            if len(token) != 2 or any(c not in "0123456789abcdef" for c in token):
                break
            data.append(int(token, 16))
    return bytes(data)


def test_the_documented_query_and_retired_blocks_are_what_the_codec_makes() -> None:
    query = netwire.encode_datagram(netwire.Query(server_id=SERVER, channel="chat"))
    assert _documented_block("QUERY for `chat` from server") == query
    retired = netwire.encode_bridge(netwire.Retired(ordinals=(5, 6)))
    assert _documented_block("RETIRED of ordinals 5 and 6") == retired
