"""The keyspace-wide commands and the 16 databases: SELECT, SWAPDB, MOVE, COPY, FLUSHDB,
FLUSHALL, KEYS, RANDOMKEY, TYPE, RENAME, RENAMENX, UNLINK, OBJECT ENCODING; Redis's replies."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final, Protocol

from postoffice.command.errors import CommandError
from postoffice.command.hashes import hash_encoding
from postoffice.command.keyspace import (
    REPLY_ITEM_BYTES,
    Answer,
    KeyspaceClient,
    KeyspaceServer,
    keyspace_of,
    reply_too_large,
)
from postoffice.command.layout import (
    DATABASES,
    HASH,
    KIND_NAMES,
    LIST,
    RAW,
    SET,
    STREAM,
    STRING,
    ZSET,
)
from postoffice.command.lists import decode_items
from postoffice.command.ops import Drop, Entry, Op, Outcome, SetValue, deleter
from postoffice.command.zsets import zset_encoding
from postoffice.core.resp import NIL, OK, Array, Glob, Integer, Reply, SimpleString, bulk

_OUT_OF_RANGE = "DB index is out of range"
_NOT_INTEGER = "value is not an integer or out of range"


class SelectingClient(Protocol):
    """A connection whose database SELECT changes."""

    db: int


def _db_index(raw: bytes, not_integer: str = _NOT_INTEGER) -> int:
    try:
        db = int(raw)
    except ValueError:
        raise CommandError(not_integer) from None
    if not 0 <= db < DATABASES:
        raise CommandError(_OUT_OF_RANGE)
    return db


def cmd_select(server: object, client: SelectingClient, args: list[bytes]) -> Reply:
    """SELECT index: this connection's keyspace commands go to database `index` (0..15)."""
    client.db = _db_index(args[1])
    return OK


