"""The bus control protocol's codec: bytes in, typed requests and replies out, no I/O."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import wire
from postoffice.bus.errors import BusProtocolError
from postoffice.core import framing
from postoffice.core.errors import FrameError, FrameTooLarge
from postoffice.core.framing import NEED_DATA, Frame
from tests.strategies import cut_points

E = wire.FdEntry
R = wire.FdRole


def frame(kind: int, payload: bytes, *, flags: int = 0) -> Frame:
    return Frame(type=kind, flags=flags, request_id=7, payload=payload)


# -- table tests: payload bytes <-> messages --------------------------------------------

REQUESTS: list[tuple[int, bytes, wire.Request]] = [
    (0x01, b"\x03app", wire.InitRequest(client_name="app")),
    (0x01, b"\x00", wire.InitRequest()),
    (
        0x02,
        b"\x04chat\x04text" + struct.pack(">IIH", 64, 8, 0x0007),
        wire.CreatePublisherRequest(
            channel="chat",
            type="text",
            slot_size=64,
            num_slots=8,
            reliable=True,
            fixed_size=True,
            checksum=True,
        ),
    ),
    (
        0x02,
        b"\x04chat\x00" + struct.pack(">IIHH", 0, 0, 0x000C, 20),
        wire.CreatePublisherRequest(channel="chat", checksum=True, metadata_bytes=20),
    ),
    (
        0x02,
        b"\x04chat\x00" + struct.pack(">IIHH", 0, 0, 0x0029, 4),
        wire.CreatePublisherRequest(
            channel="chat", reliable=True, metadata_bytes=4, retirement=True
        ),
    ),
    (
        0x03,
        b"\x04chat\x00" + struct.pack(">IIHI", 0, 0, 0x0001, 3),
        wire.CreateSubscriberRequest(channel="chat", reliable=True, max_active=3),
    ),
    (
        0x02,
        b"\x01v\x00" + struct.pack(">IIHH", 0, 0, 0x0018, 8) + b"\x03mux",
        wire.CreatePublisherRequest(channel="v", metadata_bytes=8, mux="mux"),
    ),
    (
        0x03,
        b"\x01v\x00" + struct.pack(">IIHI", 0, 0, 0x0011, 1) + b"\x03mux",
        wire.CreateSubscriberRequest(channel="v", reliable=True, mux="mux"),
    ),
    (0x04, b"\x04chat\x05", wire.RemovePublisherRequest(channel="chat", user_id=5)),
    (0x05, b"\x04chat\x3f", wire.RemoveSubscriberRequest(channel="chat", user_id=63)),
    (0x09, b"\x04chat\x02", wire.ReopenSubscriberRequest(channel="chat", user_id=2)),
    (0x06, b"\x04chat", wire.GetTriggersRequest(channel="chat")),
    (0x07, b"\x00", wire.GetChannelInfoRequest()),
    (0x08, b"\x01x", wire.GetChannelStatsRequest(channel="x")),
]


@pytest.mark.parametrize(("kind", "payload", "request_"), REQUESTS)
def test_request_decodes_from_its_bytes(kind: int, payload: bytes, request_: wire.Request) -> None:
    assert wire.decode_request(frame(kind, payload)) == request_


@pytest.mark.parametrize(("kind", "payload", "request_"), REQUESTS)
def test_request_encodes_to_its_bytes(kind: int, payload: bytes, request_: wire.Request) -> None:
    assert wire.encode_request(7, request_) == framing.encode_parts(kind, 0, 7, payload)


REPLIES: list[tuple[int, bytes, wire.Reply]] = [
    (
        0x81,
        bytes.fromhex("0011223344556677")
        + b"\x00\x00\x00\x02"
        + b"\x00\x08/dev/shm"
        + b"\x01\x01\x00\x00",
        wire.InitReply(
            session="0011223344556677", client_id=2, directory="/dev/shm", fds=(E(role=R.SCB),)
        ),
    ),
    (
        0x82,
        struct.pack(">HBIIH", 2, 0, 8, 64, 1)
        + b"\x04text"
        + b"\x03"
        + b"\x02\x00\x00"
        + b"\x03\x00\x00"
        + b"\x04\x00\x00",
        wire.GrantReply(
            publisher=True,
            channel_id=2,
            user_id=0,
            num_slots=8,
            slot_size=64,
            flags=1,
            type="text",
            fds=(E(role=R.CCB), E(role=R.BCB), E(role=R.BUFFER, id=0)),
        ),
    ),
    (
        0x83,
        struct.pack(">HBIIH", 3, 1, 16, 256, 0)
        + b"\x00"
        + b"\x02"
        + b"\x05\x00\x01"
        + b"\x07\x00\x04",
        wire.GrantReply(
            publisher=False,
            channel_id=3,
            user_id=1,
            num_slots=16,
            slot_size=256,
            flags=0,
            type="",
            fds=(E(role=R.OWN_TRIGGER, id=1), E(role=R.PUBLISHER_TRIGGER, id=4)),
        ),
    ),
    (0x84, b"", wire.OkReply()),
    (
        0x85,
        b"\x00\x02\x01\x06\x00\x09",
        wire.TriggersReply(channel_id=2, fds=(E(role=R.SUBSCRIBER_TRIGGER, id=9),)),
    ),
    (
        0x86,
        b"\x00\x01\x01a\x00" + struct.pack(">HIIHBBBB", 5, 8, 64, 2, 1, 0, 2, 1),
        wire.ChannelInfoReply(
            channels=(
                wire.ChannelInfo(
                    name="a",
                    type="",
                    channel_id=5,
                    num_slots=8,
                    slot_size=64,
                    flags=2,
                    publishers=1,
                    reliable_publishers=0,
                    subscribers=2,
                    reliable_subscribers=1,
                ),
            )
        ),
    ),
    (
        0x86,
        b"\x00\x01\x01v\x00" + struct.pack(">HIIHBBBB", 5, 8, 64, 0x20, 1, 0, 0, 0) + b"\x01m",
        wire.ChannelInfoReply(
            channels=(
                wire.ChannelInfo(
                    name="v",
                    type="",
                    channel_id=5,
                    num_slots=8,
                    slot_size=64,
                    flags=wire.CHANNEL_VIRTUAL,
                    publishers=1,
                    reliable_publishers=0,
                    subscribers=0,
                    reliable_subscribers=0,
                    mux="m",
                ),
            )
        ),
    ),
    (
        0x87,
        b"\x00\x01\x01a" + struct.pack(">HQQQQQIIBB", 5, 10, 100, 20, 1, 11, 2, 128, 1, 3),
        wire.ChannelStatsReply(
            channels=(
                wire.ChannelStatsRecord(
                    name="a",
                    channel_id=5,
                    messages=10,
                    bytes=100,
                    max_message_bytes=20,
                    drops=1,
                    last_ordinal=11,
                    num_buffers=2,
                    slot_size=128,
                    publishers=1,
                    subscribers=3,
                ),
            )
        ),
    ),
    (0xFF, b"\x08MISMATCH" + b"bad type", wire.ErrorReply(code="MISMATCH", message="bad type")),
]


@pytest.mark.parametrize(("kind", "payload", "reply"), REPLIES)
def test_reply_decodes_from_its_bytes(kind: int, payload: bytes, reply: wire.Reply) -> None:
    assert wire.decode_reply(frame(kind, payload)) == reply


@pytest.mark.parametrize(("kind", "payload", "reply"), REPLIES)
def test_reply_encodes_to_its_bytes(kind: int, payload: bytes, reply: wire.Reply) -> None:
    assert wire.encode_reply(7, reply) == framing.encode_parts(kind, 0, 7, payload)


BAD_REQUESTS: list[tuple[int, bytes, str]] = [
    (0x0A, b"", r"^unknown frame type 0x0a$"),
    (0x81, b"", r"^frame type 0x81 is not a request$"),
    (0x01, b"", r"^INIT payload of 0 bytes ends inside client name length$"),
    (0x01, b"\x05ab", r"^INIT payload of 3 bytes ends inside client name$"),
    (0x01, b"\x41" + b"x" * 65, r"^client name is 65 bytes, the limit is 64$"),
    (0x01, b"\x01a!", r"^INIT payload has 1 bytes past its end$"),
    (0x01, b"\x02\xff\xfe", r"^client name is not UTF-8: invalid start byte$"),
    (0x06, b"\x00", r"^channel name is empty$"),
    (0x06, b"\x02a\x00", r"^channel name holds a NUL byte$"),
    (0x06, b"\x81" + b"x" * 129, r"^channel name is 129 bytes, the limit is 128$"),
    (
        0x02,
        b"\x01c\x00" + struct.pack(">IIH", 0, 0, 0x8000),
        r"^publisher options 0x8000 set reserved bits$",
    ),
    (
        0x02,
        b"\x01c\x00" + struct.pack(">IIH", 0, 0, 0x0010) + b"\x00",
        r"^mux name is empty$",
    ),
    (
        0x03,
        b"\x01c\x00" + struct.pack(">IIHI", 0, 0, 0x0010, 1),
        r"^CREATE_SUBSCRIBER payload of 17 bytes ends inside mux name length$",
    ),
    (
        0x02,
        b"\x01c\x00" + struct.pack(">IIH", 0, 0, 0x0008) + b"\x00",
        r"^CREATE_PUBLISHER payload of 14 bytes ends inside metadata size$",
    ),
    (
        0x02,
        b"\x01c\x00" + struct.pack(">IIHH", 0, 0, 0x0008, 257),
        r"^metadata_bytes 257 outside 1\.\.256$",
    ),
    (
        0x02,
        b"\x01c\x00" + struct.pack(">IIHH", 0, 0, 0x0008, 0),
        r"^metadata_bytes 0 outside 1\.\.256$",
    ),
    (
        0x03,
        b"\x01c\x00" + struct.pack(">IIHI", 0, 0, 0x0002, 1),
        r"^subscriber options 0x0002 set reserved bits$",
    ),
    (
        0x03,
        b"\x01c\x00" + struct.pack(">IIHI", 0, 0, 0, 0),
        r"^max_active 0 outside 1\.\.4096$",
    ),
    (
        0x02,
        b"\x01c\x00" + struct.pack(">IIH", 0, 65537, 0),
        r"^num_slots 65537 outside 0\.\.65536$",
    ),
    (
        0x02,
        b"\x01c\x00" + struct.pack(">IIH", (1 << 30) + 1, 1, 0),
        r"^slot_size 1073741825 outside 0\.\.1073741824$",
    ),
    (0x04, b"\x01c\x40", r"^user id 64 outside 0\.\.63$"),
]


@pytest.mark.parametrize(("kind", "payload", "message"), BAD_REQUESTS)
def test_bad_request_is_refused_with_its_reason(kind: int, payload: bytes, message: str) -> None:
    with pytest.raises(BusProtocolError, match=message):
        wire.decode_request(frame(kind, payload))


def test_a_request_with_flags_is_refused() -> None:
    with pytest.raises(BusProtocolError, match=r"^frame flags 0x0001, expected 0$"):
        wire.decode_request(frame(0x07, b"\x00", flags=1))


def test_a_reply_frame_is_not_a_reply_when_it_is_a_request() -> None:
    with pytest.raises(BusProtocolError, match=r"^frame type 0x01 is not a reply$"):
        wire.decode_reply(frame(0x01, b"\x00"))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01\x0a\x00\x00", r"^fd entry 0 has unknown role 10$"),
        (b"\x02\x02\x00\x00", r"^TRIGGERS payload of 6 bytes ends inside fd entry 1$"),
    ],
)
def test_bad_fd_table_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(BusProtocolError, match=message):
        wire.decode_reply(frame(0x85, b"\x00\x01" + payload))


def test_an_error_code_must_be_capitals() -> None:
    with pytest.raises(BusProtocolError, match=r"^error code 'bad' is not A-Z and _$"):
        wire.decode_reply(frame(0xFF, b"\x03bad"))


def test_request_id_zero_is_not_encoded() -> None:
    with pytest.raises(BusProtocolError, match=r"^request id 0 outside 1\.\.\d+$"):
        wire.encode_request(0, wire.InitRequest())


def test_a_too_long_name_is_not_encoded() -> None:
    with pytest.raises(BusProtocolError, match=r"^channel name is 129 bytes, the limit is 128$"):
        wire.encode_request(1, wire.GetTriggersRequest(channel="x" * 129))


# -- the stream: split feeds, limits, broken frames --------------------------------------


def test_a_request_split_at_every_byte_decodes_once() -> None:
    data = wire.encode_request(3, wire.CreatePublisherRequest(channel="chat", num_slots=4))
    for head, tail in cut_points(data):
        stream = wire.request_stream()
        stream.feed(head)
        events = []
        while (event := stream.next_event()) is not NEED_DATA:
            events.append(event)
        stream.feed(tail)
        while (event := stream.next_event()) is not NEED_DATA:
            events.append(event)
        assert events == [(3, wire.CreatePublisherRequest(channel="chat", num_slots=4))]


def test_requests_fed_one_byte_at_a_time_come_out_in_order() -> None:
    requests: list[wire.Request] = [
        wire.InitRequest(client_name="a"),
        wire.GetChannelInfoRequest(),
        wire.RemoveSubscriberRequest(channel="c", user_id=2),
    ]
    data = b"".join(wire.encode_request(i + 1, r) for i, r in enumerate(requests))
    stream = wire.request_stream()
    events = []
    for byte in data:
        stream.feed(bytes([byte]))
        while (event := stream.next_event()) is not NEED_DATA:
            events.append(event)
    assert events == [(i + 1, r) for i, r in enumerate(requests)]


def test_a_request_frame_over_the_limit_fails_at_its_header() -> None:
    header = framing.HEADER.pack(b"PO", 1, 1, 0, 0, 1, wire.MAX_REQUEST_BYTES + 1, 0)
    stream = wire.request_stream()
    stream.feed(header)
    with pytest.raises(FrameTooLarge):
        stream.next_event()


def test_a_bad_request_leaves_the_stream_usable() -> None:
    stream = wire.request_stream()
    stream.feed(framing.encode_parts(0x09, 0, 4, b""))
    stream.feed(wire.encode_request(5, wire.GetChannelStatsRequest()))
    with pytest.raises(BusProtocolError):
        stream.next_event()
    assert stream.last_request_id == 4
    assert stream.next_event() == (5, wire.GetChannelStatsRequest())


def test_garbage_bytes_lose_framing() -> None:
    stream = wire.request_stream()
    stream.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(FrameError, match=r"^bad frame magic"):
        stream.next_event()
    assert stream.failed


# -- Hypothesis: round trips and robustness ---------------------------------------------

names = st.text(min_size=1, max_size=20).filter(
    lambda s: "\0" not in s and len(s.encode()) <= wire.MAX_CHANNEL_NAME_BYTES
)
types = st.text(max_size=10).filter(lambda s: "\0" not in s)
sizes = st.integers(0, wire.MAX_SLOT_BYTES)
slots = st.integers(0, wire.MAX_NUM_SLOTS)
users = st.integers(0, wire.MAX_USER_ID)

requests = st.one_of(
    st.builds(wire.InitRequest, client_name=st.text(max_size=10).filter(lambda s: "\0" not in s)),
    st.builds(
        wire.CreatePublisherRequest,
        channel=names,
        type=types,
        slot_size=sizes,
        num_slots=slots,
        reliable=st.booleans(),
        fixed_size=st.booleans(),
        checksum=st.booleans(),
        metadata_bytes=st.integers(0, wire.MAX_METADATA_BYTES),
    ),
    st.builds(
        wire.CreateSubscriberRequest,
        channel=names,
        type=types,
        slot_size=sizes,
        num_slots=slots,
        reliable=st.booleans(),
        max_active=st.integers(1, wire.MAX_ACTIVE),
    ),
    st.builds(wire.RemovePublisherRequest, channel=names, user_id=users),
    st.builds(wire.RemoveSubscriberRequest, channel=names, user_id=users),
    st.builds(wire.ReopenSubscriberRequest, channel=names, user_id=users),
    st.builds(wire.GetTriggersRequest, channel=names),
    st.builds(wire.GetChannelInfoRequest, channel=st.one_of(st.just(""), names)),
    st.builds(wire.GetChannelStatsRequest, channel=st.one_of(st.just(""), names)),
)

fd_tables = st.lists(
    st.builds(wire.FdEntry, role=st.sampled_from(wire.FdRole), id=st.integers(0, 0xFFFF)),
    max_size=8,
).map(tuple)

replies = st.one_of(
    st.builds(
        wire.InitReply,
        session=st.binary(min_size=8, max_size=8).map(bytes.hex),
        client_id=st.integers(0, 2**32 - 1),
        directory=types,
        fds=fd_tables,
    ),
    st.builds(
        wire.GrantReply,
        publisher=st.booleans(),
        channel_id=st.integers(0, 1023),
        user_id=users,
        num_slots=st.integers(1, wire.MAX_NUM_SLOTS),
        slot_size=st.integers(1, wire.MAX_SLOT_BYTES),
        flags=st.integers(0, wire.CHANNEL_FLAGS),
        type=types,
        fds=fd_tables,
    ),
    st.just(wire.OkReply()),
    st.builds(wire.TriggersReply, channel_id=st.integers(0, 1023), fds=fd_tables),
    st.builds(
        wire.ChannelInfoReply,
        channels=st.lists(
            st.builds(
                wire.ChannelInfo,
                name=names,
                type=types,
                channel_id=st.integers(0, 1023),
                num_slots=st.integers(0, 2**32 - 1),
                slot_size=st.integers(0, 2**32 - 1),
                flags=st.integers(0, 3),
                publishers=st.integers(0, 64),
                reliable_publishers=st.integers(0, 64),
                subscribers=st.integers(0, 64),
                reliable_subscribers=st.integers(0, 64),
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(
        wire.ErrorReply,
        code=st.from_regex(r"\A[A-Z][A-Z_]{0,10}\Z"),
        message=st.text(max_size=40),
    ),
)


@given(request=requests, request_id=st.integers(1, 2**64 - 1))
def test_every_request_survives_a_round_trip(request: wire.Request, request_id: int) -> None:
    stream = wire.request_stream()
    stream.feed(wire.encode_request(request_id, request))
    assert stream.next_event() == (request_id, request)


@given(reply=replies, request_id=st.integers(0, 2**64 - 1))
def test_every_reply_survives_a_round_trip(reply: wire.Reply, request_id: int) -> None:
    if isinstance(reply, wire.ErrorReply) and "\ufffd" in reply.message:
        return  # replacement characters stand for what could not be encoded
    stream = wire.reply_stream()
    stream.feed(wire.encode_reply(request_id, reply))
    got = stream.next_event()
    if isinstance(reply, wire.ErrorReply):
        expected = reply.message.encode("utf-8", "replace").decode("utf-8", "replace")
        assert got == (request_id, wire.ErrorReply(code=reply.code, message=expected))
    else:
        assert got == (request_id, reply)


@settings(max_examples=300)
@given(kind=st.integers(0, 255), payload=st.binary(max_size=80))
def test_arbitrary_payloads_decode_or_raise_our_protocol_error(kind: int, payload: bytes) -> None:
    for decode in (wire.decode_request, wire.decode_reply):
        try:
            decode(Frame(type=kind, flags=0, request_id=1, payload=payload))
        except BusProtocolError:
            pass


@settings(max_examples=200)
@given(data=st.binary(max_size=120))
def test_arbitrary_bytes_give_requests_or_our_errors(data: bytes) -> None:
    stream = wire.request_stream()
    stream.feed(data)
    for _ in range(10):
        try:
            if stream.next_event() is NEED_DATA:
                return
        except BusProtocolError:
            continue
        except FrameError:
            return
