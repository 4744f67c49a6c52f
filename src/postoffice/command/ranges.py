"""The commands on a part of a string value: GETRANGE (SUBSTR), SETRANGE, GETBIT, SETBIT and
LCS; each an Op (command/ops.py) on the keyspace, with Redis's replies and error wording."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from postoffice.command.errors import CommandError
from postoffice.command.keyspace import Answer, KeyspaceClient, KeyspaceServer, keyspace_of
from postoffice.command.layout import RAW
from postoffice.command.ops import KEEP, Entry, Op, Outcome, SetValue
from postoffice.command.strings import SYNTAX, parse_int
from postoffice.core.resp import Array, Bulk, Integer, Reply, bulk
from postoffice.store import MAX_VALUE_BYTES

#: Redis's limit is proto-max-bulk-len (512 MiB); a value here is at most the store's.
TOO_BIG: Final = "string exceeds maximum allowed size (proto-max-bulk-len)"
BIT_OFFSET: Final = "bit offset is not an integer or out of range"
#: LCS fills a table of (len(a) + 1) x (len(b) + 1) cells in Python: 4 million of them take
#: about 2 s of the event loop, so longer strings are refused before any is allocated.
MAX_LCS_CELLS: Final = 4_000_000


def _value(entry: Entry | None) -> bytes:
    return b"" if entry is None else entry.value


def substring(value: bytes, start: int, end: int) -> bytes:
    """`value[start..end]` as GETRANGE reads it: both ends inclusive, negative from the end,
    clamped to the value."""
    size = len(value)
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start = max(size + start, 0)
    if end < 0:
        end = max(size + end, 0)
    end = min(end, size - 1)
    if size == 0 or start > end:
        return b""
    return value[start : end + 1]


def cmd_getrange(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """GETRANGE key start end (and SUBSTR): the bytes from start to end, inclusive."""
    start, end = parse_int(args[2]), parse_int(args[3])

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Bulk(substring(_value(entries[0]), start, end)))

    return keyspace_of(server).run(Op(reads=((client.db, args[1]),), compute=compute))


def cmd_setrange(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SETRANGE key offset value: `value` written at `offset` (the gap filled with NUL
    bytes); the new length. The expiry is kept; an empty `value` writes nothing. The value
    is "raw" to OBJECT ENCODING from then on (layout.RAW), as Redis's."""
    db, key, piece = client.db, args[1], args[3]
    offset = parse_int(args[2])
    if offset < 0:
        raise CommandError("offset is out of range")
    if piece and offset + len(piece) > MAX_VALUE_BYTES:  # before any byte is set aside
        raise CommandError(TOO_BIG)

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        current = _value(entry)
        if not piece:
            return Outcome(reply=Integer(value=len(current)))
        padded = current.ljust(offset, b"\0")
        value = padded[:offset] + piece + padded[offset + len(piece) :]
        write = SetValue(db=db, key=key, value=value, expire_at=KEEP, kind=RAW)
        return Outcome(reply=Integer(value=len(value)), writes=(write,))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute))


def _bit_offset(raw: bytes) -> int:
    try:
        offset = parse_int(raw)
    except CommandError:
        raise CommandError(BIT_OFFSET) from None
    if offset < 0 or offset >> 3 >= MAX_VALUE_BYTES:
        raise CommandError(BIT_OFFSET)
    return offset


