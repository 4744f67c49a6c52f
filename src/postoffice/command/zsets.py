"""Sorted sets, kept whole in one store value each: ZADD, ZINCRBY, ZSCORE, ZCARD, ZREM,
ZRANGE (by index, BYSCORE or BYLEX, REV, LIMIT, WITHSCORES), ZREVRANGE, ZRANGEBYSCORE."""

# A stored sorted set is one byte, its encoding (command/encodings.py), then each member
# and its score (8 bytes, a big-endian double) as `lists.encode_items` writes items,
# ordered by score then member; every command reads and rewrites all of it.

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

from postoffice.command.encodings import COMPACT, GROWN, LimitedServer, ProtocolClient, grown
from postoffice.command.errors import CommandError, WrongTypeError
from postoffice.command.keyspace import Answer, KeyspaceClient, KeyspaceServer, keyspace_of
from postoffice.command.layout import ZSET
from postoffice.command.lists import decode_items, encode_items
from postoffice.command.ops import WRONG_TYPE, Compute, Drop, Entry, Op, Outcome, SetValue
from postoffice.command.strings import SYNTAX, parse_int
from postoffice.core.resp import NIL, Array, Bulk, Double, Integer, Reply

NOT_FLOAT: Final = "value is not a valid float"
_SCORE: Final = struct.Struct(">d")
#: The bytes Redis's strtod would refuse or Python's float() reads otherwise: blanks around
#: the number and the digit separator; NaN is refused after parsing.
_NOT_IN_A_FLOAT: Final = frozenset(b" \t\r\n\v\f_")


def parse_score(raw: bytes, error: str = NOT_FLOAT) -> float:
    """A score as Redis reads one (strtod: `1.5`, `-3e2`, `inf`, `-inf`); CommandError
    `error` for anything else, NaN included."""
    if not raw or any(byte in _NOT_IN_A_FLOAT for byte in raw):
        raise CommandError(error)
    try:
        # strtod reads C99 hexadecimal floats too (0x10 is 16); float() only by name
        hexadecimal = b"x" in raw.lower()
        value = float.fromhex(raw.decode("ascii")) if hexadecimal else float(raw)
    except (ValueError, UnicodeDecodeError):
        raise CommandError(error) from None
    if math.isnan(value):
        raise CommandError(error)
    return value


def encode_zset(header: int, members: dict[bytes, float]) -> bytes:
    """A sorted set's stored value: the encoding byte, then members and scores in order."""
    ordered = sorted(members.items(), key=lambda pair: (pair[1], pair[0]))
    return bytes((header,)) + encode_items(
        [part for member, score in ordered for part in (member, _SCORE.pack(score))]
    )


def decode_zset(raw: bytes) -> tuple[int, dict[bytes, float]]:
    """(encoding byte, member -> score in order) of a stored sorted set; CommandError when
    it is damaged."""
    if not raw or raw[0] not in (COMPACT, GROWN):
        raise CommandError("stored sorted set is damaged")
    items = decode_items(raw[1:])
    if len(items) % 2 or any(len(score) != _SCORE.size for score in items[1::2]):
        raise CommandError("stored sorted set is damaged")
    return raw[0], {m: _SCORE.unpack(s)[0] for m, s in zip(items[::2], items[1::2], strict=True)}


def zset_encoding(raw: bytes) -> str:
    """OBJECT ENCODING of a stored sorted set: listpack or skiplist."""
    return "skiplist" if decode_zset(raw)[0] == GROWN else "listpack"


def _members(entry: Entry | None) -> tuple[int, dict[bytes, float]]:
    if entry is None:
        return COMPACT, {}
    if entry.kind != ZSET:
        raise WrongTypeError(WRONG_TYPE)
    return decode_zset(entry.value)


def _run(server: KeyspaceServer, client: KeyspaceClient, key: bytes, compute: Compute) -> Answer:
    op = Op(reads=((client.db, key),), compute=compute, any_kind=True)  # kinds checked here
    return keyspace_of(server).run(op)


def _store(
    server: LimitedServer,
    db: int,
    key: bytes,
    entry: Entry | None,
    header: int,
    members: dict[bytes, float],
    written: Sequence[bytes],
) -> Drop | SetValue:
    """The write that leaves `members` under `key` (none left: deleted), grown to a
    skiplist when they or the longest of the `written` members pass the thresholds."""
    if not members:
        return Drop(db=db, key=key)
    limits = server.encoding_limits
    if entry is None and limits.zset_max_entries == 0:
        header = GROWN  # Redis creates it a skiplist outright
    longest = max(map(len, written), default=0)
    header = grown(header, len(members), longest, limits.zset_max_entries, limits.zset_max_value)
    at = None if entry is None else entry.expire_at
    return SetValue(db=db, key=key, value=encode_zset(header, members), expire_at=at, kind=ZSET)


