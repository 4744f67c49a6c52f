"""Streams, kept whole in one store value each: XADD, XLEN, XRANGE, XREVRANGE, XDEL,
XGROUP CREATE | SETID | DESTROY, XREADGROUP, XACK and XINFO STREAM [FULL]. Each an Op."""

# A stored stream is its entries, its counters (last id, largest deleted id, first id,
# entries added, length) and its consumer groups with their pending entries, all in one
# value: every write rewrites all of it, O(entries), so this is for the streams Redis's
# tests and small queues make, not a log of millions (docs/compatibility.md).

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, final

from postoffice.command.encodings import ProtocolClient
from postoffice.command.errors import BusyGroupError, CommandError, NoGroupError, WrongTypeError
from postoffice.command.keyspace import Answer, KeyspaceClient, KeyspaceServer, keyspace_of
from postoffice.command.layout import STREAM
from postoffice.command.lists import decode_items, encode_items
from postoffice.command.ops import WRONG_TYPE, Compute, Entry, Op, Outcome, SetValue
from postoffice.command.strings import SYNTAX, parse_int
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, Map, Reply, bulk

StreamId = tuple[int, int]

_U64: Final = (1 << 64) - 1
MIN_ID: Final[StreamId] = (0, 0)
MAX_ID: Final[StreamId] = (_U64, _U64)
#: Redis's stream-node-max-entries: XINFO's radix-tree-keys counts nodes of this many.
NODE_ENTRIES: Final = 100
#: XINFO STREAM FULL shows this many entries and pending entries unless COUNT says.
FULL_COUNT: Final = 10
#: Redis's SCG_INVALID_ENTRIES_READ: a group whose count of entries read is not known.
UNKNOWN: Final = -1

INVALID_ID: Final = "Invalid stream ID specified as stream command argument"
NOT_GREATER: Final = "The ID specified in XADD is equal or smaller than the target stream top item"
_META: Final = struct.Struct(">QQQQQQqq")
_ID: Final = struct.Struct(">QQ")
_GROUP: Final = struct.Struct(">QQq")
_PENDING: Final = struct.Struct(">QQqq")
_SEEN: Final = struct.Struct(">q")


def format_id(sid: StreamId) -> bytes:
    """An id as Redis writes it: `ms-seq`."""
    return b"%d-%d" % sid


def _u64(raw: bytes) -> int:
    if not raw or not raw.isdigit() or len(raw) > 20 or int(raw) > _U64:
        raise CommandError(INVALID_ID)
    return int(raw)


def parse_id(raw: bytes, missing_seq: int = 0) -> StreamId:
    """`ms-seq`, or `ms` with `missing_seq` as its sequence; CommandError otherwise."""
    ms, dash, seq = raw.partition(b"-")
    return (_u64(ms), _u64(seq) if dash else missing_seq)


def _range_id(raw: bytes, missing_seq: int, *, start: bool) -> StreamId:
    """An XRANGE bound: `-`, `+`, an id (its sequence `missing_seq` when left out), or
    `(id` for the id next to it (exclusive)."""
    if raw == b"-":
        return MIN_ID
    if raw == b"+":
        return MAX_ID
    if raw[:1] != b"(":
        return parse_id(raw, missing_seq)
    sid = parse_id(raw[1:], missing_seq)
    if start:
        if sid == MAX_ID:
            raise CommandError("invalid start ID for the interval")
        return (sid[0] + 1, 0) if sid[1] == _U64 else (sid[0], sid[1] + 1)
    if sid == MIN_ID:
        raise CommandError("invalid end ID for the interval")
    return (sid[0] - 1, _U64) if sid[1] == 0 else (sid[0], sid[1] - 1)


# -- the stored stream ------------------------------------------------------------------------


@final
@dataclass(slots=True, kw_only=True)
class Pending:
    """An entry delivered to a consumer of a group and not acknowledged yet."""

    consumer: bytes
    delivered_at: int  # unix ms
    deliveries: int