def cmd_getbit(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """GETBIT key offset: the bit at `offset` (bit 0 is the first byte's highest), 0 past
    the end or for a missing key."""
    offset = _bit_offset(args[2])

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        value = _value(entries[0])
        byte = offset >> 3
        bit = (value[byte] >> (7 - (offset & 7))) & 1 if byte < len(value) else 0
        return Outcome(reply=Integer(value=bit))

    return keyspace_of(server).run(Op(reads=((client.db, args[1]),), compute=compute))


def cmd_setbit(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SETBIT key offset 0|1: the bit set or cleared (the value grown with NUL bytes as
    needed); the bit it was. The expiry is kept."""
    db, key = client.db, args[1]
    offset = _bit_offset(args[2])
    if args[3] not in (b"0", b"1"):
        raise CommandError("bit is not an integer or out of range")
    on = args[3] == b"1"

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        byte, mask = offset >> 3, 0x80 >> (offset & 7)
        value = bytearray(_value(entries[0]).ljust(byte + 1, b"\0"))
        old = int(bool(value[byte] & mask))
        value[byte] = value[byte] | mask if on else value[byte] & ~mask
        write = SetValue(db=db, key=key, value=bytes(value), expire_at=KEEP, kind=RAW)
        return Outcome(reply=Integer(value=old), writes=(write,))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute))


# -- LCS ----------------------------------------------------------------------------------------


def _lcs_options(args: list[bytes]) -> tuple[bool, bool, int, bool]:
    """(LEN, IDX, MINMATCHLEN, WITHMATCHLEN) of LCS's options; Redis's errors."""
    want_len = want_idx = with_len = False
    min_len = 0
    i = 3
    while i < len(args):
        option = args[i].upper()
        if option == b"LEN":
            want_len = True
        elif option == b"IDX":
            want_idx = True
        elif option == b"WITHMATCHLEN":
            with_len = True
        elif option == b"MINMATCHLEN" and i + 1 < len(args):
            min_len = max(parse_int(args[i + 1]), 0)
            i += 1
        else:
            raise CommandError(SYNTAX)
        i += 1
    if want_len and want_idx:
        raise CommandError("If you want both the length and indexes, please just use IDX.")
    return want_len, want_idx, min_len, with_len


def _lcs_table(a: bytes, b: bytes) -> list[list[int]]:
    """table[i][j]: the length of the LCS of a[:i] and b[:j]."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        row, above, ai = table[i], table[i - 1], a[i - 1]
        for j in range(1, len(b) + 1):
            if ai == b[j - 1]:
                row[j] = above[j - 1] + 1
            else:
                row[j] = max(above[j], row[j - 1])
    return table


def _range(first: int, last: int) -> Reply:
    return Array(items=(Integer(value=first), Integer(value=last)))


def lcs_reply(a: bytes, b: bytes, options: tuple[bool, bool, int, bool]) -> Reply:
    """LCS's reply for strings `a` and `b`: the common subsequence, its length, or its
    matching ranges (from the end backwards, as Redis lists them)."""
    want_len, want_idx, min_len, with_len = options
    table = _lcs_table(a, b)
    length = table[len(a)][len(b)]
    if want_len:
        return Integer(value=length)
    common = bytearray(length)
    matches: list[Reply] = []
    i, j, k = len(a), len(b), length
    # One match is a run of positions consecutive in both strings.
    run: tuple[int, int, int, int] | None = None  # a_first, a_last, b_first, b_last

    def close(span: tuple[int, int, int, int] | None) -> None:
        if span is None or span[1] - span[0] + 1 < min_len:
            return
        items: list[Reply] = [_range(span[0], span[1]), _range(span[2], span[3])]
        if with_len:
            items.append(Integer(value=span[1] - span[0] + 1))
        matches.append(Array(items=tuple(items)))

    while i > 0 and j > 0:
        if a[i - 1] == b[j - 1]:
            k -= 1
            common[k] = a[i - 1]
            if run is not None and run[0] == i and run[2] == j:
                run = (i - 1, run[1], j - 1, run[3])
            else:
                close(run)
                run = (i - 1, i - 1, j - 1, j - 1)
            i -= 1
            j -= 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    close(run)
    if not want_idx:
        return Bulk(bytes(common))
    return Array(
        items=(
            bulk("matches"),
            Array(items=tuple(matches)),
            bulk("len"),
            Integer(value=length),
        )
    )


def cmd_lcs(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """LCS key1 key2 [LEN] [IDX] [MINMATCHLEN n] [WITHMATCHLEN]: the longest common
    subsequence of two values (a missing key reads as empty); refused past MAX_LCS_CELLS."""
    options = _lcs_options(args)
    db = client.db

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        a, b = _value(entries[0]), _value(entries[1])
        cells = (len(a) + 1) * (len(b) + 1)
        if cells > MAX_LCS_CELLS:
            raise CommandError(
                f"LCS of {len(a)} and {len(b)} bytes needs {cells} cells, over the limit of "
                f"{MAX_LCS_CELLS}"
            )
        return Outcome(reply=lcs_reply(a, b, options))

    return keyspace_of(server).run(Op(reads=((db, args[1]), (db, args[2])), compute=compute))


__all__ = [
    "MAX_LCS_CELLS",
    "cmd_getbit",
    "cmd_getrange",
    "cmd_lcs",
    "cmd_setbit",
    "cmd_setrange",
    "lcs_reply",
    "substring",
]