# -- ZADD and ZINCRBY -------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class _AddFlags:
    nx: bool = False
    xx: bool = False
    gt: bool = False
    lt: bool = False
    ch: bool = False
    incr: bool = False


def _parse_zadd(args: list[bytes]) -> tuple[_AddFlags, list[tuple[float, bytes]]]:
    names = {b"NX", b"XX", b"GT", b"LT", b"CH", b"INCR"}
    given: set[bytes] = set()
    i = 2
    while i < len(args) and (option := args[i].upper()) in names:
        given.add(option)
        i += 1
    rest = args[i:]
    if not rest or len(rest) % 2:
        raise CommandError(SYNTAX)
    flags = _AddFlags(**{name.decode().lower(): True for name in given})
    if flags.nx and flags.xx:
        raise CommandError("XX and NX options at the same time are not compatible")
    if (flags.gt and flags.nx) or (flags.lt and flags.nx) or (flags.gt and flags.lt):
        raise CommandError("GT, LT, and/or NX options at the same time are not compatible")
    if flags.incr and len(rest) > 2:
        raise CommandError("INCR option supports a single increment-element pair")
    pairs = [
        (parse_score(score), member) for score, member in zip(rest[::2], rest[1::2], strict=True)
    ]
    return flags, pairs


def _zadd(
    server: LimitedServer,
    client: KeyspaceClient,
    key: bytes,
    flags: _AddFlags,
    pairs: list[tuple[float, bytes]],
) -> Answer:
    db = client.db

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        if entry is None and flags.xx:
            return Outcome(reply=NIL if flags.incr else Integer(value=0))
        header, members = _members(entry)
        added = updated = 0
        result: float | None = None
        for score, member in pairs:
            current = members.get(member)
            if current is None:
                if flags.xx:
                    continue
                members[member] = result = score
                added += 1
                continue
            if flags.nx:
                continue
            new = current + score if flags.incr else score
            if math.isnan(new):
                raise CommandError("resulting score is not a number (NaN)")
            if (flags.lt and new >= current) or (flags.gt and new <= current):
                continue
            result = new
            if new != current:
                members[member] = new
                updated += 1
        reply: Reply
        if flags.incr:
            reply = NIL if result is None else Double(value=result)
        else:
            reply = Integer(value=added + updated if flags.ch else added)
        if not added and not updated:
            return Outcome(reply=reply)
        write = _store(server, db, key, entry, header, members, [m for _, m in pairs])
        return Outcome(reply=reply, writes=(write,))

    return _run(server, client, key, compute)


def cmd_zadd(server: LimitedServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...]: how many
    members were added (CH: added or changed); with INCR the new score, or nil when a
    condition held it back."""
    flags, pairs = _parse_zadd(args)
    return _zadd(server, client, args[1], flags, pairs)


def cmd_zincrby(server: LimitedServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """ZINCRBY key increment member: the member's score plus `increment` (a new member
    starts at 0); the new score."""
    step = parse_score(args[2])
    return _zadd(server, client, args[1], _AddFlags(incr=True), [(step, args[3])])


# -- reads and ZREM --------------------------------------------------------------------------


def cmd_zscore(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """ZSCORE key member: the member's score, nil when it or the key is missing."""
    member = args[2]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        score = _members(entries[0])[1].get(member)
        return Outcome(reply=NIL if score is None else Double(value=score))

    return _run(server, client, args[1], compute)


