"""The bus between machines: discovery datagrams and bridge messages on core frames.

Pure sans-I/O (bus library layer): `discovery.py` and the `bridge` package encode and
decode with it. The byte layout is docs/protocols/bus.md, "Between machines".
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final, assert_never

from postoffice.bus.errors import BusProtocolError
from postoffice.bus.fields import FieldReader, check_range, encode_str8
from postoffice.core import framing
from postoffice.core.errors import FrameError
from postoffice.core.framing import NEED_DATA, Frame, FrameDecoder, MessageStream

# -- limits ---------------------------------------------------------------------------

#: A discovery datagram, header included: the largest (SUBSCRIBE, a 128-byte name) is
#: 24 + 8 + 129 + 2 bytes; a bigger one is garbage, dropped before it is decoded.
MAX_DATAGRAM_BYTES: Final = 512
#: A bridge frame's payload: a whole message and its ordinal in one frame.
MAX_BRIDGE_PAYLOAD_BYTES: Final = framing.MAX_PAYLOAD_BYTES
#: The largest message a bridge forwards (what is left of a frame after the ordinal).
MAX_BRIDGED_MESSAGE_BYTES: Final = MAX_BRIDGE_PAYLOAD_BYTES - 8
#: Channel names and types: what a channel's control block holds.
MAX_CHANNEL_NAME_BYTES: Final = 128
MAX_TYPE_BYTES: Final = 64
#: Held messages a transmitter may have sent and not seen in a RETIRED yet: it holds a
#: slot of the source channel for each (a receiver refuses one more).
MAX_HELD_MESSAGES: Final = 256
#: Ordinals in one RETIRED frame (8 KiB): a receiver reports what retired since its last
#: look, in as many frames as that takes.
MAX_RETIRED_ORDINALS: Final = 1024
#: An ERROR's message, in bytes of UTF-8.
MAX_ERROR_BYTES: Final = 1024
#: A channel's slots and slot size (the shared-memory layout's limits).
MAX_NUM_SLOTS: Final = 65536
MAX_SLOT_BYTES: Final = 1 << 30


class DiscoveryType(enum.IntEnum):
    """Frame types of discovery datagrams (UDP)."""

    QUERY = 0x01
    ADVERTISE = 0x02
    SUBSCRIBE = 0x03


class BridgeType(enum.IntEnum):
    """Frame types of a bridge connection (TCP)."""

    SUBSCRIBED = 0x11
    MESSAGE = 0x12
    HELD_MESSAGE = 0x13
    RETIRED = 0x14
    ERROR = 0x1F


#: ADVERTISE flags: the channel's publishers are reliable.
ADVERTISE_RELIABLE: Final = 0x01
#: SUBSCRIBED flags.
SUBSCRIBED_RELIABLE: Final = 0x0001
SUBSCRIBED_FIXED_SIZE: Final = 0x0002
SUBSCRIBED_CHECKSUM: Final = 0x0004
_SUBSCRIBED_FLAGS: Final = SUBSCRIBED_RELIABLE | SUBSCRIBED_FIXED_SIZE | SUBSCRIBED_CHECKSUM

_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")
_U64: Final = struct.Struct(">Q")
_SUBSCRIBED_TAIL: Final = struct.Struct(">IIH")  # slot size, num_slots, flags
_ERROR_CODE_BYTES: Final = 32


# -- messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """ "Who publishes `channel`?" from server `server_id`."""

    server_id: int
    channel: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Advertise:
    """ "I (`server_id`) publish `channel`" (`reliable`: its publishers are)."""

    server_id: int
    channel: str
    reliable: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe:
    """ "I want `channel`: connect to my bridge port `port`", at the address the datagram
    came from (a receiver names no address, so nobody can aim a server at a third host)."""

    server_id: int
    channel: str
    port: int


Datagram = Query | Advertise | Subscribe


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed:
    """The transmitter's first frame: the channel it forwards, and how it is made."""

    channel: str
    type: str = ""
    slot_size: int = 0
    num_slots: int = 0
    reliable: bool = False
    fixed_size: bool = False
    checksum: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgedMessage:
    """One message of the channel: its ordinal at the source, and its bytes. `held`
    (a HELD_MESSAGE): the transmitter holds the source's copy, whose publisher asked
    for retirement, until a RETIRED names this ordinal."""

    ordinal: int
    data: bytes
    held: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Retired:
    """The receiver's report: these held messages (source ordinals, in the order they
    retired) are held and unread by nobody on its side any more."""

    ordinals: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeError:
    """Either side's last word before it closes: a code (`A-Z_`) and why."""

    code: str
    message: str = ""


