"""The codec of the bus control protocol's requests, Request values to frames and back:
pure sans-I/O (bus library layer); the server decodes, `Client` encodes."""

from __future__ import annotations

import struct
from typing import Final, assert_never

from postoffice.bus.errors import BusProtocolError
from postoffice.bus.fields import FieldReader, check_range, encode_str8
from postoffice.bus.wire.messages import (
    MAX_ACTIVE,
    MAX_CHANNEL_NAME_BYTES,
    MAX_CLIENT_NAME_BYTES,
    MAX_METADATA_BYTES,
    MAX_NUM_SLOTS,
    MAX_REQUEST_BYTES,
    MAX_SLOT_BYTES,
    MAX_TYPE_BYTES,
    MAX_USER_ID,
    OPT_CHECKSUM,
    OPT_FIXED_SIZE,
    OPT_METADATA,
    OPT_MUX,
    OPT_RELIABLE,
    OPT_RETIREMENT,
    PUBLISHER_OPTIONS,
    SUBSCRIBER_OPTIONS,
    CreatePublisherRequest,
    CreateSubscriberRequest,
    FrameType,
    GetChannelInfoRequest,
    GetChannelStatsRequest,
    GetTriggersRequest,
    InitRequest,
    RemovePublisherRequest,
    RemoveSubscriberRequest,
    ReopenSubscriberRequest,
    Request,
    encode_channel,
    frame_kind,
    read_channel,
    read_mux,
)
from postoffice.core import framing
from postoffice.core.framing import Frame, MessageStream

_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_CREATE_TAIL: Final = struct.Struct(">IIH")  # slot_size, num_slots, options


# -- encoding -------------------------------------------------------------------------


def _request_payload(request: Request) -> tuple[FrameType, bytes]:
    match request:
        case InitRequest():
            name = encode_str8(request.client_name, MAX_CLIENT_NAME_BYTES, "client name")
            return FrameType.INIT, name
        case CreatePublisherRequest():
            metadata = check_range(request.metadata_bytes, 0, MAX_METADATA_BYTES, "metadata_bytes")
            options = (
                (OPT_RELIABLE if request.reliable else 0)
                | (OPT_FIXED_SIZE if request.fixed_size else 0)
                | (OPT_CHECKSUM if request.checksum else 0)
                | (OPT_METADATA if metadata else 0)
                | (OPT_MUX if request.mux else 0)
                | (OPT_RETIREMENT if request.retirement else 0)
            )
            extra = _U16.pack(metadata) if metadata else b""
            if request.mux:
                extra += encode_str8(request.mux, MAX_CHANNEL_NAME_BYTES, "mux name")
            return FrameType.CREATE_PUBLISHER, _create(request, options) + extra
        case CreateSubscriberRequest():
            options = (OPT_RELIABLE if request.reliable else 0) | (OPT_MUX if request.mux else 0)
            active = _U32.pack(check_range(request.max_active, 1, MAX_ACTIVE, "max_active"))
            mux = (
                encode_str8(request.mux, MAX_CHANNEL_NAME_BYTES, "mux name") if request.mux else b""
            )
            return FrameType.CREATE_SUBSCRIBER, _create(request, options) + active + mux
        case RemovePublisherRequest() | RemoveSubscriberRequest() | ReopenSubscriberRequest():
            kind = (
                FrameType.REMOVE_PUBLISHER
                if isinstance(request, RemovePublisherRequest)
                else FrameType.REMOVE_SUBSCRIBER
                if isinstance(request, RemoveSubscriberRequest)
                else FrameType.REOPEN_SUBSCRIBER
            )
            user = _U8.pack(check_range(request.user_id, 0, MAX_USER_ID, "user id"))
            return kind, encode_channel(request.channel, required=True) + user
        case GetTriggersRequest():
            return FrameType.GET_TRIGGERS, encode_channel(request.channel, required=True)
        case GetChannelInfoRequest():
            return FrameType.GET_CHANNEL_INFO, encode_channel(request.channel, required=False)
        case GetChannelStatsRequest():
            return FrameType.GET_CHANNEL_STATS, encode_channel(request.channel, required=False)
        case _:
            assert_never(request)


def _create(request: CreatePublisherRequest | CreateSubscriberRequest, options: int) -> bytes:
    return b"".join(
        (
            encode_channel(request.channel, required=True),
            encode_str8(request.type, MAX_TYPE_BYTES, "channel type"),
            _CREATE_TAIL.pack(
                check_range(request.slot_size, 0, MAX_SLOT_BYTES, "slot_size"),
                check_range(request.num_slots, 0, MAX_NUM_SLOTS, "num_slots"),
                options,
            ),
        )
    )


