"""The bus control protocol's vocabulary, pure sans-I/O (bus library layer): limits, frame
types, option and flag bits, the requests and replies as values, and the field checks both
directions share; the codecs are `requests` and `replies`."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from postoffice.bus.errors import BusProtocolError
from postoffice.bus.fields import FieldReader, encode_str8
from postoffice.core import framing
from postoffice.core.framing import Frame

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

#: Frame types from here on are replies.
FIRST_REPLY: Final = 0x80


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


# -- fields both directions share ------------------------------------------------------


def encode_channel(value: str, *, required: bool) -> bytes:
    """A channel name as str8. Raises BusProtocolError for an empty required name or a
    name over MAX_CHANNEL_NAME_BYTES."""
    if required and not value:
        raise BusProtocolError("channel name is empty")
    return encode_str8(value, MAX_CHANNEL_NAME_BYTES, "channel name")


def read_channel(reader: FieldReader, *, required: bool) -> str:
    """A str8 channel name. Raises BusProtocolError as encode_channel does."""
    name = reader.str8(MAX_CHANNEL_NAME_BYTES, "channel name")
    if required and not name:
        raise BusProtocolError("channel name is empty")
    return name


def read_mux(reader: FieldReader) -> str:
    """A str8 mux name (never empty). Raises BusProtocolError."""
    name = reader.str8(MAX_CHANNEL_NAME_BYTES, "mux name")
    if not name:
        raise BusProtocolError("mux name is empty")
    return name


def frame_kind(frame: Frame, *, request: bool) -> FrameType:
    """A frame's known type, checked to be a request (or a reply) with flags 0. Raises
    BusProtocolError."""
    if frame.flags:
        raise BusProtocolError(f"frame flags 0x{frame.flags:04x}, expected 0")
    try:
        kind = FrameType(frame.type)
    except ValueError:
        raise BusProtocolError(f"unknown frame type 0x{frame.type:02x}") from None
    if (kind < FIRST_REPLY) != request:
        side = "request" if request else "reply"
        raise BusProtocolError(f"frame type 0x{frame.type:02x} is not a {side}")
    return kind
