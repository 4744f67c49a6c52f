"""The string commands beyond GET/SET's plain form: SET's options, INCR and its kin, APPEND,
STRLEN, GETSET, GETDEL, GETEX, SETNX, SETEX, PSETEX, MSETNX; each an Op (command/ops.py).
Errors are worded as Redis words them, since clients and Redis's tests match on them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Final

from postoffice.command.errors import CommandError
from postoffice.command.keyspace import Answer, KeyspaceClient, KeyspaceServer, keyspace_of
from postoffice.command.layout import RAW, STRING
from postoffice.command.ops import KEEP, Drop, Entry, Op, Outcome, SetExpiry, SetValue
from postoffice.core.resp import NIL, OK, Bulk, Integer, Reply
from postoffice.store import MAX_VALUE_BYTES

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
#: The longest decimal a 64-bit integer takes ("-9223372036854775808"), as Redis's string2ll.
_MAX_INT_DIGITS: Final = 20
#: Redis keeps deadlines in signed 64-bit milliseconds; anything past overflows.
MAX_DEADLINE_MS: Final = INT64_MAX

NOT_INTEGER: Final = "value is not an integer or out of range"
NOT_FLOAT: Final = "value is not a valid float"
OVERFLOW: Final = "increment or decrement would overflow"
SYNTAX: Final = "syntax error"


def parse_int(raw: bytes) -> int:
    """A 64-bit integer written as Redis's string2ll reads one (no sign but '-', no
    leading zeros or spaces); CommandError "value is not an integer or out of range"."""
    if not raw or len(raw) > _MAX_INT_DIGITS:
        raise CommandError(NOT_INTEGER)
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or (digits[:1] == b"0" and raw != b"0"):
        raise CommandError(NOT_INTEGER)
    value = int(raw)
    if not INT64_MIN <= value <= INT64_MAX:
        raise CommandError(NOT_INTEGER)
    return value


def parse_float(raw: bytes) -> float:
    """A finite or infinite float as Redis's string2ld reads one (no spaces, no NaN);
    CommandError "value is not a valid float"."""
    if not raw or raw[:1].isspace() or raw[-1:].isspace():
        raise CommandError(NOT_FLOAT)
    try:
        value = float(raw)
    except ValueError:
        raise CommandError(NOT_FLOAT) from None
    if math.isnan(value) or b"_" in raw:
        raise CommandError(NOT_FLOAT)
    return value


def format_float(value: float) -> bytes:
    """A float as INCRBYFLOAT replies it: plain decimal, no exponent, no trailing zeros."""
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text.encode()


def _check_size(value: bytes) -> bytes:
    if len(value) > MAX_VALUE_BYTES:
        raise CommandError("string exceeds maximum allowed size (proto-max-bulk-len)")
    return value


# -- INCR and its kin -----------------------------------------------------------------------


def _incr_by(server: KeyspaceServer, client: KeyspaceClient, key: bytes, by: int) -> Answer:
    db = client.db

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        current = 0 if entry is None else parse_int(entry.value)
        total = current + by
        if not INT64_MIN <= total <= INT64_MAX:
            raise CommandError(OVERFLOW)
        value = str(total).encode()
        write = SetValue(db=db, key=key, value=value, expire_at=KEEP)
        return Outcome(reply=Integer(value=total), writes=(write,))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute))


def cmd_incr(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """INCR key: the value plus one (a missing key counts as 0); its expiry is kept."""
    return _incr_by(server, client, args[1], 1)


def cmd_decr(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """DECR key: the value minus one."""
    return _incr_by(server, client, args[1], -1)


def cmd_incrby(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """INCRBY key increment."""
    return _incr_by(server, client, args[1], parse_int(args[2]))


def cmd_decrby(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """DECRBY key decrement (Redis refuses the one decrement it cannot negate)."""
    by = parse_int(args[2])
    if by == INT64_MIN:
        raise CommandError("decrement would overflow")
    return _incr_by(server, client, args[1], -by)


def cmd_incrbyfloat(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """INCRBYFLOAT key increment: the sum, as a decimal string."""
    db, key = client.db, args[1]
    by = parse_float(args[2])

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        current = 0.0 if entry is None else parse_float(entry.value)
        total = current + by
        if math.isnan(total) or math.isinf(total):
            raise CommandError("increment would produce NaN or Infinity")
        value = format_float(total)
        write = SetValue(db=db, key=key, value=value, expire_at=KEEP)
        return Outcome(reply=Bulk(value), writes=(write,))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute))


# -- APPEND, STRLEN, GETSET, GETDEL -----------------------------------------------------------


def cmd_append(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """APPEND key value: the new length; the expiry is kept. A value appended to is "raw"
    to OBJECT ENCODING from then on, as Redis's; a new key's is not."""
    db, key, tail = client.db, args[1], args[2]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        value = _check_size(tail if entry is None else entry.value + tail)
        kind = STRING if entry is None else RAW
        write = SetValue(db=db, key=key, value=value, expire_at=KEEP, kind=kind)
        return Outcome(reply=Integer(value=len(value)), writes=(write,))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute))


def cmd_strlen(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """STRLEN key: the value's length, 0 for a missing key."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        return Outcome(reply=Integer(value=0 if entry is None else len(entry.value)))

    return keyspace_of(server).run(Op(reads=((client.db, args[1]),), compute=compute))