def encode_request(request_id: int, request: Request) -> bytes:
    """The frame of `request` with `request_id` (1..2**64-1). Raises BusProtocolError for
    a field out of its range (nothing is sent)."""
    check_range(request_id, 1, framing.MAX_REQUEST_ID, "request id")
    kind, payload = _request_payload(request)
    return framing.encode_parts(kind, 0, request_id, payload)


# -- decoding -------------------------------------------------------------------------


def _options(value: int, allowed: int, what: str) -> int:
    if value & ~allowed:
        raise BusProtocolError(f"{what} options 0x{value:04x} set reserved bits")
    return value


def decode_request(frame: Frame) -> Request:
    """The request a frame carries. Raises BusProtocolError for an unknown type, non-zero
    flags, or a payload that is not that request's (short, long, a bad field)."""
    kind = frame_kind(frame, request=True)
    reader = FieldReader(frame.payload, kind.name)
    request: Request
    match kind:
        case FrameType.INIT:
            request = InitRequest(client_name=reader.str8(MAX_CLIENT_NAME_BYTES, "client name"))
        case FrameType.CREATE_PUBLISHER:
            name, type_, slot_size, num_slots, options = _read_create(reader)
            _options(options, PUBLISHER_OPTIONS, "publisher")
            metadata = 0
            if options & OPT_METADATA:
                (metadata,) = reader.unpack(_U16, "metadata size")
                check_range(metadata, 1, MAX_METADATA_BYTES, "metadata_bytes")
            mux = read_mux(reader) if options & OPT_MUX else ""
            request = CreatePublisherRequest(
                channel=name, type=type_, slot_size=slot_size, num_slots=num_slots,
                reliable=bool(options & OPT_RELIABLE),
                fixed_size=bool(options & OPT_FIXED_SIZE),
                checksum=bool(options & OPT_CHECKSUM), metadata_bytes=metadata, mux=mux,
                retirement=bool(options & OPT_RETIREMENT),
            )  # fmt: skip
        case FrameType.CREATE_SUBSCRIBER:
            name, type_, slot_size, num_slots, options = _read_create(reader)
            _options(options, SUBSCRIBER_OPTIONS, "subscriber")
            (active,) = reader.unpack(_U32, "max_active")
            check_range(active, 1, MAX_ACTIVE, "max_active")
            mux = read_mux(reader) if options & OPT_MUX else ""
            request = CreateSubscriberRequest(
                channel=name, type=type_, slot_size=slot_size, num_slots=num_slots,
                reliable=bool(options & OPT_RELIABLE), max_active=active, mux=mux,
            )  # fmt: skip
        case FrameType.REMOVE_PUBLISHER | FrameType.REMOVE_SUBSCRIBER | FrameType.REOPEN_SUBSCRIBER:
            name = read_channel(reader, required=True)
            user = check_range(reader.u8("user id"), 0, MAX_USER_ID, "user id")
            if kind is FrameType.REMOVE_PUBLISHER:
                request = RemovePublisherRequest(channel=name, user_id=user)
            elif kind is FrameType.REMOVE_SUBSCRIBER:
                request = RemoveSubscriberRequest(channel=name, user_id=user)
            else:
                request = ReopenSubscriberRequest(channel=name, user_id=user)
        case FrameType.GET_TRIGGERS:
            request = GetTriggersRequest(channel=read_channel(reader, required=True))
        case FrameType.GET_CHANNEL_INFO:
            request = GetChannelInfoRequest(channel=read_channel(reader, required=False))
        case FrameType.GET_CHANNEL_STATS:
            request = GetChannelStatsRequest(channel=read_channel(reader, required=False))
        case _:  # pragma: no cover - frame_kind admits requests only
            raise BusProtocolError(f"frame type 0x{frame.type:02x} is not a request")
    reader.end()
    return request


def _read_create(reader: FieldReader) -> tuple[str, str, int, int, int]:
    name = read_channel(reader, required=True)
    type_ = reader.str8(MAX_TYPE_BYTES, "channel type")
    slot_size, num_slots, options = reader.unpack(_CREATE_TAIL, "channel parameters")
    check_range(slot_size, 0, MAX_SLOT_BYTES, "slot_size")
    check_range(num_slots, 0, MAX_NUM_SLOTS, "num_slots")
    return name, type_, slot_size, num_slots, options


def request_stream() -> MessageStream[Request]:
    """The server's side of a connection: bytes in, (request id, Request) out; a
    FrameError (framing lost) or a BusProtocolError (one bad request) per STYLE's
    MessageStream contract."""
    return MessageStream(decode_request, MAX_REQUEST_BYTES)