@final
@dataclass(slots=True, kw_only=True)
class Group:
    """A consumer group: the last id delivered, how many entries it has read (UNKNOWN when
    that cannot be told), its pending entries and its consumers (name -> last seen, ms)."""

    last_id: StreamId
    entries_read: int = UNKNOWN
    pending: dict[StreamId, Pending] = field(default_factory=dict)
    consumers: dict[bytes, int] = field(default_factory=dict)


@final
class Stream:
    """A stream as decoded from its stored value.

    `entries` maps each id to the entry's fields and values, still encoded
    (`lists.encode_items`), in id order. It is decoded only when first asked for: XADD
    appends to the stored entries as they are (`append`), so adding to a stream costs a
    copy of its bytes, not a decoding of every entry.
    """

    __slots__ = (
        "_chunks",
        "_count",
        "_decoded",
        "entries_added",
        "first_id",
        "groups",
        "last_id",
        "max_deleted",
    )

    def __init__(
        self,
        *,
        entries: dict[StreamId, bytes] | None = None,
        last_id: StreamId = MIN_ID,
        max_deleted: StreamId = MIN_ID,
        first_id: StreamId = MIN_ID,
        entries_added: int = 0,
        groups: dict[bytes, Group] | None = None,
    ) -> None:
        self._decoded: dict[StreamId, bytes] | None = {} if entries is None else entries
        self._chunks: list[bytes] = []  # encoded entries not decoded yet, in order
        self._count = 0  # how many entries `_chunks` holds
        self.last_id = last_id
        self.max_deleted = max_deleted
        self.first_id = first_id
        self.entries_added = entries_added
        self.groups: dict[bytes, Group] = {} if groups is None else groups

    @classmethod
    def stored(cls, entries: bytes, count: int) -> Stream:
        """A stream whose `count` entries are `entries`, encoded, not decoded yet."""
        stream = cls()
        stream._decoded, stream._chunks, stream._count = None, [entries], count
        return stream

    @property
    def entries(self) -> dict[StreamId, bytes]:
        """id -> encoded fields and values, in id order (decoded now if not yet)."""
        if self._decoded is None:
            items = _pairs(b"".join(self._chunks))
            if len(items) != 2 * self._count:
                raise CommandError("stored stream is damaged")
            try:
                ids = [_ID.unpack(sid) for sid in items[::2]]
            except struct.error:
                raise CommandError("stored stream is damaged") from None
            self._decoded = dict(zip(ids, items[1::2], strict=True))
            self._chunks, self._count = [], 0
        return self._decoded

    @property
    def length(self) -> int:
        """How many entries, without decoding them."""
        return self._count if self._decoded is None else len(self._decoded)

    def append(self, sid: StreamId, fields: bytes) -> None:
        """Add the entry `sid` (greater than every id in the stream) with `fields`."""
        if self._decoded is None:
            self._chunks.append(encode_items((_ID.pack(*sid), fields)))
            self._count += 1
        else:
            self._decoded[sid] = fields

    def encoded_entries(self) -> bytes:
        """The entries as stored, encoded once more only when they were decoded."""
        if self._decoded is None:
            return b"".join(self._chunks)
        return encode_items(
            [part for sid, raw in self._decoded.items() for part in (_ID.pack(*sid), raw)]
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stream):
            return NotImplemented
        mine = (self.last_id, self.max_deleted, self.first_id, self.entries_added, self.groups)
        theirs = (
            other.last_id,
            other.max_deleted,
            other.first_id,
            other.entries_added,
            other.groups,
        )
        return mine == theirs and self.entries == other.entries

    __hash__ = None  # type: ignore[assignment]  # mutable: compared, never hashed

    def __repr__(self) -> str:
        return f"<Stream length={self.length} last_id={format_id(self.last_id).decode()}>"


