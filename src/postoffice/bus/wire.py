"""The bus control protocol: typed requests and replies on core frames, no I/O.

Pure sans-I/O (bus library layer): the server and `postoffice.bus.Client` encode and
decode with it; descriptors travel beside the frames (SCM_RIGHTS), described by each
reply's fd table. The byte layout is docs/protocols/bus.md.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar, assert_never

from postoffice.bus.errors import BusProtocolError
from postoffice.bus.fields import FieldReader, check_range, encode_str8, encode_text
from postoffice.core import framing
from postoffice.core.errors import FrameError
from postoffice.core.framing import Frame, MessageStream

# -- limits ---------------------------------------------------------------------------

#: A request's payload: the largest (CREATE_*) is under 220 bytes; anything bigger is
#: garbage, refused before it is buffered.
MAX_REQUEST_BYTES: Final = 1024
#: A reply's payload: CHANNEL_INFO for every channel of a server (1024 x ~220 bytes).
MAX_REPLY_BYTES: Final = framing.MAX_PAYLOAD_BYTES
#: Channel names and types: what the CCB holds.
MAX_CHANNEL_NAME_BYTES: Final = 128
MAX_TYPE_BYTES: Final = 64
#: A client's name, for logs and CHANNEL_INFO only.
MAX_CLIENT_NAME_BYTES: Final = 64
#: The shared-memory directory's path in INIT_OK.
MAX_PATH_BYTES: Final = 4096
#: An error reply's message, in bytes of UTF-8.
MAX_MESSAGE_BYTES: Final = 1024
#: Descriptors one reply carries: the kernel passes at most 253 in one message.
MAX_FDS: Final = 253
#: Records in one CHANNEL_INFO or CHANNEL_STATS reply: one per channel id.
MAX_RECORDS: Final = 1024
#: Slots a channel may have, and a message's size (the layout's limits).
MAX_NUM_SLOTS: Final = 65536
MAX_SLOT_BYTES: Final = 1 << 30
#: A subscriber's max_active_messages.
MAX_ACTIVE: Final = 4096
#: User ids of a channel: one bit each of a u64.
MAX_USER_ID: Final = 63
#: A message's metadata area (the layout's limit).
MAX_METADATA_BYTES: Final = 256


#: The server's own channels: every channel (on each change) and their statistics
#: (every few seconds), as JSON. Names under /bus/ are the server's: clients subscribe to
#: them but create none.
DIRECTORY_CHANNEL: Final = "/bus/directory"
STATS_CHANNEL: Final = "/bus/stats"
RESERVED_PREFIX: Final = "/bus/"


class FrameType(enum.IntEnum):
    """Frame types of the bus protocol: requests below 0x80, replies from 0x80."""

    INIT = 0x01
    CREATE_PUBLISHER = 0x02
    CREATE_SUBSCRIBER = 0x03
    REMOVE_PUBLISHER = 0x04
    REMOVE_SUBSCRIBER = 0x05
    GET_TRIGGERS = 0x06
    GET_CHANNEL_INFO = 0x07
    GET_CHANNEL_STATS = 0x08
    REOPEN_SUBSCRIBER = 0x09
    INIT_OK = 0x81
    PUBLISHER_OK = 0x82
    SUBSCRIBER_OK = 0x83
    OK = 0x84
    TRIGGERS = 0x85
    CHANNEL_INFO = 0x86
    CHANNEL_STATS = 0x87
    ERROR = 0xFF


class FdRole(enum.IntEnum):
    """What one passed descriptor is (a reply's fd table says, for each fd in order)."""

    SCB = 1
    CCB = 2
    BCB = 3
    #: A buffer file; the entry's id is the buffer index.
    BUFFER = 4
    #: The eventfd of the user the reply creates (a subscriber's, a reliable publisher's).
    OWN_TRIGGER = 5
    #: A subscriber's eventfd; the id is its subscriber id.
    SUBSCRIBER_TRIGGER = 6
    #: A reliable publisher's eventfd; the id is its publisher id.
    PUBLISHER_TRIGGER = 7
    #: The read end of the new publisher's retirement pipe; the id is its publisher id.
    RETIREMENT = 8
    #: The write end of a publisher's retirement pipe; the id is its publisher id.
    RETIRER = 9


#: CREATE_PUBLISHER option bits; the rest are reserved (must be 0: a later version uses
#: them to announce more fields appended to the request). A set bit that announces a
#: field (OPT_METADATA) puts that field after the fixed ones, in bit order.
OPT_RELIABLE: Final = 0x0001
OPT_FIXED_SIZE: Final = 0x0002
OPT_CHECKSUM: Final = 0x0004
#: A u16 metadata size (bytes per message, 1..MAX_METADATA_BYTES) follows.
OPT_METADATA: Final = 0x0008
#: A str8 mux name (1..128 bytes) follows: the channel is a virtual channel of that mux.
OPT_MUX: Final = 0x0010
#: The publisher wants retirement notifications (no field follows; never with OPT_MUX).
OPT_RETIREMENT: Final = 0x0020
PUBLISHER_OPTIONS: Final = (
    OPT_RELIABLE | OPT_FIXED_SIZE | OPT_CHECKSUM | OPT_METADATA | OPT_MUX | OPT_RETIREMENT
)
SUBSCRIBER_OPTIONS: Final = OPT_RELIABLE | OPT_MUX

#: Channel flags in replies and records (the CCB's flags word).
CHANNEL_FIXED_SIZE: Final = 0x0001
CHANNEL_CHECKSUM: Final = 0x0002
#: Made by a subscriber, no publisher yet: its first publisher may give it new files.
CHANNEL_PLACEHOLDER: Final = 0x0004
#: A multiplexer: virtual channels share its slots and buffers.
CHANNEL_MUX: Final = 0x0010
#: A virtual channel (CHANNEL_INFO only): a str8 mux name follows its record.
CHANNEL_VIRTUAL: Final = 0x0020
CHANNEL_FLAGS: Final = (
    CHANNEL_FIXED_SIZE | CHANNEL_CHECKSUM | CHANNEL_PLACEHOLDER | CHANNEL_MUX | CHANNEL_VIRTUAL
)

_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")
_CREATE_TAIL: Final = struct.Struct(">IIH")  # slot_size, num_slots, options
_U32: Final = struct.Struct(">I")
_FD_ENTRY: Final = struct.Struct(">BH")  # role, id
_GRANT_HEAD: Final = struct.Struct(">HBIIH")  # channel id, user id, num_slots, slot size, flags
_INFO_BODY: Final = struct.Struct(">HIIHBBBB")
_STATS_BODY: Final = struct.Struct(">HQQQQQIIBB")
_SESSION_BYTES: Final = 8
_R = TypeVar("_R")
_FIRST_REPLY: Final = 0x80
_CODE: Final = re.compile(r"[A-Z][A-Z_]{0,31}")


# -- messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class InitRequest:
    """The first request of a connection: who the client is."""

    client_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatePublisherRequest:
    """Register a publisher, creating the channel if it does not exist. A `num_slots` or
    `slot_size` of 0 takes the channel's (or the server's default for a new channel)."""

    channel: str
    type: str = ""
    slot_size: int = 0
    num_slots: int = 0
    reliable: bool = False
    fixed_size: bool = False
    checksum: bool = False
    #: Bytes of metadata each message may carry (a new channel's; must match an old one's).
    metadata_bytes: int = 0
    #: The multiplexer whose virtual channel `channel` is ("": a channel of its own).
    mux: str = ""
    #: Whether the publisher wants a retirement pipe (not on a virtual channel).
    retirement: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateSubscriberRequest:
    """Register a subscriber, creating the channel with these parameters (0: defaults)
    if it does not exist. An empty `type` accepts any."""

    channel: str
    type: str = ""
    slot_size: int = 0
    num_slots: int = 0
    reliable: bool = False
    max_active: int = 1
    #: The multiplexer whose virtual channel `channel` is ("": a channel of its own).
    mux: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RemovePublisherRequest:
    """Unregister one of this connection's publishers."""

    channel: str
    user_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveSubscriberRequest:
    """Unregister one of this connection's subscribers."""

    channel: str
    user_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GetTriggersRequest:
    """The eventfds of a channel's subscribers and reliable publishers, now."""

    channel: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GetChannelInfoRequest:
    """What a channel is (or every channel, for an empty name)."""

    channel: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class GetChannelStatsRequest:
    """A channel's statistics (or every channel's, for an empty name)."""

    channel: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReopenSubscriberRequest:
    """The current files of the channel of one of this connection's subscribers (after
    its placeholder channel was given new files by its first publisher)."""

    channel: str
    user_id: int


Request = (
    InitRequest
    | CreatePublisherRequest
    | CreateSubscriberRequest
    | RemovePublisherRequest
    | RemoveSubscriberRequest
    | GetTriggersRequest
    | GetChannelInfoRequest
    | GetChannelStatsRequest
    | ReopenSubscriberRequest
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FdEntry:
    """What the descriptor at this entry's position in the reply's fds is."""

    role: FdRole
    id: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class InitReply:
    """The session: its id (16 hex digits), this client's id, where the files are, and
    the fd table (the SCB)."""

    session: str
    client_id: int
    directory: str
    fds: tuple[FdEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantReply:
    """A publisher or subscriber registered: its channel, its user id, the channel's
    shape, and the fd table (CCB, BCB, buffers, its own trigger, the others')."""

    publisher: bool
    channel_id: int
    user_id: int
    num_slots: int
    slot_size: int
    flags: int
    type: str
    fds: tuple[FdEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OkReply:
    """Done (a removal)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggersReply:
    """A channel's current subscriber and reliable-publisher eventfds."""

    channel_id: int
    fds: tuple[FdEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelInfo:
    """What a channel is, and who uses it."""

    name: str
    type: str
    channel_id: int
    num_slots: int
    slot_size: int
    flags: int
    publishers: int
    reliable_publishers: int
    subscribers: int
    reliable_subscribers: int
    #: A virtual channel's multiplexer (flags then has CHANNEL_VIRTUAL); "" otherwise.
    mux: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelStatsRecord:
    """A channel's statistics at one moment."""

    name: str
    channel_id: int
    messages: int
    bytes: int
    max_message_bytes: int
    drops: int
    last_ordinal: int
    num_buffers: int
    slot_size: int
    publishers: int
    subscribers: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelInfoReply:
    """Channel records, in channel-id order."""

    channels: tuple[ChannelInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelStatsReply:
    """Channel statistics, in channel-id order."""

    channels: tuple[ChannelStatsRecord, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """A refused request: a code (the error's `wire_code`) and a message."""

    code: str
    message: str


Reply = (
    InitReply
    | GrantReply
    | OkReply
    | TriggersReply
    | ChannelInfoReply
    | ChannelStatsReply
    | ErrorReply
)


# -- field writers --------------------------------------------------------------------


def _channel(value: str, *, required: bool) -> bytes:
    if required and not value:
        raise BusProtocolError("channel name is empty")
    return encode_str8(value, MAX_CHANNEL_NAME_BYTES, "channel name")


def _fd_table(entries: tuple[FdEntry, ...]) -> bytes:
    if len(entries) > MAX_FDS:
        raise BusProtocolError(f"{len(entries)} descriptors in one reply, the limit is {MAX_FDS}")
    packed = [_FD_ENTRY.pack(int(e.role), check_range(e.id, 0, 0xFFFF, "fd id")) for e in entries]
    return _U8.pack(len(entries)) + b"".join(packed)


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
            return kind, _channel(request.channel, required=True) + user
        case GetTriggersRequest():
            return FrameType.GET_TRIGGERS, _channel(request.channel, required=True)
        case GetChannelInfoRequest():
            return FrameType.GET_CHANNEL_INFO, _channel(request.channel, required=False)
        case GetChannelStatsRequest():
            return FrameType.GET_CHANNEL_STATS, _channel(request.channel, required=False)
        case _:
            assert_never(request)


def _create(request: CreatePublisherRequest | CreateSubscriberRequest, options: int) -> bytes:
    return b"".join(
        (
            _channel(request.channel, required=True),
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


def _reply_payload(reply: Reply) -> tuple[FrameType, bytes]:
    match reply:
        case InitReply():
            session = bytes.fromhex(reply.session)
            if len(session) != _SESSION_BYTES:
                raise BusProtocolError(f"session id {reply.session!r} is not 8 bytes")
            directory = encode_text(reply.directory, MAX_PATH_BYTES, "directory")
            body = (
                session
                + _U32.pack(check_range(reply.client_id, 0, 0xFFFF_FFFF, "client id"))
                + _U16.pack(len(directory))
                + directory
            )
            return FrameType.INIT_OK, body + _fd_table(reply.fds)
        case GrantReply():
            head = _GRANT_HEAD.pack(
                check_range(reply.channel_id, 0, 0xFFFF, "channel id"),
                check_range(reply.user_id, 0, MAX_USER_ID, "user id"),
                check_range(reply.num_slots, 1, MAX_NUM_SLOTS, "num_slots"),
                check_range(reply.slot_size, 1, MAX_SLOT_BYTES, "slot_size"),
                check_range(reply.flags, 0, CHANNEL_FLAGS, "channel flags"),
            )
            kind = FrameType.PUBLISHER_OK if reply.publisher else FrameType.SUBSCRIBER_OK
            body = head + encode_str8(reply.type, MAX_TYPE_BYTES, "channel type")
            return kind, body + _fd_table(reply.fds)
        case OkReply():
            return FrameType.OK, b""
        case TriggersReply():
            head = _U16.pack(check_range(reply.channel_id, 0, 0xFFFF, "channel id"))
            return FrameType.TRIGGERS, head + _fd_table(reply.fds)
        case ChannelInfoReply():
            return FrameType.CHANNEL_INFO, _records(reply.channels, _info_record)
        case ChannelStatsReply():
            return FrameType.CHANNEL_STATS, _records(reply.channels, _stats_record)
        case ErrorReply():
            if not _CODE.fullmatch(reply.code):
                raise BusProtocolError(f"error code {reply.code!r} is not A-Z and _")
            message = reply.message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
            return FrameType.ERROR, encode_str8(reply.code, 32, "error code") + message
        case _:
            assert_never(reply)


def _records(records: tuple[_R, ...], pack: Callable[[_R], bytes]) -> bytes:
    if len(records) > MAX_RECORDS:
        raise BusProtocolError(f"{len(records)} records, the limit is {MAX_RECORDS}")
    return _U16.pack(len(records)) + b"".join(pack(record) for record in records)


def _info_record(info: ChannelInfo) -> bytes:
    return (
        _channel(info.name, required=True)
        + encode_str8(info.type, MAX_TYPE_BYTES, "channel type")
        + _INFO_BODY.pack(
            info.channel_id,
            info.num_slots,
            info.slot_size,
            info.flags,
            info.publishers,
            info.reliable_publishers,
            info.subscribers,
            info.reliable_subscribers,
        )
        + (
            encode_str8(info.mux, MAX_CHANNEL_NAME_BYTES, "mux name")
            if info.flags & CHANNEL_VIRTUAL
            else b""
        )
    )


def _stats_record(stats: ChannelStatsRecord) -> bytes:
    return _channel(stats.name, required=True) + _STATS_BODY.pack(
        stats.channel_id, stats.messages, stats.bytes, stats.max_message_bytes, stats.drops,
        stats.last_ordinal, stats.num_buffers, stats.slot_size, stats.publishers,
        stats.subscribers,
    )  # fmt: skip


def encode_reply(request_id: int, reply: Reply) -> bytes:
    """The frame of `reply` answering `request_id` (0: a connection's last word). Raises
    BusProtocolError for a field out of its range."""
    kind, payload = _reply_payload(reply)
    try:
        return framing.encode_parts(kind, 0, request_id, payload)
    except (FrameError, struct.error) as exc:
        raise BusProtocolError(f"cannot encode reply: {exc}") from exc


# -- decoding -------------------------------------------------------------------------


def _known(frame: Frame, *, request: bool) -> FrameType:
    if frame.flags:
        raise BusProtocolError(f"frame flags 0x{frame.flags:04x}, expected 0")
    try:
        kind = FrameType(frame.type)
    except ValueError:
        raise BusProtocolError(f"unknown frame type 0x{frame.type:02x}") from None
    if (kind < _FIRST_REPLY) != request:
        side = "request" if request else "reply"
        raise BusProtocolError(f"frame type 0x{frame.type:02x} is not a {side}")
    return kind


def _options(value: int, allowed: int, what: str) -> int:
    if value & ~allowed:
        raise BusProtocolError(f"{what} options 0x{value:04x} set reserved bits")
    return value


def decode_request(frame: Frame) -> Request:
    """The request a frame carries. Raises BusProtocolError for an unknown type, non-zero
    flags, or a payload that is not that request's (short, long, a bad field)."""
    kind = _known(frame, request=True)
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
            mux = _read_mux(reader) if options & OPT_MUX else ""
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
            mux = _read_mux(reader) if options & OPT_MUX else ""
            request = CreateSubscriberRequest(
                channel=name, type=type_, slot_size=slot_size, num_slots=num_slots,
                reliable=bool(options & OPT_RELIABLE), max_active=active, mux=mux,
            )  # fmt: skip
        case FrameType.REMOVE_PUBLISHER | FrameType.REMOVE_SUBSCRIBER | FrameType.REOPEN_SUBSCRIBER:
            name = _read_channel(reader, required=True)
            user = check_range(reader.u8("user id"), 0, MAX_USER_ID, "user id")
            if kind is FrameType.REMOVE_PUBLISHER:
                request = RemovePublisherRequest(channel=name, user_id=user)
            elif kind is FrameType.REMOVE_SUBSCRIBER:
                request = RemoveSubscriberRequest(channel=name, user_id=user)
            else:
                request = ReopenSubscriberRequest(channel=name, user_id=user)
        case FrameType.GET_TRIGGERS:
            request = GetTriggersRequest(channel=_read_channel(reader, required=True))
        case FrameType.GET_CHANNEL_INFO:
            request = GetChannelInfoRequest(channel=_read_channel(reader, required=False))
        case FrameType.GET_CHANNEL_STATS:
            request = GetChannelStatsRequest(channel=_read_channel(reader, required=False))
        case _:  # pragma: no cover - _known admits requests only
            raise BusProtocolError(f"frame type 0x{frame.type:02x} is not a request")
    reader.end()
    return request


def _read_channel(reader: FieldReader, *, required: bool) -> str:
    name = reader.str8(MAX_CHANNEL_NAME_BYTES, "channel name")
    if required and not name:
        raise BusProtocolError("channel name is empty")
    return name


def _read_mux(reader: FieldReader) -> str:
    name = reader.str8(MAX_CHANNEL_NAME_BYTES, "mux name")
    if not name:
        raise BusProtocolError("mux name is empty")
    return name


def _read_create(reader: FieldReader) -> tuple[str, str, int, int, int]:
    name = _read_channel(reader, required=True)
    type_ = reader.str8(MAX_TYPE_BYTES, "channel type")
    slot_size, num_slots, options = reader.unpack(_CREATE_TAIL, "channel parameters")
    check_range(slot_size, 0, MAX_SLOT_BYTES, "slot_size")
    check_range(num_slots, 0, MAX_NUM_SLOTS, "num_slots")
    return name, type_, slot_size, num_slots, options


def _read_fds(reader: FieldReader) -> tuple[FdEntry, ...]:
    count = reader.u8("fd count")
    if count > MAX_FDS:
        raise BusProtocolError(f"{count} descriptors in one reply, the limit is {MAX_FDS}")
    entries: list[FdEntry] = []
    for index in range(count):
        role, id_ = reader.unpack(_FD_ENTRY, f"fd entry {index}")
        try:
            entries.append(FdEntry(role=FdRole(role), id=id_))
        except ValueError:
            raise BusProtocolError(f"fd entry {index} has unknown role {role}") from None
    return tuple(entries)


def decode_reply(frame: Frame) -> Reply:
    """The reply a frame carries. Raises BusProtocolError as decode_request does."""
    kind = _known(frame, request=False)
    reader = FieldReader(frame.payload, kind.name)
    reply: Reply
    match kind:
        case FrameType.INIT_OK:
            session = reader.take(_SESSION_BYTES, "session id").hex()
            (client_id,) = reader.unpack(_U32, "client id")
            (length,) = reader.unpack(_U16, "directory length")
            directory = reader.text(length, MAX_PATH_BYTES, "directory")
            reply = InitReply(
                session=session, client_id=client_id, directory=directory, fds=_read_fds(reader)
            )
        case FrameType.PUBLISHER_OK | FrameType.SUBSCRIBER_OK:
            channel_id, user, num_slots, slot_size, flags = reader.unpack(_GRANT_HEAD, "grant")
            check_range(user, 0, MAX_USER_ID, "user id")
            check_range(num_slots, 1, MAX_NUM_SLOTS, "num_slots")
            check_range(slot_size, 1, MAX_SLOT_BYTES, "slot_size")
            check_range(flags, 0, CHANNEL_FLAGS, "channel flags")
            reply = GrantReply(
                publisher=kind is FrameType.PUBLISHER_OK, channel_id=channel_id, user_id=user,
                num_slots=num_slots, slot_size=slot_size, flags=flags,
                type=reader.str8(MAX_TYPE_BYTES, "channel type"), fds=_read_fds(reader),
            )  # fmt: skip
        case FrameType.OK:
            reply = OkReply()
        case FrameType.TRIGGERS:
            (channel_id,) = reader.unpack(_U16, "channel id")
            reply = TriggersReply(channel_id=channel_id, fds=_read_fds(reader))
        case FrameType.CHANNEL_INFO:
            reply = ChannelInfoReply(channels=_read_records(reader, _read_info))
        case FrameType.CHANNEL_STATS:
            reply = ChannelStatsReply(channels=_read_records(reader, _read_stats))
        case FrameType.ERROR:
            code = reader.str8(32, "error code")
            if not _CODE.fullmatch(code):
                raise BusProtocolError(f"error code {code!r} is not A-Z and _")
            message = reader.rest()
            if len(message) > MAX_MESSAGE_BYTES:
                raise BusProtocolError(
                    f"error message is {len(message)} bytes, the limit is {MAX_MESSAGE_BYTES}"
                )
            reply = ErrorReply(code=code, message=message.decode("utf-8", "replace"))
        case _:  # pragma: no cover - _known admits replies only
            raise BusProtocolError(f"frame type 0x{frame.type:02x} is not a reply")
    reader.end()
    return reply


def _read_records(reader: FieldReader, read: Callable[[FieldReader], _R]) -> tuple[_R, ...]:
    (count,) = reader.unpack(_U16, "record count")
    if count > MAX_RECORDS:
        raise BusProtocolError(f"{count} records, the limit is {MAX_RECORDS}")
    return tuple(read(reader) for _ in range(count))


def _read_info(reader: FieldReader) -> ChannelInfo:
    name = _read_channel(reader, required=True)
    type_ = reader.str8(MAX_TYPE_BYTES, "channel type")
    channel_id, slots, size, flags, pubs, rpubs, subs, rsubs = reader.unpack(_INFO_BODY, "info")
    mux = _read_mux(reader) if flags & CHANNEL_VIRTUAL else ""
    return ChannelInfo(
        name=name, type=type_, channel_id=channel_id, num_slots=slots, slot_size=size,
        flags=flags, publishers=pubs, reliable_publishers=rpubs, subscribers=subs,
        reliable_subscribers=rsubs, mux=mux,
    )  # fmt: skip


def _read_stats(reader: FieldReader) -> ChannelStatsRecord:
    name = _read_channel(reader, required=True)
    channel_id, messages, size, largest, drops, last, buffers, slot_size, pubs, subs = (
        reader.unpack(_STATS_BODY, "stats")
    )
    return ChannelStatsRecord(
        name=name, channel_id=channel_id, messages=messages, bytes=size,
        max_message_bytes=largest, drops=drops, last_ordinal=last, num_buffers=buffers,
        slot_size=slot_size, publishers=pubs, subscribers=subs,
    )  # fmt: skip


def request_stream() -> MessageStream[Request]:
    """The server's side of a connection: bytes in, (request id, Request) out; a
    FrameError (framing lost) or a BusProtocolError (one bad request) per STYLE's
    MessageStream contract."""
    return MessageStream(decode_request, MAX_REQUEST_BYTES)


def reply_stream() -> MessageStream[Reply]:
    """The client's side of a connection: bytes in, (request id, Reply) out."""
    return MessageStream(decode_reply, MAX_REPLY_BYTES)
