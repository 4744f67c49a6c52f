"""Hashes, kept whole in one store value each: HSET, HMSET, HSETNX, HGET, HMGET, HGETALL,
HDEL, HLEN, HEXISTS, HSTRLEN, HINCRBY, HKEYS, HVALS. Each an Op (command/ops.py)."""

# A stored hash is one byte, its encoding (command/encodings.py), then its fields and
# values in turn as `lists.encode_items` writes items; every command reads and rewrites
# all of it.

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from postoffice.command.encodings import COMPACT, GROWN, LimitedServer, grown
from postoffice.command.errors import CommandError, WrongTypeError
from postoffice.command.keyspace import Answer, KeyspaceClient, KeyspaceServer, keyspace_of
from postoffice.command.layout import HASH
from postoffice.command.lists import decode_items, encode_items
from postoffice.command.ops import WRONG_TYPE, Compute, Drop, Entry, Op, Outcome, SetValue
from postoffice.command.strings import parse_int
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, Map

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1


def encode_hash(header: int, fields: dict[bytes, bytes]) -> bytes:
    """A hash's stored value: its encoding byte, then each field and its value."""
    return bytes((header,)) + encode_items([part for pair in fields.items() for part in pair])


def decode_hash(raw: bytes) -> tuple[int, dict[bytes, bytes]]:
    """(encoding byte, fields) of a stored hash; CommandError when it is damaged."""
    if not raw or raw[0] not in (COMPACT, GROWN):
        raise CommandError("stored hash is damaged")
    items = decode_items(raw[1:])
    if len(items) % 2:
        raise CommandError("stored hash is damaged")
    return raw[0], dict(zip(items[::2], items[1::2], strict=True))


def hash_encoding(raw: bytes) -> str:
    """OBJECT ENCODING of a stored hash: listpack or hashtable."""
    return "hashtable" if decode_hash(raw)[0] == GROWN else "listpack"


def _fields(entry: Entry | None) -> tuple[int, dict[bytes, bytes]]:
    if entry is None:
        return COMPACT, {}
    if entry.kind != HASH:
        raise WrongTypeError(WRONG_TYPE)
    return decode_hash(entry.value)


def _run(server: KeyspaceServer, client: KeyspaceClient, key: bytes, compute: Compute) -> Answer:
    op = Op(reads=((client.db, key),), compute=compute, any_kind=True)  # kinds checked here
    return keyspace_of(server).run(op)


def _wrong_args(name: bytes) -> CommandError:
    return CommandError(f"wrong number of arguments for '{name.decode().lower()}' command")


def _store(
    server: LimitedServer,
    db: int,
    key: bytes,
    entry: Entry | None,
    header: int,
    fields: dict[bytes, bytes],
    written: Sequence[bytes],
) -> Drop | SetValue:
    """The write that leaves `fields` under `key` (none left: the key is deleted), its
    encoding grown when `fields` or the longest of `written` passes the thresholds."""
    if not fields:
        return Drop(db=db, key=key)
    limits = server.encoding_limits
    longest = max(map(len, written), default=0)
    header = grown(header, len(fields), longest, limits.hash_max_entries, limits.hash_max_value)
    at = None if entry is None else entry.expire_at
    return SetValue(db=db, key=key, value=encode_hash(header, fields), expire_at=at, kind=HASH)


def _set_fields(
    server: LimitedServer, client: KeyspaceClient, args: list[bytes], *, counted: bool
) -> Answer:
    if len(args) < 4 or len(args) % 2:
        raise _wrong_args(args[0])
    db, key, pairs = client.db, args[1], args[2:]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        header, fields = _fields(entry)
        before = len(fields)
        fields.update(zip(pairs[::2], pairs[1::2], strict=True))
        write = _store(server, db, key, entry, header, fields, pairs)
        reply = Integer(value=len(fields) - before) if counted else OK
        return Outcome(reply=reply, writes=(write,))

    return _run(server, client, key, compute)