def encode_stream(stream: Stream) -> bytes:
    """A stream's stored value."""
    meta = _META.pack(
        *stream.last_id, *stream.max_deleted, *stream.first_id, stream.entries_added, stream.length
    )
    entries = stream.encoded_entries()
    groups: list[bytes] = []
    for name, group in stream.groups.items():
        pending = encode_items(
            [
                part
                for sid, p in group.pending.items()
                for part in (_PENDING.pack(*sid, p.delivered_at, p.deliveries), p.consumer)
            ]
        )
        consumers = encode_items(
            [part for who, seen in group.consumers.items() for part in (who, _SEEN.pack(seen))]
        )
        groups += [name, _GROUP.pack(*group.last_id, group.entries_read), pending, consumers]
    return encode_items([meta, entries, encode_items(groups)])


def _pairs(raw: bytes) -> list[bytes]:
    items = decode_items(raw)
    if len(items) % 2:
        raise CommandError("stored stream is damaged")
    return items


def decode_stream(raw: bytes) -> Stream:
    """The stream of a stored value; CommandError when it is damaged."""
    try:
        meta, entries_raw, groups_raw = decode_items(raw)
        values = _META.unpack(meta)
        stream = Stream.stored(entries_raw, values[7])
        stream.last_id = (values[0], values[1])
        stream.max_deleted = (values[2], values[3])
        stream.first_id = (values[4], values[5])
        stream.entries_added = values[6]
        groups = decode_items(groups_raw)
        for i in range(0, len(groups), 4):
            name, meta_raw, pending_raw, consumers_raw = groups[i : i + 4]
            ms, seq, read = _GROUP.unpack(meta_raw)
            group = Group(last_id=(ms, seq), entries_read=read)
            pending = _pairs(pending_raw)
            for head, who in zip(pending[::2], pending[1::2], strict=True):
                ms, seq, at, count = _PENDING.unpack(head)
                group.pending[(ms, seq)] = Pending(consumer=who, delivered_at=at, deliveries=count)
            consumers = _pairs(consumers_raw)
            for who, seen in zip(consumers[::2], consumers[1::2], strict=True):
                group.consumers[who] = _SEEN.unpack(seen)[0]
            stream.groups[name] = group
    except (ValueError, struct.error):
        raise CommandError("stored stream is damaged") from None
    return stream


def _stream(entry: Entry | None) -> Stream | None:
    if entry is None:
        return None
    if entry.kind != STREAM:
        raise WrongTypeError(WRONG_TYPE)
    return decode_stream(entry.value)


def _stored(db: int, key: bytes, entry: Entry | None, stream: Stream) -> SetValue:
    at = None if entry is None else entry.expire_at
    return SetValue(db=db, key=key, value=encode_stream(stream), expire_at=at, kind=STREAM)


def _run(
    server: KeyspaceServer, client: KeyspaceClient, keys: Sequence[bytes], compute: Compute
) -> Answer:
    op = Op(reads=tuple((client.db, key) for key in keys), compute=compute, any_kind=True)
    return keyspace_of(server).run(op)


def _entry_reply(sid: StreamId, raw: bytes | None) -> Array:
    """[id, [field, value ...]]; a pending entry deleted since has a nil array of fields."""
    fields = Array(items=None if raw is None else [Bulk(f) for f in decode_items(raw)])
    return Array(items=(Bulk(format_id(sid)), fields))


# -- Redis's bookkeeping of what a group has read (t_stream.c, 7.0) ---------------------------


def _has_tombstones(stream: Stream, start: StreamId | None) -> bool:
    """Whether an entry at or after `start` (None: the first) may have been deleted."""
    if not stream.length or stream.max_deleted == MIN_ID:
        return False
    if stream.first_id > stream.max_deleted:
        return False
    return (start or MIN_ID) <= stream.max_deleted