BridgeEvent = Subscribed | BridgedMessage | Retired | BridgeError


# -- encoding -------------------------------------------------------------------------


def _channel(value: str) -> bytes:
    if not value:
        raise BusProtocolError("channel name is empty")
    return encode_str8(value, MAX_CHANNEL_NAME_BYTES, "channel name")


def encode_datagram(message: Datagram) -> bytes:
    """One discovery datagram (a whole frame, request id 0). Raises BusProtocolError for
    a field out of range."""
    check_range(message.server_id, 1, (1 << 64) - 1, "server id")
    head = _U64.pack(message.server_id) + _channel(message.channel)
    match message:
        case Query():
            kind, payload = DiscoveryType.QUERY, head
        case Advertise():
            flags = ADVERTISE_RELIABLE if message.reliable else 0
            kind, payload = DiscoveryType.ADVERTISE, head + _U8.pack(flags)
        case Subscribe():
            port = check_range(message.port, 1, 65535, "bridge port")
            kind, payload = DiscoveryType.SUBSCRIBE, head + _U16.pack(port)
        case _:
            assert_never(message)
    return framing.encode_parts(kind, 0, 0, payload)


def encode_bridge(event: BridgeEvent) -> bytes:
    """One bridge frame (request id 0). Raises BusProtocolError for a field out of range
    or a message too large for a frame."""
    match event:
        case Subscribed():
            flags = (
                (SUBSCRIBED_RELIABLE if event.reliable else 0)
                | (SUBSCRIBED_FIXED_SIZE if event.fixed_size else 0)
                | (SUBSCRIBED_CHECKSUM if event.checksum else 0)
            )
            payload = (
                _channel(event.channel)
                + encode_str8(event.type, MAX_TYPE_BYTES, "type")
                + _SUBSCRIBED_TAIL.pack(
                    check_range(event.slot_size, 0, MAX_SLOT_BYTES, "slot size"),
                    check_range(event.num_slots, 0, MAX_NUM_SLOTS, "num_slots"),
                    flags,
                )
            )
            return framing.encode_parts(BridgeType.SUBSCRIBED, 0, 0, payload)
        case BridgedMessage():
            return encode_message(event.ordinal, event.data, held=event.held)
        case Retired():
            return encode_retired(event.ordinals)
        case BridgeError():
            if not _valid_code(event.code):
                raise BusProtocolError(f"error code {event.code!r} is not 1..32 of A-Z and _")
            message = event.message.encode("utf-8")[:MAX_ERROR_BYTES]
            payload = _U8.pack(len(event.code)) + event.code.encode() + message
            return framing.encode_parts(BridgeType.ERROR, 0, 0, payload)
        case _:
            assert_never(event)


def encode_message(
    ordinal: int, data: bytes | bytearray | memoryview, *, held: bool = False
) -> bytes:
    """A MESSAGE frame (HELD_MESSAGE with `held`) built straight from a message's bytes.
    Raises BusProtocolError for an empty or too large message, or an ordinal out of
    range."""
    check_range(ordinal, 1, (1 << 64) - 1, "ordinal")
    size = len(data)
    if not 1 <= size <= MAX_BRIDGED_MESSAGE_BYTES:
        raise BusProtocolError(
            f"a bridged message is 1..{MAX_BRIDGED_MESSAGE_BYTES} bytes, this one is {size}"
        )
    kind = BridgeType.HELD_MESSAGE if held else BridgeType.MESSAGE
    return framing.encode_parts(kind, 0, 0, _U64.pack(ordinal) + bytes(data))


