"""The codec of the bus control protocol's replies, Reply values to frames and back: pure
sans-I/O (bus library layer); the server encodes, `Client` decodes. Descriptors travel
beside the frames (SCM_RIGHTS), described by each reply's fd table."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Final, TypeVar, assert_never

from postoffice.bus.errors import BusProtocolError
from postoffice.bus.fields import FieldReader, check_range, encode_str8, encode_text
from postoffice.bus.wire.messages import (
    CHANNEL_FLAGS,
    CHANNEL_VIRTUAL,
    MAX_CHANNEL_NAME_BYTES,
    MAX_FDS,
    MAX_MESSAGE_BYTES,
    MAX_NUM_SLOTS,
    MAX_PATH_BYTES,
    MAX_RECORDS,
    MAX_REPLY_BYTES,
    MAX_SLOT_BYTES,
    MAX_TYPE_BYTES,
    MAX_USER_ID,
    ChannelInfo,
    ChannelInfoReply,
    ChannelStatsRecord,
    ChannelStatsReply,
    ErrorReply,
    FdEntry,
    FdRole,
    FrameType,
    GrantReply,
    InitReply,
    OkReply,
    Reply,
    TriggersReply,
    encode_channel,
    frame_kind,
    read_channel,
    read_mux,
)
from postoffice.core import framing
from postoffice.core.errors import FrameError
from postoffice.core.framing import Frame, MessageStream

_U8: Final = struct.Struct(">B")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_FD_ENTRY: Final = struct.Struct(">BH")  # role, id
_GRANT_HEAD: Final = struct.Struct(">HBIIH")  # channel id, user id, num_slots, slot size, flags
_INFO_BODY: Final = struct.Struct(">HIIHBBBB")
_STATS_BODY: Final = struct.Struct(">HQQQQQIIBB")
_SESSION_BYTES: Final = 8
_R = TypeVar("_R")
_CODE: Final = re.compile(r"[A-Z][A-Z_]{0,31}")


# -- encoding -------------------------------------------------------------------------


def _fd_table(entries: tuple[FdEntry, ...]) -> bytes:
    if len(entries) > MAX_FDS:
        raise BusProtocolError(f"{len(entries)} descriptors in one reply, the limit is {MAX_FDS}")
    packed = [_FD_ENTRY.pack(int(e.role), check_range(e.id, 0, 0xFFFF, "fd id")) for e in entries]
    return _U8.pack(len(entries)) + b"".join(packed)


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
        encode_channel(info.name, required=True)
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
    return encode_channel(stats.name, required=True) + _STATS_BODY.pack(
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
    kind = frame_kind(frame, request=False)
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
        case _:  # pragma: no cover - frame_kind admits replies only
            raise BusProtocolError(f"frame type 0x{frame.type:02x} is not a reply")
    reader.end()
    return reply


def _read_records(reader: FieldReader, read: Callable[[FieldReader], _R]) -> tuple[_R, ...]:
    (count,) = reader.unpack(_U16, "record count")
    if count > MAX_RECORDS:
        raise BusProtocolError(f"{count} records, the limit is {MAX_RECORDS}")
    return tuple(read(reader) for _ in range(count))


def _read_info(reader: FieldReader) -> ChannelInfo:
    name = read_channel(reader, required=True)
    type_ = reader.str8(MAX_TYPE_BYTES, "channel type")
    channel_id, slots, size, flags, pubs, rpubs, subs, rsubs = reader.unpack(_INFO_BODY, "info")
    mux = read_mux(reader) if flags & CHANNEL_VIRTUAL else ""
    return ChannelInfo(
        name=name, type=type_, channel_id=channel_id, num_slots=slots, slot_size=size,
        flags=flags, publishers=pubs, reliable_publishers=rpubs, subscribers=subs,
        reliable_subscribers=rsubs, mux=mux,
    )  # fmt: skip


def _read_stats(reader: FieldReader) -> ChannelStatsRecord:
    name = read_channel(reader, required=True)
    channel_id, messages, size, largest, drops, last, buffers, slot_size, pubs, subs = (
        reader.unpack(_STATS_BODY, "stats")
    )
    return ChannelStatsRecord(
        name=name, channel_id=channel_id, messages=messages, bytes=size,
        max_message_bytes=largest, drops=drops, last_ordinal=last, num_buffers=buffers,
        slot_size=slot_size, publishers=pubs, subscribers=subs,
    )  # fmt: skip


def reply_stream() -> MessageStream[Reply]:
    """The client's side of a connection: bytes in, (request id, Reply) out."""
    return MessageStream(decode_reply, MAX_REPLY_BYTES)