def _estimate_read(stream: Stream, sid: StreamId) -> int:
    """How many entries come up to `sid` since the stream began, UNKNOWN when deletions
    make it unknowable (Redis's streamEstimateDistanceFromFirstEverEntry)."""
    if not stream.entries_added:
        return 0
    if not stream.length and sid <= stream.last_id:
        return stream.entries_added
    if sid == stream.last_id:
        return stream.entries_added
    if sid > stream.last_id:
        return UNKNOWN
    if stream.max_deleted == MIN_ID or stream.max_deleted < stream.first_id:
        if sid < stream.first_id:
            return stream.entries_added - stream.length
        if sid == stream.first_id:
            return stream.entries_added - stream.length + 1
    return UNKNOWN


def _lag(stream: Stream, group: Group) -> int | None:
    if not stream.entries_added:
        return 0
    if group.entries_read != UNKNOWN and not _has_tombstones(stream, group.last_id):
        return stream.entries_added - group.entries_read
    read = _estimate_read(stream, group.last_id)
    return None if read == UNKNOWN else stream.entries_added - read


def _deliver(stream: Stream, group: Group, sid: StreamId) -> None:
    """Move `group` past `sid`, keeping its count of entries read when it can."""
    if sid <= group.last_id:
        return
    if group.entries_read != UNKNOWN and not _has_tombstones(stream, sid):
        group.entries_read += 1
    elif stream.entries_added:
        group.entries_read = _estimate_read(stream, sid)
    group.last_id = sid


# -- XADD, XLEN, XRANGE, XDEL ----------------------------------------------------------------


def _next_id(stream: Stream, now: int, given: StreamId | None, seq_given: bool) -> StreamId:
    last = stream.last_id
    if given is None:
        if now > last[0]:
            return (now, 0)
        if last[1] == _U64:
            return (last[0] + 1, 0)
        return (last[0], last[1] + 1)
    if not seq_given:  # ms-*
        if given[0] == last[0]:
            if last[1] == _U64:
                raise CommandError(NOT_GREATER)
            return (last[0], last[1] + 1)
        if given[0] < last[0]:
            raise CommandError(NOT_GREATER)
        return (given[0], 0)
    if given <= last:
        raise CommandError(NOT_GREATER)
    return given


def _trim(stream: Stream, maxlen: int | None, minid: StreamId | None) -> None:
    """Drop the oldest entries past MAXLEN, or below MINID (exactly, with `=` or `~`)."""
    if (maxlen is None or stream.length <= maxlen) and (minid is None or stream.first_id >= minid):
        return  # nothing to drop: the entries need no decoding
    ids = list(stream.entries)
    drop = 0
    if maxlen is not None:
        drop = max(len(ids) - maxlen, 0)
    elif minid is not None:
        while drop < len(ids) and ids[drop] < minid:
            drop += 1
    if not drop:
        return
    for sid in ids[:drop]:
        del stream.entries[sid]
    stream.first_id = next(iter(stream.entries), MIN_ID)