def encode_retired(ordinals: tuple[int, ...] | list[int]) -> bytes:
    """A RETIRED frame: 1..MAX_RETIRED_ORDINALS source ordinals. Raises
    BusProtocolError for none, too many, or an ordinal out of range."""
    if not 1 <= len(ordinals) <= MAX_RETIRED_ORDINALS:
        raise BusProtocolError(
            f"RETIRED carries 1..{MAX_RETIRED_ORDINALS} ordinals, not {len(ordinals)}"
        )
    payload = b"".join(
        _U64.pack(check_range(ordinal, 1, (1 << 64) - 1, "ordinal")) for ordinal in ordinals
    )
    return framing.encode_parts(BridgeType.RETIRED, 0, 0, payload)


def _valid_code(code: str) -> bool:
    return (
        1 <= len(code) <= _ERROR_CODE_BYTES
        and code.isascii()
        and all(c == "_" or "A" <= c <= "Z" for c in code)
    )


# -- decoding -------------------------------------------------------------------------


def _read_channel(reader: FieldReader) -> str:
    name = reader.str8(MAX_CHANNEL_NAME_BYTES, "channel name")
    if not name:
        raise BusProtocolError("channel name is empty")
    return name


def _plain(frame: Frame) -> None:
    if frame.flags:
        raise BusProtocolError(f"frame flags 0x{frame.flags:04x}, expected 0")
    if frame.request_id:
        raise BusProtocolError(f"frame request id {frame.request_id}, expected 0")


