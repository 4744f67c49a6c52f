"""Pure: how the command server's 16 databases and their expiries sit on the store keyspace.

The layout is described in docs/compatibility.md ("The keyspace layout"); in short:
database 0 keeps its keys as they are, everything else lives under a leading NUL byte.
"""

from __future__ import annotations

import struct
from typing import Final

from postoffice.command.errors import CommandError
from postoffice.store import MAX_KEY_BYTES

DATABASES: Final = 16  # SELECT 0..15, as Redis's default `databases 16`
#: The byte that opens every stored key that is not a plain database-0 key.
RESERVED: Final = 0x00
#: A database-0 key that itself begins with NUL is stored behind this two-byte escape.
ESCAPED_PREFIX: Final = b"\x00\x00"
#: Where the expiries live: this prefix + the stored key -> 8-byte big-endian unix ms.
EXPIRY_PREFIX: Final = b"\x00\x10"
#: Where the type tags live: this prefix + the stored key -> one byte, the key's kind. A
#: string has none, so every value written before types existed reads as a string.
TYPE_PREFIX: Final = b"\x00\x11"
#: The kinds of value; a string is the plain value, the others are encoded (command/lists.py,
#: hashes.py, zsets.py, streams.py).
STRING: Final = 0
LIST: Final = 1
SET: Final = 2
HASH: Final = 3
ZSET: Final = 4
STREAM: Final = 5
#: A string changed in place (SETRANGE, APPEND, SETBIT): Redis calls its encoding "raw"
#: whatever the bytes, so the tag remembers it; a plain SET drops the tag again.
RAW: Final = 6
KIND_NAMES: Final = {
    STRING: "string",
    LIST: "list",
    SET: "set",
    HASH: "hash",
    ZSET: "zset",
    STREAM: "stream",
    RAW: "string",
}
#: Stored keys carry at most a two-byte prefix, and an expiry (or type) key two more: a client's key
#: is shorter than the store's limit by both, so its expiry key always fits too.
MAX_USER_KEY_BYTES: Final = MAX_KEY_BYTES - 4
#: The first stored key past the reserved range: database 0's plain keys start here.
PLAIN_START: Final = b"\x01"
#: Where the reserved range starts, past database 0's escaped keys.
RESERVED_START: Final = b"\x00\x01"

_DEADLINE: Final = struct.Struct(">q")


def db_prefix(db: int) -> bytes:
    """The prefix of database `db`'s stored keys (b"" for database 0's plain keys)."""
    return b"" if db == 0 else bytes((RESERVED, db))


def prefix_end(prefix: bytes) -> bytes:
    """The first key past every key that begins with `prefix` (its last byte is below 0xff)."""
    return prefix[:-1] + bytes((prefix[-1] + 1,))


def check_key(key: bytes, what: str = "key") -> None:
    """CommandError when `key` cannot be stored (empty or too long); `what` names it."""
    if not key:
        raise CommandError(f"{what} is empty")
    if len(key) > MAX_USER_KEY_BYTES:
        raise CommandError(f"{what} of {len(key)} bytes exceeds limit {MAX_USER_KEY_BYTES}")


def encode_key(db: int, key: bytes, what: str = "key") -> bytes:
    """The stored key of `key` in database `db`; CommandError when it is empty or too long."""
    if not key or len(key) > MAX_USER_KEY_BYTES:
        check_key(key, what)
    if db == 0:
        return ESCAPED_PREFIX + key if key[0] == RESERVED else key
    return bytes((RESERVED, db)) + key


def decode_key(stored: bytes) -> tuple[int, bytes] | None:
    """(database, key) of a stored key; None for a stored key that is no client's key."""
    if not stored or stored[0] != RESERVED:
        return 0, stored
    if len(stored) < 3:
        return None
    space = stored[1]
    if space == 0:
        return 0, stored[2:]
    if space < DATABASES:
        return space, stored[2:]
    return None


def expiry_key(stored: bytes) -> bytes:
    """Where the expiry of the stored key `stored` is kept."""
    return EXPIRY_PREFIX + stored


def type_key(stored: bytes) -> bytes:
    """Where the type tag of the stored key `stored` is kept (none for a string)."""
    return TYPE_PREFIX + stored


def decode_kind(raw: bytes) -> int:
    """The kind a stored type tag names (STRING for one that is not a tag)."""
    return raw[0] if len(raw) == 1 and raw[0] in KIND_NAMES else STRING


def is_string(kind: int) -> bool:
    """Whether a key of `kind` holds a string (plain or changed in place)."""
    return kind in (STRING, RAW)


def base_kind(kind: int) -> int:
    """`kind` as TYPE and SCAN TYPE see it: RAW is a STRING."""
    return STRING if kind == RAW else kind


def encode_deadline(at_ms: int) -> bytes:
    """An expiry's stored value: unix milliseconds, 8 bytes big-endian."""
    return _DEADLINE.pack(at_ms)


def decode_deadline(raw: bytes) -> int | None:
    """The unix milliseconds of an expiry's stored value; None when it is not one."""
    if len(raw) != _DEADLINE.size:
        return None
    return int(_DEADLINE.unpack(raw)[0])


def db_ranges(db: int, prefix: bytes = b"") -> list[tuple[bytes, bytes | None]]:
    """The stored-key ranges, in key order, holding database `db`'s keys that begin with
    `prefix`: (stored prefix, first stored key or None for the whole prefix).

    Database 0 is two ranges when `prefix` is empty: its escaped keys (under NUL NUL), then
    its plain keys (from 0x01 on, past the reserved range).
    """
    if db != 0:
        return [(bytes((RESERVED, db)) + prefix, None)]
    if prefix:
        stored = ESCAPED_PREFIX + prefix if prefix[0] == RESERVED else prefix
        return [(stored, None)]
    return [(ESCAPED_PREFIX, None), (b"", PLAIN_START)]


__all__ = [
    "DATABASES",
    "EXPIRY_PREFIX",
    "HASH",
    "KIND_NAMES",
    "LIST",
    "MAX_USER_KEY_BYTES",
    "PLAIN_START",
    "RAW",
    "RESERVED_START",
    "SET",
    "STREAM",
    "STRING",
    "TYPE_PREFIX",
    "ZSET",
    "base_kind",
    "check_key",
    "db_prefix",
    "db_ranges",
    "decode_deadline",
    "decode_key",
    "decode_kind",
    "encode_deadline",
    "encode_key",
    "expiry_key",
    "is_string",
    "prefix_end",
    "type_key",
]