def cmd_swapdb(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SWAPDB index1 index2: the two databases' keys trade places."""
    first = _db_index(args[1], "invalid first DB index")
    second = _db_index(args[2], "invalid second DB index")
    keyspace = keyspace_of(server)
    if first == second:
        return OK
    return keyspace.swap(first, second)


def _flush_mode(args: list[bytes]) -> None:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError("syntax error")


def cmd_flushdb(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """FLUSHDB [ASYNC|SYNC]: every key of the SELECTed database deleted."""
    _flush_mode(args)
    return keyspace_of(server).flush(client.db)


def cmd_flushall(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """FLUSHALL [ASYNC|SYNC]: every key of every database deleted."""
    _flush_mode(args)
    return keyspace_of(server).flush(None)


def cmd_keys(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """KEYS pattern: every live key of the database that matches; refused when the reply
    would pass max-reply-bytes."""
    glob = Glob.compile(args[1])
    limit = server.max_reply_bytes

    def finish(keys: Sequence[bytes]) -> Reply:
        shown = [key for key in keys if glob.matches(key)]
        size = REPLY_ITEM_BYTES + sum(len(key) + REPLY_ITEM_BYTES for key in shown)
        if size > limit:
            raise reply_too_large(size, limit)
        return Array(items=tuple(map(bulk, shown)))

    return keyspace_of(server).keys(client.db, glob.prefix, finish)


def cmd_randomkey(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """RANDOMKEY: a live key of the database, or nil when it has none."""

    def finish(keys: Sequence[bytes]) -> Reply:
        return bulk(random.choice(keys)) if keys else NIL  # not for secrets

    return keyspace_of(server).keys(client.db, b"", finish)


def cmd_type(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """TYPE key: "string", "list", "set", "hash", "zset" or "stream", or "none" for a
    missing key."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        return Outcome(reply=SimpleString(text="none" if entry is None else KIND_NAMES[entry.kind]))

    op = Op(reads=((client.db, args[1]),), compute=compute, any_kind=True)
    return keyspace_of(server).run(op)


def cmd_unlink(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """UNLINK key [key ...]: as DEL (a store delete is a tombstone, cheap for any size)."""
    db, keys = client.db, args[1:]
    return keyspace_of(server).run(
        Op(reads=tuple((db, key) for key in keys), compute=deleter(db, keys), any_kind=True)
    )


def _rename(
    server: KeyspaceServer, client: KeyspaceClient, args: list[bytes], *, nx: bool
) -> Answer:
    db, source, target = client.db, args[1], args[2]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        old, new = entries
        if old is None:
            raise CommandError("no such key")
        if source == target:
            return Outcome(reply=Integer(value=0) if nx else OK)
        if nx and new is not None:
            return Outcome(reply=Integer(value=0))
        writes = (
            Drop(db=db, key=source),
            SetValue(db=db, key=target, value=old.value, expire_at=old.expire_at, kind=old.kind),
        )
        return Outcome(reply=Integer(value=1) if nx else OK, writes=writes)

    op = Op(reads=((db, source), (db, target)), compute=compute, any_kind=True)
    return keyspace_of(server).run(op)


def cmd_rename(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """RENAME key newkey: the value and its expiry move; ERR no such key when missing."""
    return _rename(server, client, args, nx=False)


def cmd_renamenx(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """RENAMENX key newkey: as RENAME, only when newkey is missing: 1, else 0."""
    return _rename(server, client, args, nx=True)


def cmd_move(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """MOVE key db: 1 when the key moved (with its expiry), 0 when it is missing here or
    exists there."""
    source_db, key = client.db, args[1]
    target_db = _db_index(args[2])
    if target_db == source_db:
        raise CommandError("source and destination objects are the same")

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        here, there = entries
        if here is None or there is not None:
            return Outcome(reply=Integer(value=0))
        writes = (
            Drop(db=source_db, key=key),
            SetValue(
                db=target_db, key=key, value=here.value, expire_at=here.expire_at, kind=here.kind
            ),
        )
        return Outcome(reply=Integer(value=1), writes=writes)

    op = Op(reads=((source_db, key), (target_db, key)), compute=compute, any_kind=True)
    return keyspace_of(server).run(op)


def cmd_copy(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """COPY source destination [DB index] [REPLACE]: 1 when the value (and its expiry) was
    copied, 0 when the source is missing or the destination exists without REPLACE."""
    db, source, target = client.db, args[1], args[2]
    target_db = db
    replace = False
    i = 3
    while i < len(args):
        option = args[i].upper()
        if option == b"REPLACE":
            replace = True
        elif option == b"DB" and i + 1 < len(args):
            target_db = _db_index(args[i + 1])
            i += 1
        else:
            raise CommandError("syntax error")
        i += 1
    if target_db == db and source == target:
        raise CommandError("source and destination objects are the same")

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        here, there = entries
        if here is None or (there is not None and not replace):
            return Outcome(reply=Integer(value=0))
        write = SetValue(
            db=target_db, key=target, value=here.value, expire_at=here.expire_at, kind=here.kind
        )
        return Outcome(reply=Integer(value=1), writes=(write,))

    reads = ((db, source), (target_db, target))
    return keyspace_of(server).run(Op(reads=reads, compute=compute, any_kind=True))


#: Redis 7.0's set-max-intset-entries: a larger set of integers is a hashtable there.
_MAX_INTSET: Final = 512


def _is_int64(value: bytes) -> bool:
    digits = value[1:] if value[:1] == b"-" else value
    canonical = digits.isdigit() and (digits[:1] != b"0" or value == b"0")
    return len(value) <= 20 and canonical and -(1 << 63) <= int(value) < (1 << 63)


def _encoding(value: bytes, kind: int = STRING) -> str:
    """The encoding Redis 7.0 would give the value: a string just SET is int, embstr or
    raw, one changed in place raw; a list is a quicklist; a set of at most 512 integers an
    intset, else a hashtable; a hash or sorted set what its stored encoding byte says (the
    thresholds of CONFIG when it was written); a stream a stream."""
    if kind == RAW:
        return "raw"
    if kind == LIST:
        return "quicklist"
    if kind == HASH:
        return hash_encoding(value)
    if kind == ZSET:
        return zset_encoding(value)
    if kind == STREAM:
        return "stream"
    if kind == SET:
        members = decode_items(value)
        small = len(members) <= _MAX_INTSET
        return "intset" if small and all(map(_is_int64, members)) else "hashtable"
    if _is_int64(value):
        return "int"
    return "embstr" if len(value) <= 44 else "raw"


def cmd_object(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """OBJECT ENCODING key: the encoding Redis would show (`_encoding`; nil for a missing
    key). OBJECT REFCOUNT key: 1, no value is shared here."""
    sub = args[1].upper()
    if sub == b"REFCOUNT" and len(args) == 3:

        def count(entries: Sequence[Entry | None], now: int) -> Outcome:
            return Outcome(reply=NIL if entries[0] is None else Integer(value=1))

        op = Op(reads=((client.db, args[2]),), compute=count, any_kind=True)
        return keyspace_of(server).run(op)
    if sub != b"ENCODING" or len(args) != 3:
        raise CommandError(
            f"unknown subcommand or wrong number of arguments for "
            f"'{args[1].decode('utf-8', 'replace')}'. Try OBJECT HELP."
        )

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        if entry is None:
            return Outcome(reply=NIL)
        return Outcome(reply=bulk(_encoding(entry.value, entry.kind)))

    op = Op(reads=((client.db, args[2]),), compute=compute, any_kind=True)
    return keyspace_of(server).run(op)


def cmd_function(server: object, client: object, args: list[bytes]) -> Reply:
    """FUNCTION FLUSH [ASYNC|SYNC] | LIST: there are no functions (no scripting here), so
    FLUSH has nothing to do and LIST is empty; what a Redis client resets a server with."""
    sub = args[1].upper()
    if sub == b"FLUSH" and (len(args) == 2 or args[2].upper() in (b"ASYNC", b"SYNC")):
        return OK
    if sub == b"LIST":
        return Array(items=())
    raise CommandError(
        f"unknown subcommand '{args[1].decode('utf-8', 'replace')}'. Try FUNCTION HELP."
    )


__all__ = [
    "cmd_copy",
    "cmd_flushall",
    "cmd_flushdb",
    "cmd_function",
    "cmd_keys",
    "cmd_move",
    "cmd_object",
    "cmd_randomkey",
    "cmd_rename",
    "cmd_renamenx",
    "cmd_select",
    "cmd_swapdb",
    "cmd_type",
    "cmd_unlink",
]