def _old(entry: Entry | None) -> Reply:
    return NIL if entry is None else Bulk(entry.value)


def cmd_getset(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """GETSET key value: the old value (or nil); the new one has no expiry."""
    db, key, value = client.db, args[1], args[2]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=_old(entries[0]), writes=(SetValue(db=db, key=key, value=value),))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute))


def cmd_getdel(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """GETDEL key: the value (or nil), and the key deleted."""
    db, key = client.db, args[1]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        writes = () if entry is None else (Drop(db=db, key=key),)
        return Outcome(reply=_old(entry), writes=writes)

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute))


# -- SET's options, SETNX, SETEX, PSETEX -----------------------------------------------------


def deadline(raw: bytes, *, unit_ms: int, absolute: bool, now: int, command: str) -> int:
    """The unix-ms deadline an expire argument names; CommandError when it is not an
    integer, or not positive, or past what 64-bit milliseconds hold."""
    amount = parse_int(raw)
    if amount <= 0:
        raise CommandError(f"invalid expire time in '{command}' command")
    at = amount * unit_ms + (0 if absolute else now)
    if at > MAX_DEADLINE_MS:
        raise CommandError(f"invalid expire time in '{command}' command")
    return at


def _set(
    server: KeyspaceServer,
    client: KeyspaceClient,
    key: bytes,
    value: bytes,
    *,
    when: bytes = b"",
    get: bool = False,
    expiry: tuple[bytes, bytes] | None = None,
    keep_ttl: bool = False,
    command: str = "set",
) -> Answer:
    db = client.db
    keyspace = keyspace_of(server)
    if expiry is not None:  # checked before anything is read, as Redis does
        kind, amount = expiry
        unit_ms = 1 if kind in (b"PX", b"PXAT") else 1000
        deadline(amount, unit_ms=unit_ms, absolute=kind.endswith(b"AT"), now=0, command=command)

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0] if entries else None
        old: Reply = _old(entry) if get else OK
        if (when == b"NX" and entry is not None) or (when == b"XX" and entry is None):
            return Outcome(reply=old if get else NIL)
        at: int | None = KEEP if keep_ttl else None
        if expiry is not None:
            kind, amount = expiry
            unit_ms = 1 if kind in (b"PX", b"PXAT") else 1000
            at = deadline(
                amount, unit_ms=unit_ms, absolute=kind.endswith(b"AT"), now=now, command=command
            )
            if at <= now:  # already past (EXAT in the past): the key is gone, as in Redis
                return Outcome(reply=old, writes=(Drop(db=db, key=key),))
        return Outcome(reply=old, writes=(SetValue(db=db, key=key, value=value, expire_at=at),))

    if not when and not get:  # nothing read: the write alone
        return keyspace.run(Op(reads=(), writes_to=((db, key),), compute=compute))
    # SET overwrites a key of any kind; only its GET option needs the old one a string
    return keyspace.run(Op(reads=((db, key),), compute=compute, any_kind=not get))