def cmd_zcard(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """ZCARD key: how many members, 0 for a missing key."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=Integer(value=len(_members(entries[0])[1])))

    return _run(server, client, args[1], compute)


def cmd_zrem(server: LimitedServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """ZREM key member [member ...]: how many were members (and are no more); a sorted set
    left empty is deleted."""
    db, key, gone = client.db, args[1], args[2:]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        header, members = _members(entry)
        removed = sum(members.pop(member, None) is not None for member in gone)
        if not removed:
            return Outcome(reply=Integer(value=0))
        write = _store(server, db, key, entry, header, members, ())
        return Outcome(reply=Integer(value=removed), writes=(write,))

    return _run(server, client, key, compute)


# -- ZRANGE and its older forms --------------------------------------------------------------

_RANK, _SCORE_RANGE, _LEX = "rank", "score", "lex"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class _Bound:
    """One end of a BYSCORE or BYLEX range; `value` None is unbounded (BYLEX's - and +)."""

    value: float | bytes | None
    exclusive: bool = False


def _score_bound(raw: bytes) -> _Bound:
    error = "min or max is not a float"
    if raw[:1] == b"(":
        return _Bound(value=parse_score(raw[1:], error), exclusive=True)
    return _Bound(value=parse_score(raw, error))


def _lex_bound(raw: bytes) -> _Bound:
    if raw in (b"-", b"+"):
        return _Bound(value=None, exclusive=raw == b"+")  # exclusive marks the top
    if raw[:1] in (b"[", b"("):
        return _Bound(value=raw[1:], exclusive=raw[:1] == b"(")
    raise CommandError("min or max not valid string range item")


def _above(value: float | bytes, low: _Bound) -> bool:
    if low.value is None:
        return not low.exclusive  # "-" is below all, "+" above all
    return value > low.value if low.exclusive else value >= low.value  # type: ignore[operator]  # one kind per range


def _below(value: float | bytes, high: _Bound) -> bool:
    if high.value is None:
        return high.exclusive
    return value < high.value if high.exclusive else value <= high.value  # type: ignore[operator]  # one kind per range


def _zrange(
    server: KeyspaceServer,
    client: ProtocolClient,
    args: list[bytes],
    *,
    by: str | None = None,
    rev: bool | None = None,
    options_from: int = 4,
) -> Answer:
    withscores = False
    offset, limit = 0, -1
    limited = False
    i = options_from
    while i < len(args):
        option = args[i].upper()
        if option == b"WITHSCORES":
            withscores = True
        elif option == b"LIMIT" and len(args) - i - 1 >= 2:
            offset, limit = parse_int(args[i + 1]), parse_int(args[i + 2])
            limited = True
            i += 2
        elif rev is None and option == b"REV":
            rev = True
        elif by is None and option == b"BYSCORE":
            by = _SCORE_RANGE
        elif by is None and option == b"BYLEX":
            by = _LEX
        else:
            raise CommandError(SYNTAX)
        i += 1
    by = by or _RANK
    reverse = bool(rev)
    if limited and limit != -1 and by == _RANK:
        raise CommandError(
            "syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
        )
    if withscores and by == _LEX:
        raise CommandError("syntax error, WITHSCORES not supported in combination with BYLEX")
    low_raw, high_raw = args[2], args[3]
    if reverse and by != _RANK:
        low_raw, high_raw = high_raw, low_raw
    if by == _RANK:
        start, stop = parse_int(low_raw), parse_int(high_raw)
    elif by == _SCORE_RANGE:
        low, high = _score_bound(low_raw), _score_bound(high_raw)
    else:
        low, high = _lex_bound(low_raw), _lex_bound(high_raw)
    resp3 = client.protocol == 3

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        ordered = list(_members(entries[0])[1].items())
        if reverse:
            ordered.reverse()
        if by == _RANK:
            size = len(ordered)
            first = size + start if start < 0 else start
            last = size + stop if stop < 0 else stop
            first = max(first, 0)
            chosen = [] if first > last or first >= size else ordered[first : last + 1]
        else:
            index = 1 if by == _SCORE_RANGE else 0
            chosen = [
                pair for pair in ordered if _above(pair[index], low) and _below(pair[index], high)
            ]
            if offset < 0:
                chosen = []
            chosen = chosen[offset:] if limit < 0 else chosen[offset : offset + limit]
        items: list[Reply] = []
        for member, score in chosen:
            if not withscores:
                items.append(Bulk(member))
            elif resp3:
                items.append(Array(items=(Bulk(member), Double(value=score))))
            else:
                items.extend((Bulk(member), Double(value=score)))
        return Outcome(reply=Array(items=items))

    return _run(server, client, args[1], compute)


def cmd_zrange(server: KeyspaceServer, client: ProtocolClient, args: list[bytes]) -> Answer:
    """ZRANGE key start stop [BYSCORE|BYLEX] [REV] [LIMIT offset count] [WITHSCORES]:
    the members in the range, in order (REV: highest first); with scores, member and
    score in turn (RESP2) or as pairs (RESP3)."""
    return _zrange(server, client, args)


def cmd_zrevrange(server: KeyspaceServer, client: ProtocolClient, args: list[bytes]) -> Answer:
    """ZREVRANGE key start stop [WITHSCORES]: ZRANGE ... REV."""
    return _zrange(server, client, args, by=_RANK, rev=True)


def cmd_zrangebyscore(server: KeyspaceServer, client: ProtocolClient, args: list[bytes]) -> Answer:
    """ZRANGEBYSCORE key min max [WITHSCORES] [LIMIT offset count]: ZRANGE ... BYSCORE."""
    return _zrange(server, client, args, by=_SCORE_RANGE, rev=False)


__all__ = [
    "NOT_FLOAT",
    "cmd_zadd",
    "cmd_zcard",
    "cmd_zincrby",
    "cmd_zrange",
    "cmd_zrangebyscore",
    "cmd_zrem",
    "cmd_zrevrange",
    "cmd_zscore",
    "decode_zset",
    "encode_zset",
    "parse_score",
    "zset_encoding",
]