def cmd_hset(server: LimitedServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HSET key field value [field value ...]: how many fields are new."""
    return _set_fields(server, client, args, counted=True)


def cmd_hmset(server: LimitedServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HMSET key field value [field value ...]: as HSET, answering OK."""
    return _set_fields(server, client, args, counted=False)


def cmd_hsetnx(server: LimitedServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HSETNX key field value: 1 when the field was missing and is set now, else 0."""
    db, key, field, value = client.db, args[1], args[2], args[3]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        header, fields = _fields(entry)
        if field in fields:
            return Outcome(reply=Integer(value=0))
        fields[field] = value
        write = _store(server, db, key, entry, header, fields, (field, value))
        return Outcome(reply=Integer(value=1), writes=(write,))

    return _run(server, client, key, compute)


def cmd_hget(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HGET key field: the field's value, nil when the field or key is missing."""
    field = args[2]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        value = _fields(entries[0])[1].get(field)
        return Outcome(reply=NIL if value is None else Bulk(value))

    return _run(server, client, args[1], compute)


def cmd_hmget(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HMGET key field [field ...]: each field's value, nil for a missing one."""
    wanted = args[2:]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        fields = _fields(entries[0])[1]
        items = [NIL if (v := fields.get(f)) is None else Bulk(v) for f in wanted]
        return Outcome(reply=Array(items=items))

    return _run(server, client, args[1], compute)


def cmd_hgetall(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HGETALL key: every field and its value (a map in RESP3, a flat array in RESP2)."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        fields = _fields(entries[0])[1]
        return Outcome(reply=Map(pairs=[(Bulk(f), Bulk(v)) for f, v in fields.items()]))

    return _run(server, client, args[1], compute)


def cmd_hkeys(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HKEYS key: every field."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Array(items=[Bulk(f) for f in _fields(entries[0])[1]]))

    return _run(server, client, args[1], compute)


def cmd_hvals(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HVALS key: every value, in the fields' order."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Array(items=[Bulk(v) for v in _fields(entries[0])[1].values()]))

    return _run(server, client, args[1], compute)


def cmd_hlen(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HLEN key: how many fields, 0 for a missing key."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Integer(value=len(_fields(entries[0])[1])))

    return _run(server, client, args[1], compute)


def cmd_hexists(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HEXISTS key field: 1 when the field exists, else 0."""
    field = args[2]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Integer(value=int(field in _fields(entries[0])[1])))

    return _run(server, client, args[1], compute)


def cmd_hstrlen(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HSTRLEN key field: the length of the field's value, 0 when it is missing."""
    field = args[2]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Integer(value=len(_fields(entries[0])[1].get(field, b""))))

    return _run(server, client, args[1], compute)


def cmd_hdel(server: LimitedServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HDEL key field [field ...]: how many of the fields existed (and are gone); a hash
    left empty is deleted."""
    db, key, gone = client.db, args[1], args[2:]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        header, fields = _fields(entry)
        removed = sum(fields.pop(field, None) is not None for field in gone)
        if not removed:
            return Outcome(reply=Integer(value=0))
        write = _store(server, db, key, entry, header, fields, ())
        return Outcome(reply=Integer(value=removed), writes=(write,))

    return _run(server, client, key, compute)


def cmd_hincrby(server: LimitedServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """HINCRBY key field increment: the field's integer value plus `increment` (a missing
    field counts as 0); the new value."""
    db, key, field = client.db, args[1], args[2]
    step = parse_int(args[3])

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        header, fields = _fields(entry)
        old = fields.get(field)
        try:
            current = 0 if old is None else parse_int(old)
        except CommandError:
            raise CommandError("hash value is not an integer") from None
        value = current + step
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise CommandError("increment or decrement would overflow")
        fields[field] = b"%d" % value
        write = _store(server, db, key, entry, header, fields, (field, fields[field]))
        return Outcome(reply=Integer(value=value), writes=(write,))

    return _run(server, client, key, compute)


__all__ = [
    "cmd_hdel",
    "cmd_hexists",
    "cmd_hget",
    "cmd_hgetall",
    "cmd_hincrby",
    "cmd_hkeys",
    "cmd_hlen",
    "cmd_hmget",
    "cmd_hmset",
    "cmd_hset",
    "cmd_hsetnx",
    "cmd_hstrlen",
    "cmd_hvals",
    "decode_hash",
    "encode_hash",
    "hash_encoding",
]
