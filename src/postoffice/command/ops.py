"""Pure: a keyspace command as an Op, the keys it reads and what it writes given their values.

A command that reads before it writes (INCR, APPEND, GETSET, RENAME, SET NX ...) is one
Op: the keyspace reads `reads`, drops what has expired, calls `compute` with the live
entries and the time, and applies the writes it returns as one store batch. Both
keyspaces run an Op as one step for the keys it names (see docs/compatibility.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, final

from postoffice.command.errors import WrongTypeError
from postoffice.command.layout import STRING, is_string
from postoffice.core.resp import NIL, OK, Bulk, Integer, Reply


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A live key's value, its expiry (unix ms), None when it has none, and its kind
    (layout.STRING, RAW, LIST, SET ...: what `value` encodes)."""

    value: bytes
    expire_at: int | None = None
    kind: int = STRING


#: `SetValue.expire_at` for "keep the key's expiry as it is" (SET KEEPTTL).
KEEP: Final = -1


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SetValue:
    """Write `value` of kind `kind` under `key` in `db`, with expiry `expire_at` (None: none;
    KEEP: as is, only for a value of the kind the key already holds)."""

    db: int
    key: bytes
    value: bytes
    expire_at: int | None = None
    kind: int = STRING


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Drop:
    """Delete `key` in `db` and its expiry."""

    db: int
    key: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SetExpiry:
    """Give the existing `key` in `db` the expiry `expire_at` (None: persist it)."""

    db: int
    key: bytes
    expire_at: int | None


Write = SetValue | Drop | SetExpiry


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What an Op's compute decided: the writes, in order, and the reply."""

    reply: Reply
    writes: Sequence[Write] = ()


#: (the live entries of `reads`, in order, None for a missing key; now in unix ms)
Compute = Callable[[Sequence[Entry | None], int], Outcome]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """A command on named keys: read `reads`, decide, write. `writes_to` names the keys it
    may write without reading them, so a keyspace can order it against others on them.
    """

    reads: tuple[tuple[int, bytes], ...]
    compute: Compute
    writes_to: tuple[tuple[int, bytes], ...] = ()
    #: False: a command on strings, refused with WRONGTYPE when a key it reads holds
    #: another kind (before `compute` sees it); True: `compute` takes every kind.
    any_kind: bool = False

    def decide(self, entries: Sequence[Entry | None], now: int) -> Outcome:
        """`compute`, after the WRONGTYPE check; raises what `compute` raises."""
        if not self.any_kind:
            for entry in entries:
                if entry is not None and not is_string(entry.kind):
                    raise WrongTypeError(WRONG_TYPE)
        return self.compute(entries, now)


WRONG_TYPE: Final = "Operation against a key holding the wrong kind of value"


# -- the computes the plain commands share in both keyspaces ------------------------------------


def plain_value(entries: Sequence[Entry | None], now: int) -> Outcome:
    """GET: the first entry's value, or nil."""
    entry = entries[0]
    return Outcome(reply=NIL if entry is None else Bulk(entry.value))


def counter(entries: Sequence[Entry | None], now: int) -> Outcome:
    """EXISTS: how many entries are live (a key read twice counts twice)."""
    return Outcome(reply=Integer(value=sum(entry is not None for entry in entries)))


def setter(db: int, key: bytes, value: bytes) -> Compute:
    """SET key value: written, any expiry dropped; OK."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=OK, writes=(SetValue(db=db, key=key, value=value),))

    return compute


def deleter(db: int, keys: Sequence[bytes]) -> Compute:
    """DEL: the live keys dropped; how many."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        # dict, not set: a key named twice is deleted (and counted) once, in order
        live = dict.fromkeys(
            key for key, entry in zip(keys, entries, strict=True) if entry is not None
        )
        return Outcome(
            reply=Integer(value=len(live)), writes=[Drop(db=db, key=key) for key in live]
        )

    return compute


def writer(writes: Sequence[Write], reply: Reply = OK) -> Compute:
    """A command that writes without reading (MSET): `writes`, then `reply`."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        return Outcome(reply=reply, writes=writes)

    return compute


__all__ = [
    "KEEP",
    "WRONG_TYPE",
    "Compute",
    "Drop",
    "Entry",
    "Op",
    "Outcome",
    "SetExpiry",
    "SetValue",
    "Write",
    "counter",
    "deleter",
    "plain_value",
    "setter",
]