def cmd_xadd(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT n]] *|id field value
    [field value ...]: the new entry's id (nil with NOMKSTREAM for a missing key)."""
    db, key = client.db, args[1]
    nomkstream = False
    maxlen: int | None = None
    minid: StreamId | None = None
    approx = limited = False
    given: StreamId | None = None
    seq_given = True
    i = 2
    while i < len(args):
        option = args[i].upper()
        more = len(args) - 1 - i
        if args[i] == b"*":
            break
        if option in (b"MAXLEN", b"MINID") and more:
            approx = False
            if more >= 2 and args[i + 1] in (b"~", b"="):
                approx = args[i + 1] == b"~"
                i += 1
            if option == b"MAXLEN":
                maxlen = parse_int(args[i + 1])
                if maxlen < 0:
                    raise CommandError("The MAXLEN argument must be >= 0.")
            else:
                minid = parse_id(args[i + 1])
            i += 1
        elif option == b"LIMIT" and more:
            if parse_int(args[i + 1]) < 0:
                raise CommandError("The LIMIT argument must be >= 0.")
            limited = True
            i += 1
        elif option == b"NOMKSTREAM":
            nomkstream = True
        else:
            ms, dash, seq = args[i].partition(b"-")
            if dash and seq == b"*":
                given, seq_given = (_u64(ms), 0), False
            else:
                given = parse_id(args[i])
            break
        i += 1
    if limited and maxlen is None and minid is None:
        raise CommandError(
            "syntax error, LIMIT cannot be used without specifying a trimming strategy"
        )
    if limited and not approx:
        raise CommandError("syntax error, LIMIT cannot be used without the special ~ option")
    pairs = args[i + 1 :]
    if len(pairs) < 2 or len(pairs) % 2:
        raise CommandError("wrong number of arguments for 'xadd' command")
    if given == MIN_ID and seq_given:
        raise CommandError("The ID specified in XADD must be greater than 0-0")
    fields = encode_items(pairs)

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        stream = _stream(entry)
        if stream is None:
            if nomkstream:
                return Outcome(reply=NIL)
            stream = Stream()
        if stream.last_id == MAX_ID:
            raise CommandError(
                "The stream has exhausted the last possible ID, unable to add more items"
            )
        sid = _next_id(stream, now, given, seq_given)
        stream.append(sid, fields)
        if stream.length == 1:
            stream.first_id = sid
        stream.last_id = sid
        stream.entries_added += 1
        _trim(stream, maxlen, minid)
        return Outcome(reply=Bulk(format_id(sid)), writes=(_stored(db, key, entry, stream),))

    return _run(server, client, (key,), compute)


