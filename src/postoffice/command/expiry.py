"""The expiry commands: EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT (with NX/XX/GT/LT), TTL, PTTL,
EXPIRETIME, PEXPIRETIME and PERSIST; each an Op on the keyspace, with Redis's replies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from postoffice.command.errors import CommandError
from postoffice.command.keyspace import Answer, KeyspaceClient, KeyspaceServer, keyspace_of
from postoffice.command.ops import Drop, Entry, Op, Outcome, SetExpiry
from postoffice.command.strings import INT64_MAX, INT64_MIN, parse_int
from postoffice.core.resp import Integer

_NO_KEY: Final = -2
_NO_EXPIRY: Final = -1


def _conditions(options: Sequence[bytes]) -> bytes:
    """The one condition of NX, XX, GT, LT given (b"" for none); Redis's errors otherwise."""
    seen: set[bytes] = set()
    for raw in options:
        option = raw.upper()
        if option not in (b"NX", b"XX", b"GT", b"LT"):
            raise CommandError(f"Unsupported option {raw.decode('utf-8', 'replace')}")
        seen.add(option)
    if b"NX" in seen and len(seen) > 1:
        raise CommandError("NX and XX, GT or LT options at the same time are not compatible")
    if b"GT" in seen and b"LT" in seen:
        raise CommandError("GT and LT options at the same time are not compatible")
    # XX may go with GT or LT; the comparison then also needs an expiry, which XX demands
    for option in (b"GT", b"LT", b"NX", b"XX"):
        if option in seen:
            return option + (b"XX" if option in (b"GT", b"LT") and b"XX" in seen else b"")
    return b""


def _expire(
    server: KeyspaceServer,
    client: KeyspaceClient,
    args: list[bytes],
    *,
    unit_ms: int,
    absolute: bool,
) -> Answer:
    db, key = client.db, args[1]
    command = args[0].decode("utf-8", "replace").lower()
    amount = parse_int(args[2])
    condition = _conditions(args[3:])
    invalid = f"invalid expire time in '{command}' command"
    # C's division truncates toward zero, as Redis's `when < LLONG_MIN / 1000` does
    if not -(-INT64_MIN // unit_ms) <= amount <= INT64_MAX // unit_ms:
        raise CommandError(invalid)

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        if entry is None:
            return Outcome(reply=Integer(value=0))
        at = amount * unit_ms + (0 if absolute else now)
        if not INT64_MIN <= at <= INT64_MAX:
            raise CommandError(invalid)
        current = entry.expire_at
        if condition.endswith(b"XX") and current is None:
            return Outcome(reply=Integer(value=0))
        if condition == b"NX" and current is not None:
            return Outcome(reply=Integer(value=0))
        if condition.startswith(b"GT") and (current is None or at <= current):
            return Outcome(reply=Integer(value=0))
        if condition.startswith(b"LT") and current is not None and at >= current:
            return Outcome(reply=Integer(value=0))
        if at <= now:  # a deadline already past deletes the key, as in Redis
            return Outcome(reply=Integer(value=1), writes=(Drop(db=db, key=key),))
        return Outcome(reply=Integer(value=1), writes=(SetExpiry(db=db, key=key, expire_at=at),))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute, any_kind=True))


def cmd_expire(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """EXPIRE key seconds [NX|XX|GT|LT]: 1 when the expiry was set, else 0."""
    return _expire(server, client, args, unit_ms=1000, absolute=False)


def cmd_pexpire(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """PEXPIRE key milliseconds [NX|XX|GT|LT]."""
    return _expire(server, client, args, unit_ms=1, absolute=False)


def cmd_expireat(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """EXPIREAT key unix-seconds [NX|XX|GT|LT]."""
    return _expire(server, client, args, unit_ms=1000, absolute=True)


def cmd_pexpireat(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """PEXPIREAT key unix-milliseconds [NX|XX|GT|LT]."""
    return _expire(server, client, args, unit_ms=1, absolute=True)


def _ttl(
    server: KeyspaceServer, client: KeyspaceClient, key: bytes, *, ms: bool, at: bool
) -> Answer:
    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        if entry is None:
            return Outcome(reply=Integer(value=_NO_KEY))
        if entry.expire_at is None:
            return Outcome(reply=Integer(value=_NO_EXPIRY))
        left = entry.expire_at if at else max(entry.expire_at - now, 0)
        if ms:
            return Outcome(reply=Integer(value=left))
        # Redis rounds the seconds left to the nearest; an absolute time is truncated
        return Outcome(reply=Integer(value=left // 1000 if at else (left + 500) // 1000))

    return keyspace_of(server).run(Op(reads=((client.db, key),), compute=compute, any_kind=True))


def cmd_ttl(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """TTL key: seconds left; -1 without an expiry, -2 for a missing key."""
    return _ttl(server, client, args[1], ms=False, at=False)


def cmd_pttl(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """PTTL key: milliseconds left; -1 without an expiry, -2 for a missing key."""
    return _ttl(server, client, args[1], ms=True, at=False)


def cmd_expiretime(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """EXPIRETIME key: the expiry as unix seconds; -1 or -2 as TTL."""
    return _ttl(server, client, args[1], ms=False, at=True)


def cmd_pexpiretime(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """PEXPIRETIME key: the expiry as unix milliseconds; -1 or -2 as TTL."""
    return _ttl(server, client, args[1], ms=True, at=True)


def cmd_persist(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """PERSIST key: 1 when an expiry was removed, else 0."""
    db, key = client.db, args[1]

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        entry = entries[0]
        if entry is None or entry.expire_at is None:
            return Outcome(reply=Integer(value=0))
        return Outcome(reply=Integer(value=1), writes=(SetExpiry(db=db, key=key, expire_at=None),))

    return keyspace_of(server).run(Op(reads=((db, key),), compute=compute, any_kind=True))


__all__ = [
    "cmd_expire",
    "cmd_expireat",
    "cmd_expiretime",
    "cmd_persist",
    "cmd_pexpire",
    "cmd_pexpireat",
    "cmd_pexpiretime",
    "cmd_pttl",
    "cmd_ttl",
]
