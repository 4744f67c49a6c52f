"""Lists and sets, kept whole in one store value each: LPUSH, RPUSH, LRANGE, LLEN, LPOP,
RPOP; SADD, SREM, SMEMBERS, SCARD, SISMEMBER, SRANDMEMBER. Each an Op (command/ops.py).

Every command reads and rewrites the whole value, so it costs O(items): enough for what
Redis's tests and WRONGTYPE checks need, not a data structure server's lists.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from typing import Final

from postoffice.command.errors import CommandError, WrongTypeError
from postoffice.command.keyspace import Answer, KeyspaceClient, KeyspaceServer, keyspace_of
from postoffice.command.layout import LIST, SET
from postoffice.command.ops import WRONG_TYPE, Compute, Drop, Entry, Op, Outcome, SetValue
from postoffice.command.strings import parse_int
from postoffice.core.resp import NIL, Array, Bulk, Integer, Reply

_LENGTH: Final = struct.Struct(">I")
#: SRANDMEMBER with a negative count repeats members: this bounds the reply it builds.
MAX_RANDOM_ITEMS: Final = 100_000


def encode_items(items: Sequence[bytes]) -> bytes:
    """A list's or set's stored value: each item as a 4-byte big-endian length and bytes."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def decode_items(raw: bytes) -> list[bytes]:
    """The items of a stored value; CommandError when it is not one `encode_items` made."""
    items: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise CommandError("stored collection is damaged")
        (size,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise CommandError("stored collection is damaged")
        items.append(raw[pos : pos + size])
        pos += size
    return items


def _items(entry: Entry | None, kind: int) -> list[bytes]:
    """The items of `entry` (none when missing); WRONGTYPE when it holds another kind."""
    if entry is None:
        return []
    if entry.kind != kind:
        raise WrongTypeError(WRONG_TYPE)
    return decode_items(entry.value)


def _stored(
    db: int, key: bytes, entry: Entry | None, items: Sequence[bytes], kind: int
) -> Drop | SetValue:
    """The write that leaves `items` under `key` (a key left empty is deleted, as Redis's)."""
    if not items:
        return Drop(db=db, key=key)
    at = None if entry is None else entry.expire_at
    return SetValue(db=db, key=key, value=encode_items(items), expire_at=at, kind=kind)


def _run(server: KeyspaceServer, client: KeyspaceClient, key: bytes, compute: Compute) -> Answer:
    op = Op(reads=((client.db, key),), compute=compute, any_kind=True)  # kinds checked here
    return keyspace_of(server).run(op)


# -- lists ----------------------------------------------------------------------------------


def _push(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes], left: bool) -> Answer:
    db, key, new = client.db, args[1], args[2:]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        items = _items(entry, LIST)
        items = [*reversed(new), *items] if left else [*items, *new]
        return Outcome(
            reply=Integer(value=len(items)), writes=(_stored(db, key, entry, items, LIST),)
        )

    return _run(server, client, key, compute)