def cmd_xlen(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """XLEN key: how many entries, 0 for a missing key."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        stream = _stream(entries[0])
        return Outcome(reply=Integer(value=0 if stream is None else stream.length))

    return _run(server, client, (args[1],), compute)


def _xrange(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes], rev: bool) -> Answer:
    low_raw, high_raw = (args[3], args[2]) if rev else (args[2], args[3])
    low = _range_id(low_raw, 0, start=True)
    high = _range_id(high_raw, _U64, start=False)
    count: int | None = None
    rest = args[4:]
    if rest:
        if len(rest) != 2 or rest[0].upper() != b"COUNT":
            raise CommandError(SYNTAX)
        count = max(parse_int(rest[1]), 0)

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        if count == 0:
            return Outcome(reply=Array(items=None))
        stream = _stream(entries[0])
        found = (
            []
            if stream is None
            else [(sid, raw) for sid, raw in stream.entries.items() if low <= sid <= high]
        )
        if rev:
            found.reverse()
        if count is not None:
            found = found[:count]
        return Outcome(reply=Array(items=[_entry_reply(sid, raw) for sid, raw in found]))

    return _run(server, client, (args[1],), compute)


def cmd_xrange(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """XRANGE key start end [COUNT n]: the entries from start to end (`-`, `+`, an id, or
    `(id` exclusive), each as [id, [field, value ...]]."""
    return _xrange(server, client, args, rev=False)


def cmd_xrevrange(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """XREVRANGE key end start [COUNT n]: XRANGE, newest first."""
    return _xrange(server, client, args, rev=True)


def cmd_xdel(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """XDEL key id [id ...]: how many of the entries existed (and are deleted)."""
    db, key = client.db, args[1]
    ids = [parse_id(raw) for raw in args[2:]]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        stream = _stream(entry)
        if stream is None:
            return Outcome(reply=Integer(value=0))
        first = next(iter(stream.entries), None)
        deleted = 0
        for sid in ids:
            if stream.entries.pop(sid, None) is not None:
                deleted += 1
                stream.max_deleted = max(stream.max_deleted, sid)
        if not deleted:
            return Outcome(reply=Integer(value=0))
        if not stream.entries:
            stream.first_id = MIN_ID
        elif first not in stream.entries:
            stream.first_id = next(iter(stream.entries))
        return Outcome(reply=Integer(value=deleted), writes=(_stored(db, key, entry, stream),))

    return _run(server, client, (key,), compute)


# -- consumer groups --------------------------------------------------------------------------


def _entries_read_option(args: list[bytes]) -> int:
    if len(args) != 2 or args[0].upper() != b"ENTRIESREAD":
        raise CommandError(SYNTAX)
    value = parse_int(args[1])
    if value < 0 and value != UNKNOWN:
        raise CommandError("value for ENTRIESREAD must be positive or -1")
    return value


def _no_group(key: bytes, group: bytes) -> NoGroupError:
    return NoGroupError(
        f"No such consumer group '{group.decode('utf-8', 'replace')}' "
        f"for key name '{key.decode('utf-8', 'replace')}'"
    )


def cmd_xgroup(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """XGROUP CREATE key group id|$ [MKSTREAM] [ENTRIESREAD n] | SETID key group id|$
    [ENTRIESREAD n] | DESTROY key group."""
    sub = args[1].upper()
    if sub == b"CREATE" and 5 <= len(args) <= 8:
        mkstream = len(args) > 5 and args[5].upper() == b"MKSTREAM"
        rest = args[6:] if mkstream else args[5:]
        read = _entries_read_option(rest) if rest else UNKNOWN
    elif sub == b"SETID" and len(args) in (5, 7):
        read = _entries_read_option(args[5:]) if len(args) == 7 else UNKNOWN
    elif sub == b"DESTROY" and len(args) == 4:
        read = UNKNOWN
    else:
        raise CommandError(
            f"unknown subcommand or wrong number of arguments for "
            f"'{args[1].decode('utf-8', 'replace')}'. Try XGROUP HELP."
        )
    db, key, name = client.db, args[2], args[3]
    wanted = None if sub == b"DESTROY" or args[4] == b"$" else parse_id(args[4])

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        stream = _stream(entry)
        if stream is None:
            if sub != b"CREATE" or not mkstream:
                raise CommandError(
                    "The XGROUP subcommand requires the key to exist. Note that for CREATE "
                    "you may want to use the MKSTREAM option to create an empty stream "
                    "automatically."
                )
            stream = Stream()
        reply: Reply
        if sub == b"DESTROY":
            reply = Integer(value=int(stream.groups.pop(name, None) is not None))
            if reply.value == 0:
                return Outcome(reply=reply)
        else:
            last = stream.last_id if wanted is None else wanted
            if sub == b"CREATE":
                if name in stream.groups:
                    raise BusyGroupError("Consumer Group name already exists")
                stream.groups[name] = Group(last_id=last, entries_read=read)
            else:
                group = stream.groups.get(name)
                if group is None:
                    raise _no_group(key, name)
                group.last_id, group.entries_read = last, read
            reply = OK
        return Outcome(reply=reply, writes=(_stored(db, key, entry, stream),))

    return _run(server, client, (key,), compute)


def cmd_xreadgroup(server: KeyspaceServer, client: ProtocolClient, args: list[bytes]) -> Answer:
    """XREADGROUP GROUP group consumer [COUNT n] [NOACK] STREAMS key [key ...] id [id ...]:
    with `>` the entries no consumer of the group has had, now pending for this one (not
    with NOACK); with an id this consumer's pending entries after it. The streams come as
    [key, entries] pairs in RESP2 and as a map in RESP3, as Redis's. BLOCK is refused: a
    command here never waits."""
    if len(args) < 7 or args[1].upper() != b"GROUP":
        raise CommandError(SYNTAX)
    db, name, consumer = client.db, args[2], args[3]
    count = 0
    noack = False
    i = 4
    while i < len(args) and args[i].upper() != b"STREAMS":
        option = args[i].upper()
        if option == b"COUNT" and i + 1 < len(args):
            count = max(parse_int(args[i + 1]), 0)
            i += 1
        elif option == b"NOACK":
            noack = True
        elif option == b"BLOCK":
            raise CommandError("BLOCK is not supported: this server never holds a command")
        else:
            raise CommandError(SYNTAX)
        i += 1
    named = args[i + 1 :]
    if i == len(args) or not named:
        raise CommandError(SYNTAX)
    if len(named) % 2:
        raise CommandError(
            "Unbalanced 'xreadgroup' list of streams: for each stream key an ID or '>' must "
            "be specified."
        )
    keys, positions = named[: len(named) // 2], named[len(named) // 2 :]
    resp3 = client.protocol == 3
    after = [None if raw == b">" else parse_id(raw) for raw in positions]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        streams = [_stream(entry) for entry in entries]
        for key, stream in zip(keys, streams, strict=True):
            if stream is None or name not in stream.groups:
                raise NoGroupError(
                    f"No such key '{key.decode('utf-8', 'replace')}' or consumer group "
                    f"'{name.decode('utf-8', 'replace')}' in XREADGROUP with GROUP option"
                )
        pairs: list[tuple[Reply, Reply]] = []
        writes: list[SetValue] = []
        for key, entry, stream, start in zip(keys, entries, streams, after, strict=True):
            assert stream is not None  # checked above
            group = stream.groups[name]
            group.consumers[consumer] = now
            if start is None:
                found = [(sid, raw) for sid, raw in stream.entries.items() if sid > group.last_id]
                if count:
                    found = found[:count]
                for sid, _ in found:
                    _deliver(stream, group, sid)
                    if not noack:
                        group.pending[sid] = Pending(
                            consumer=consumer, delivered_at=now, deliveries=1
                        )
                group.pending = dict(sorted(group.pending.items()))
                if found:
                    items = [_entry_reply(sid, raw) for sid, raw in found]
                    pairs.append((Bulk(key), Array(items=items)))
            else:
                mine = [
                    sid
                    for sid, p in group.pending.items()
                    if p.consumer == consumer and sid > start
                ]
                if count:
                    mine = mine[:count]
                items = []
                for sid in mine:
                    raw = stream.entries.get(sid)
                    if raw is not None:
                        pending = group.pending[sid]
                        pending.delivered_at = now
                        pending.deliveries += 1
                    items.append(_entry_reply(sid, raw))
                pairs.append((Bulk(key), Array(items=items)))
            writes.append(_stored(db, key, entry, stream))
        reply: Reply
        if not pairs:
            reply = Array(items=None)
        elif resp3:
            reply = Map(pairs=pairs)
        else:
            reply = Array(items=[Array(items=pair) for pair in pairs])
        return Outcome(reply=reply, writes=writes)

    return _run(server, client, keys, compute)


def cmd_xack(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """XACK key group id [id ...]: how many of the ids were pending in the group (and are
    acknowledged now)."""
    db, key, name = client.db, args[1], args[2]
    ids = [parse_id(raw) for raw in args[3:]]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        stream = _stream(entry)
        group = None if stream is None else stream.groups.get(name)
        if stream is None or group is None:
            return Outcome(reply=Integer(value=0))
        acked = sum(group.pending.pop(sid, None) is not None for sid in set(ids))
        if not acked:
            return Outcome(reply=Integer(value=0))
        return Outcome(reply=Integer(value=acked), writes=(_stored(db, key, entry, stream),))

    return _run(server, client, (key,), compute)


# -- XINFO STREAM -----------------------------------------------------------------------------


def _tree_keys(stream: Stream) -> int:
    return -(-stream.length // NODE_ENTRIES)


def _info_head(stream: Stream) -> list[tuple[Reply, Reply]]:
    keys = _tree_keys(stream)
    return [
        (bulk("length"), Integer(value=stream.length)),
        (bulk("radix-tree-keys"), Integer(value=keys)),
        (bulk("radix-tree-nodes"), Integer(value=keys + 1)),
        (bulk("last-generated-id"), Bulk(format_id(stream.last_id))),
        (bulk("max-deleted-entry-id"), Bulk(format_id(stream.max_deleted))),
        (bulk("entries-added"), Integer(value=stream.entries_added)),
        (bulk("recorded-first-entry-id"), Bulk(format_id(stream.first_id))),
    ]


def _group_full(stream: Stream, name: bytes, group: Group, count: int) -> Map:
    def limited(items: list[StreamId]) -> list[StreamId]:
        return items[:count] if count else items

    read: Reply = NIL if group.entries_read == UNKNOWN else Integer(value=group.entries_read)
    lag = _lag(stream, group)
    pending = [
        Array(
            items=(
                Bulk(format_id(sid)),
                Bulk(group.pending[sid].consumer),
                Integer(value=group.pending[sid].delivered_at),
                Integer(value=group.pending[sid].deliveries),
            )
        )
        for sid in limited(list(group.pending))
    ]
    consumers: list[Reply] = []
    for who in sorted(group.consumers):
        mine = [sid for sid, p in group.pending.items() if p.consumer == who]
        consumers.append(
            Map(
                pairs=[
                    (bulk("name"), Bulk(who)),
                    (bulk("seen-time"), Integer(value=group.consumers[who])),
                    (bulk("pel-count"), Integer(value=len(mine))),
                    (
                        bulk("pending"),
                        Array(
                            items=[
                                Array(
                                    items=(
                                        Bulk(format_id(sid)),
                                        Integer(value=group.pending[sid].delivered_at),
                                        Integer(value=group.pending[sid].deliveries),
                                    )
                                )
                                for sid in limited(mine)
                            ]
                        ),
                    ),
                ]
            )
        )
    return Map(
        pairs=[
            (bulk("name"), Bulk(name)),
            (bulk("last-delivered-id"), Bulk(format_id(group.last_id))),
            (bulk("entries-read"), read),
            (bulk("lag"), NIL if lag is None else Integer(value=lag)),
            (bulk("pel-count"), Integer(value=len(group.pending))),
            (bulk("pending"), Array(items=pending)),
            (bulk("consumers"), Array(items=consumers)),
        ]
    )


def cmd_xinfo(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """XINFO STREAM key [FULL [COUNT n]]: the stream's counters and its first and last
    entries; FULL: its entries and groups (with pending entries and consumers) instead,
    at most `n` of each list (10 by default, 0 for all), as Redis 7.0 shapes them."""
    if args[1].upper() != b"STREAM" or len(args) < 3:
        raise CommandError(
            f"unknown subcommand or wrong number of arguments for "
            f"'{args[1].decode('utf-8', 'replace')}'. Try XINFO HELP."
        )
    rest = args[3:]
    full = bool(rest) and rest[0].upper() == b"FULL"
    count = FULL_COUNT
    if full and len(rest) == 3 and rest[1].upper() == b"COUNT":
        count = max(parse_int(rest[2]), 0)
    elif rest and (not full or len(rest) != 1):
        raise CommandError(SYNTAX)

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        stream = _stream(entries[0])
        if stream is None:
            raise CommandError("no such key")
        pairs = _info_head(stream)
        listed = list(stream.entries.items())
        if full:
            shown = listed[:count] if count else listed
            pairs.append((bulk("entries"), Array(items=[_entry_reply(s, r) for s, r in shown])))
            groups = [
                _group_full(stream, name, stream.groups[name], count)
                for name in sorted(stream.groups)
            ]
            pairs.append((bulk("groups"), Array(items=groups)))
        else:
            pairs.append((bulk("groups"), Integer(value=len(stream.groups))))
            pairs.append((bulk("first-entry"), _entry_reply(*listed[0]) if listed else NIL))
            pairs.append((bulk("last-entry"), _entry_reply(*listed[-1]) if listed else NIL))
        return Outcome(reply=Map(pairs=pairs))

    return _run(server, client, (args[2],), compute)


__all__ = [
    "MAX_ID",
    "MIN_ID",
    "Group",
    "Pending",
    "Stream",
    "StreamId",
    "cmd_xack",
    "cmd_xadd",
    "cmd_xdel",
    "cmd_xgroup",
    "cmd_xinfo",
    "cmd_xlen",
    "cmd_xrange",
    "cmd_xreadgroup",
    "cmd_xrevrange",
    "decode_stream",
    "encode_stream",
    "format_id",
    "parse_id",
]
