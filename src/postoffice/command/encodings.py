"""The encodings Redis 7.0 gives a hash or a sorted set, and the CONFIG thresholds that
decide them (hash-max-listpack-entries ...), as the hash and sorted-set commands use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol, final

from postoffice.command.keyspace import KeyspaceClient, KeyspaceServer

#: Redis 7.0's defaults: a hash or sorted set up to 128 entries, none longer than 64
#: bytes, is a listpack; past either it becomes a hashtable or skiplist, and stays one.
DEFAULT_MAX_ENTRIES: Final = 128
DEFAULT_MAX_VALUE: Final = 64
#: The first byte of a stored hash or sorted set: which encoding it has reached. Kept in
#: the value because Redis never converts back: a hash grown past the threshold and
#: shrunk again is still a hashtable, and a COPY of it is one too.
COMPACT: Final = 0
GROWN: Final = 1


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EncodingLimits:
    """The thresholds of CONFIG hash-max-listpack-entries and -value, and the zset ones."""

    hash_max_entries: int = DEFAULT_MAX_ENTRIES
    hash_max_value: int = DEFAULT_MAX_VALUE
    zset_max_entries: int = DEFAULT_MAX_ENTRIES
    zset_max_value: int = DEFAULT_MAX_VALUE


class LimitedServer(KeyspaceServer, Protocol):
    """A server the hash and sorted-set commands can ask for the encoding thresholds."""

    @property
    def encoding_limits(self) -> EncodingLimits: ...


class ProtocolClient(KeyspaceClient, Protocol):
    """A connection whose RESP version shapes a reply (ZRANGE WITHSCORES in RESP3)."""

    protocol: int


def grown(header: int, entries: int, longest: int, max_entries: int, max_value: int) -> int:
    """The encoding after a write: GROWN once past either threshold (or GROWN already)."""
    if header == GROWN or entries > max_entries or longest > max_value:
        return GROWN
    return COMPACT


__all__ = [
    "COMPACT",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_VALUE",
    "GROWN",
    "EncodingLimits",
    "LimitedServer",
    "ProtocolClient",
    "grown",
]