def decode_datagram(data: bytes) -> Datagram:
    """The discovery message one datagram carries: exactly one frame, nothing after it.
    Raises BusProtocolError for anything else (too long, a broken frame, an unknown
    type, a bad field)."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise BusProtocolError(
            f"datagram of {len(data)} bytes exceeds the limit of {MAX_DATAGRAM_BYTES}"
        )
    decoder = FrameDecoder(MAX_DATAGRAM_BYTES - framing.HEADER_BYTES)
    decoder.feed(data)
    try:
        frame = decoder.next_event()
    except FrameError as exc:
        raise BusProtocolError(f"datagram: {exc}") from exc
    if frame is NEED_DATA:
        raise BusProtocolError(f"datagram of {len(data)} bytes holds no whole frame")
    if decoder.buffered_bytes:
        raise BusProtocolError(f"datagram has {decoder.buffered_bytes} bytes past its frame")
    _plain(frame)
    try:
        kind = DiscoveryType(frame.type)
    except ValueError:
        raise BusProtocolError(f"unknown discovery type 0x{frame.type:02x}") from None
    reader = FieldReader(frame.payload, kind.name)
    (server_id,) = reader.unpack(_U64, "server id")
    if server_id == 0:
        raise BusProtocolError("server id 0 is reserved")
    channel = _read_channel(reader)
    message: Datagram
    match kind:
        case DiscoveryType.QUERY:
            message = Query(server_id=server_id, channel=channel)
        case DiscoveryType.ADVERTISE:
            (flags,) = reader.unpack(_U8, "flags")
            if flags & ~ADVERTISE_RELIABLE:
                raise BusProtocolError(f"ADVERTISE flags 0x{flags:02x} set reserved bits")
            message = Advertise(
                server_id=server_id, channel=channel, reliable=bool(flags & ADVERTISE_RELIABLE)
            )
        case DiscoveryType.SUBSCRIBE:
            (port,) = reader.unpack(_U16, "bridge port")
            if port == 0:
                raise BusProtocolError("bridge port 0 outside 1..65535")
            message = Subscribe(server_id=server_id, channel=channel, port=port)
        case _:
            assert_never(kind)
    reader.end()
    return message


def decode_bridge(frame: Frame) -> BridgeEvent:
    """The bridge message a frame carries. Raises BusProtocolError for an unknown type,
    non-zero flags or request id, or a payload that is not that message's."""
    _plain(frame)
    try:
        kind = BridgeType(frame.type)
    except ValueError:
        raise BusProtocolError(f"unknown bridge frame type 0x{frame.type:02x}") from None
    reader = FieldReader(frame.payload, kind.name)
    event: BridgeEvent
    match kind:
        case BridgeType.SUBSCRIBED:
            channel = _read_channel(reader)
            type_ = reader.str8(MAX_TYPE_BYTES, "type")
            slot_size, num_slots, flags = reader.unpack(_SUBSCRIBED_TAIL, "channel details")
            check_range(slot_size, 0, MAX_SLOT_BYTES, "slot size")
            check_range(num_slots, 0, MAX_NUM_SLOTS, "num_slots")
            if flags & ~_SUBSCRIBED_FLAGS:
                raise BusProtocolError(f"SUBSCRIBED flags 0x{flags:04x} set reserved bits")
            event = Subscribed(
                channel=channel, type=type_, slot_size=slot_size, num_slots=num_slots,
                reliable=bool(flags & SUBSCRIBED_RELIABLE),
                fixed_size=bool(flags & SUBSCRIBED_FIXED_SIZE),
                checksum=bool(flags & SUBSCRIBED_CHECKSUM),
            )  # fmt: skip
        case BridgeType.MESSAGE | BridgeType.HELD_MESSAGE:
            (ordinal,) = reader.unpack(_U64, "ordinal")
            if ordinal == 0:
                raise BusProtocolError("ordinal 0 is reserved")
            data = reader.rest()
            if not data:
                raise BusProtocolError(f"{kind.name} carries no bytes: a message has 1 or more")
            event = BridgedMessage(ordinal=ordinal, data=data, held=kind is BridgeType.HELD_MESSAGE)
        case BridgeType.RETIRED:
            event = Retired(ordinals=_read_ordinals(reader.rest()))
        case BridgeType.ERROR:
            code = reader.str8(_ERROR_CODE_BYTES, "error code")
            if not _valid_code(code):
                raise BusProtocolError(f"error code {code!r} is not 1..32 of A-Z and _")
            raw = reader.rest()
            if len(raw) > MAX_ERROR_BYTES:
                raise BusProtocolError(
                    f"error message is {len(raw)} bytes, the limit is {MAX_ERROR_BYTES}"
                )
            event = BridgeError(code=code, message=raw.decode("utf-8", errors="replace"))
        case _:
            assert_never(kind)
    reader.end()
    return event


def _read_ordinals(raw: bytes) -> tuple[int, ...]:
    count, extra = divmod(len(raw), _U64.size)
    if extra:
        raise BusProtocolError(
            f"RETIRED payload of {len(raw)} bytes is not a whole number of 8-byte ordinals"
        )
    if not 1 <= count <= MAX_RETIRED_ORDINALS:
        raise BusProtocolError(f"RETIRED carries 1..{MAX_RETIRED_ORDINALS} ordinals, not {count}")
    ordinals = tuple(value for (value,) in _U64.iter_unpack(raw))
    if 0 in ordinals:
        raise BusProtocolError("ordinal 0 is reserved")
    return ordinals


def bridge_stream() -> MessageStream[BridgeEvent]:
    """Incoming bridge frames to events, under MAX_BRIDGE_PAYLOAD_BYTES; the core
    MessageStream contract (a FrameError means framing is lost: close)."""
    return MessageStream(decode_bridge, MAX_BRIDGE_PAYLOAD_BYTES)