def cmd_lpush(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """LPUSH key element [element ...]: each put at the head in turn; the new length."""
    return _push(server, client, args, left=True)


def cmd_rpush(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """RPUSH key element [element ...]: each put at the tail; the new length."""
    return _push(server, client, args, left=False)


def cmd_llen(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """LLEN key: the list's length, 0 for a missing key."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Integer(value=len(_items(entries[0], LIST))))

    return _run(server, client, args[1], compute)


def cmd_lrange(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """LRANGE key start stop: the items from start to stop, inclusive, negative from the end."""
    start, stop = parse_int(args[2]), parse_int(args[3])

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        items = _items(entries[0], LIST)
        size = len(items)
        first = max(size + start, 0) if start < 0 else start
        last = min(size + stop if stop < 0 else stop, size - 1)
        chosen = items[first : last + 1] if first <= last else []
        return Outcome(reply=Array(items=[Bulk(item) for item in chosen]))

    return _run(server, client, args[1], compute)


def _pop(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes], left: bool) -> Answer:
    db, key = client.db, args[1]
    if len(args) > 3:
        raise CommandError(f"wrong number of arguments for '{args[0].decode().lower()}' command")
    count: int | None = None
    if len(args) == 3:
        count = parse_int(args[2])
        if count < 0:
            raise CommandError("value is out of range, must be positive")

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        items = _items(entry, LIST)
        if not items:
            return Outcome(reply=NIL if count is None else Array(items=None))
        taken = min(1 if count is None else count, len(items))
        if left:
            popped, rest = items[:taken], items[taken:]
        else:
            popped, rest = items[::-1][:taken], items[: len(items) - taken]
        reply: Reply = Bulk(popped[0]) if count is None else Array(items=[Bulk(i) for i in popped])
        if not popped:
            return Outcome(reply=reply)
        return Outcome(reply=reply, writes=(_stored(db, key, entry, rest, LIST),))

    return _run(server, client, key, compute)


def cmd_lpop(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """LPOP key [count]: the head item (or up to `count` of them), nil when there is none."""
    return _pop(server, client, args, left=True)


def cmd_rpop(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """RPOP key [count]: the tail item (or up to `count` of them, last first)."""
    return _pop(server, client, args, left=False)


# -- sets -----------------------------------------------------------------------------------


def cmd_sadd(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SADD key member [member ...]: how many were not members yet."""
    db, key, new = client.db, args[1], args[2:]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        members = dict.fromkeys(_items(entry, SET))
        before = len(members)
        members.update(dict.fromkeys(new))
        added = len(members) - before
        if not added:
            return Outcome(reply=Integer(value=0))
        write = _stored(db, key, entry, list(members), SET)
        return Outcome(reply=Integer(value=added), writes=(write,))

    return _run(server, client, key, compute)


def cmd_srem(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SREM key member [member ...]: how many were members (and are no more)."""
    db, key, gone = client.db, args[1], set(args[2:])

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        members = _items(entry, SET)
        kept = [m for m in members if m not in gone]
        removed = len(members) - len(kept)
        if not removed:
            return Outcome(reply=Integer(value=0))
        return Outcome(reply=Integer(value=removed), writes=(_stored(db, key, entry, kept, SET),))

    return _run(server, client, key, compute)


def cmd_smembers(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SMEMBERS key: every member (in the order they were added)."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Array(items=[Bulk(m) for m in _items(entries[0], SET)]))

    return _run(server, client, args[1], compute)


def cmd_scard(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SCARD key: how many members, 0 for a missing key."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Integer(value=len(_items(entries[0], SET))))

    return _run(server, client, args[1], compute)


def cmd_sismember(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SISMEMBER key member: 1 when it is a member, else 0."""
    member = args[2]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Integer(value=int(member in _items(entries[0], SET))))

    return _run(server, client, args[1], compute)


def cmd_srandmember(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SRANDMEMBER key [count]: one random member (nil when none); with a count, that many
    distinct ones (repeats allowed when it is negative), as Redis's."""
    if len(args) > 3:
        raise CommandError("wrong number of arguments for 'srandmember' command")
    count = parse_int(args[2]) if len(args) == 3 else None
    if count is not None and -count > MAX_RANDOM_ITEMS:
        raise CommandError(f"count of {-count} repeated members exceeds limit {MAX_RANDOM_ITEMS}")

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        members = _items(entries[0], SET)
        if count is None:
            return Outcome(reply=Bulk(random.choice(members)) if members else NIL)
        if count >= 0:
            chosen = random.sample(members, min(count, len(members)))
        else:
            chosen = [random.choice(members) for _ in range(-count)] if members else []
        return Outcome(reply=Array(items=[Bulk(m) for m in chosen]))

    return _run(server, client, args[1], compute)


__all__ = [
    "MAX_RANDOM_ITEMS",
    "cmd_llen",
    "cmd_lpop",
    "cmd_lpush",
    "cmd_lrange",
    "cmd_rpop",
    "cmd_rpush",
    "cmd_sadd",
    "cmd_scard",
    "cmd_sismember",
    "cmd_smembers",
    "cmd_srandmember",
    "cmd_srem",
    "decode_items",
    "encode_items",
]