def set_with_options(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SET key value with its options; Redis's syntax errors for a bad combination."""
    when = b""
    get = keep_ttl = False
    expiry: tuple[bytes, bytes] | None = None
    i = 3
    while i < len(args):
        option = args[i].upper()
        if option in (b"NX", b"XX") and not when:
            when = option
        elif option == b"GET" and not get:
            get = True
        elif option == b"KEEPTTL" and expiry is None and not keep_ttl:
            keep_ttl = True
        elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and expiry is None and not keep_ttl:
            if i + 1 >= len(args):
                raise CommandError(SYNTAX)
            expiry = (option, args[i + 1])
            i += 1
        else:
            raise CommandError(SYNTAX)
        i += 1
    return _set(
        server, client, args[1], args[2], when=when, get=get, expiry=expiry, keep_ttl=keep_ttl
    )


def cmd_set(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]: stored (durably
    when the store's durability is `always`)."""
    if len(args) > 3:
        return set_with_options(server, client, args)
    return keyspace_of(server).set(args[1], args[2], client.db)


def cmd_setnx(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SETNX key value: 1 when set, 0 when the key existed."""
    db, key, value = client.db, args[1], args[2]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        if entries[0] is not None:
            return Outcome(reply=Integer(value=0))
        return Outcome(reply=Integer(value=1), writes=(SetValue(db=db, key=key, value=value),))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute, any_kind=True))


def cmd_setex(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SETEX key seconds value."""
    return _set(server, client, args[1], args[3], expiry=(b"EX", args[2]), command="setex")


def cmd_psetex(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """PSETEX key milliseconds value."""
    return _set(server, client, args[1], args[3], expiry=(b"PX", args[2]), command="psetex")


# -- GETEX, MSETNX ----------------------------------------------------------------------------


def cmd_getex(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]: the value (or nil), its expiry set or
    removed as asked; a deadline already past deletes the key, as in Redis."""
    db, key = client.db, args[1]
    persist = False
    expiry: tuple[bytes, bytes] | None = None
    i = 2
    while i < len(args):
        option = args[i].upper()
        if option == b"PERSIST" and expiry is None and not persist:
            persist = True
        elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and expiry is None and not persist:
            if i + 1 >= len(args):
                raise CommandError(SYNTAX)
            expiry = (option, args[i + 1])
            i += 1
        else:
            raise CommandError(SYNTAX)
        i += 1
    if expiry is not None:  # checked before anything is read, as Redis does
        kind, amount = expiry
        unit_ms = 1 if kind in (b"PX", b"PXAT") else 1000
        deadline(amount, unit_ms=unit_ms, absolute=kind.endswith(b"AT"), now=0, command="getex")

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        if entry is None:
            return Outcome(reply=NIL)
        reply = Bulk(entry.value)
        if persist and entry.expire_at is not None:
            return Outcome(reply=reply, writes=(SetExpiry(db=db, key=key, expire_at=None),))
        if expiry is None:
            return Outcome(reply=reply)
        kind, amount = expiry
        unit_ms = 1 if kind in (b"PX", b"PXAT") else 1000
        at = deadline(
            amount, unit_ms=unit_ms, absolute=kind.endswith(b"AT"), now=now, command="getex"
        )
        if at <= now:
            return Outcome(reply=reply, writes=(Drop(db=db, key=key),))
        return Outcome(reply=reply, writes=(SetExpiry(db=db, key=key, expire_at=at),))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute))


def cmd_msetnx(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """MSETNX key value [key value ...]: 1 when every key was missing and all are set
    (atomically), else 0 and nothing is set; a key named twice takes its last value."""
    if len(args) % 2 == 0:
        raise CommandError("wrong number of arguments for 'msetnx' command")
    db = client.db
    pairs = dict(zip(args[1::2], args[2::2], strict=True))
    keys = tuple((db, key) for key in pairs)

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        if any(entry is not None for entry in entries):
            return Outcome(reply=Integer(value=0))
        writes = [SetValue(db=db, key=key, value=value) for key, value in pairs.items()]
        return Outcome(reply=Integer(value=1), writes=writes)

    return keyspace_of(server).run(Op(reads=keys, compute=compute, any_kind=True))


__all__ = [
    "cmd_append",
    "cmd_decr",
    "cmd_decrby",
    "cmd_getdel",
    "cmd_getex",
    "cmd_getset",
    "cmd_incr",
    "cmd_incrby",
    "cmd_incrbyfloat",
    "cmd_msetnx",
    "cmd_psetex",
    "cmd_set",
    "cmd_setex",
    "cmd_setnx",
    "cmd_strlen",
    "deadline",
    "format_float",
    "parse_float",
    "parse_int",
    "set_with_options",
]
