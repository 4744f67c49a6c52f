"""The embedded keyspace: the command server's keys in a store engine it opens itself.

With `--store-dir DIR` the command server opens the key-value engine of `postoffice.store.engine`
on DIR in its own process (the same log and LMDB index a store server keeps, behind the
same LOCK file, so a store server and a command server can never open one directory at
once) and answers the keyspace commands from it on the event loop, with no second process
and no future.

Durability is the store server's: the engine appends with write-behind, and a write's
reply is a `Durable` that the connection holds until the records are written
(store/engine/commit.py's `GroupCommit`: one write(2) per loop iteration) and, under
`always`, until the fsync covering its ticket is done (one for every connection's writes
of it). Reads answer at once, but never overtake a reply still owed on their connection.
Limits and errors are worded as the store server's client words them, so both modes
answer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, final

from postoffice.command.errors import CommandError, StoreUnavailableError
from postoffice.command.keyspace import (
    REPLY_ITEM_BYTES,
    SWEEP_INTERVAL_S,
    SWEEP_ROUNDS,
    SWEEP_SAMPLE,
    Answer,
    Cursors,
    Durable,
    KeysMaker,
    PageMaker,
    engine_refusal,
    reply_too_large,
    wall_clock_ms,
)
from postoffice.command.layout import (
    DATABASES,
    EXPIRY_PREFIX,
    PLAIN_START,
    RESERVED_START,
    STRING,
    TYPE_PREFIX,
    base_kind,
    db_prefix,
    db_ranges,
    decode_deadline,
    decode_key,
    decode_kind,
    encode_deadline,
    encode_key,
    expiry_key,
    is_string,
    prefix_end,
    type_key,
)
from postoffice.command.ops import (
    KEEP,
    Drop,
    Entry,
    Op,
    SetExpiry,
    SetValue,
    Write,
    counter,
    deleter,
    plain_value,
    setter,
    writer,
)
from postoffice.core.errors import PostOfficeError
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, Reply
from postoffice.store import (
    MAX_BATCH_OPS,
    MAX_BOUND_BYTES,
    MAX_SCAN_LIMIT,
    MAX_VALUE_BYTES,
    BatchOp,
    Delete,
    Durability,
    GroupCommit,
    Put,
    Store,
)

log = logging.getLogger(__name__)

_NOT_OPEN: Final = "store is not open"


def _not_open() -> StoreUnavailableError:
    return StoreUnavailableError(f"store shutting_down: {_NOT_OPEN}")


def _check_value(what: str, value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise CommandError(f"{what} of {len(value)} bytes exceeds limit {MAX_VALUE_BYTES}")


@final
class EmbeddedKeyspace:
    """A store engine opened in this process, served on the event loop."""

    def __init__(
        self, path: Path, durability: str, *, now_ms: Callable[[], int] = wall_clock_ms
    ) -> None:
        self.path = path
        self.durability = Durability(durability)
        self.requests = 0
        self.store: Store | None = None
        self.commit: GroupCommit | None = None
        self._cursors = Cursors()
        self._durable = self.durability is Durability.ALWAYS
        self._now_ms = now_ms
        #: stored key -> its expiry (unix ms): the store's expiry keys, mirrored in memory
        #: (this process alone has the directory open) so a read needs no second lookup
        self._expires: dict[bytes, int] = {}
        #: stored key -> its kind, for every key that is not a string (the type tags)
        self._kinds: dict[bytes, int] = {}
        self._sweep_iter: Iterator[bytes] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.expired = 0  # keys the active sweep removed

    def __repr__(self) -> str:
        state = "open" if self.store is not None else "closed"
        return f"<EmbeddedKeyspace {self.path} {state} {self.durability.value}>"

    @property
    def cursors(self) -> Cursors:
        """The SCAN cursors handed out."""
        return self._cursors

    async def start(self) -> None:
        """Open the store (recovering it from its log) off the loop, start group commit.

        Raises StoreLockedError when another process has the directory open,
        StoreStorageError when it cannot be read.
        """
        path, durability = self.path, self.durability
        store = await asyncio.to_thread(Store.open, path, durability=durability)
        self._expires = await asyncio.to_thread(self._load_expiries, store)
        self._kinds = await asyncio.to_thread(self._load_kinds, store)
        store.flush_in_background = True  # the event loop must not wait for LMDB
        # One write(2) per loop iteration, before the replies it covers leave, in every
        # mode (see GroupCommit); only `always` waits for an fsync besides. A write(2) per
        # SET, as before, let go of the GIL on every SET, and a background index flush
        # that took it kept it for a switch interval (5 ms).
        store.write_behind = True
        self.commit = GroupCommit(store, asyncio.get_running_loop(), fsync=self._durable)
        self.commit.start()
        self.store = store
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        log.info("store opened path=%s recovery=%s", path, store.recovery)

    async def close(self) -> None:
        """Finish the syncs asked for, then close the store (index flushed, log fsynced)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.commit is not None:
            await self.commit.stop()
            self.commit = None
        store, self.store = self.store, None
        if store is not None:
            await asyncio.to_thread(store.close)
            log.info("store closed path=%s", self.path)

    def info(self) -> dict[str, object]:
        """The INFO keyspace section."""
        store = self.store
        return {
            "store": "embedded",
            "store_dir": str(self.path),
            "store_durability": self.durability.value,
            "store_open": int(store is not None),
            "store_keys": len(store) if store is not None else 0,
            "store_requests": self.requests,
            "expires": len(self._expires),
            "expired_keys": self.expired,
        }

    def _open(self) -> Store:
        store = self.store
        if store is None:
            raise _not_open()
        self.requests += 1
        return store

    def _written(self, ticket: int, reply: Reply) -> Answer:
        """The reply of a write: held until written (and fsynced under `always`)."""
        commit = self.commit
        if ticket and commit is not None:
            return Durable(ticket, reply, commit)
        return reply

    # -- the Keyspace methods ---------------------------------------------------------------

    def get(self, key: bytes, db: int = 0) -> Answer:
        """GET: the value or nil, read now (the hot path: no future, no thread)."""
        store = self.store  # _open inlined: this is the hot path
        if store is None:
            raise _not_open()
        self.requests += 1
        stored = encode_key(db, key, "get key")
        try:
            value = store.get_view(stored)  # a large value: a view of its segment, no copy
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        if value is None:
            return NIL
        if (self._expires and stored in self._expires) or (self._kinds and stored in self._kinds):
            return self.run(Op(reads=((db, key),), compute=plain_value))
        return Bulk(value)

    def set(self, key: bytes, value: bytes, db: int = 0) -> Answer:
        """SET: appended now (any expiry dropped); OK once written (and fsynced under
        `always`)."""
        store = self.store  # _open inlined: this is the hot path
        if store is None:
            raise _not_open()
        self.requests += 1
        stored = encode_key(db, key, "put key")
        if len(value) > MAX_VALUE_BYTES:
            _check_value("put value", value)
        if stored in self._expires or stored in self._kinds:
            return self.run(Op(reads=(), writes_to=((db, key),), compute=setter(db, key, value)))
        try:
            ticket = store.put_nowait(stored, value)
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        commit = self.commit
        if commit is not None:
            return Durable(ticket, OK, commit)
        return OK

    def delete(self, keys: Sequence[bytes], db: int = 0) -> Answer:
        """DEL: tombstones for the live keys; their count, once durable."""
        return self.run(
            Op(reads=tuple((db, key) for key in keys), compute=deleter(db, keys), any_kind=True)
        )

    def exists(self, keys: Sequence[bytes], db: int = 0) -> Answer:
        """EXISTS: how many of the keys are there."""
        return self.run(Op(reads=tuple((db, key) for key in keys), compute=counter, any_kind=True))

    def mget(self, keys: Sequence[bytes], max_bytes: int, db: int = 0) -> Answer:
        """MGET: the values, nil for each missing key; read until the reply would pass
        `max_bytes`, then refused (ReplyTooLargeError)."""
        store = self._open()
        stored = [encode_key(db, key, "get key") for key in keys]
        items: list[Reply] = []
        size = REPLY_ITEM_BYTES
        now = self._now_ms()
        try:
            for i, skey in enumerate(stored):
                value = store.get(skey)
                if value is not None and self._expires:
                    at = self._expires.get(skey)
                    if at is not None and at <= now:
                        value = None
                if (
                    value is not None
                    and self._kinds
                    and not is_string(self._kinds.get(skey, STRING))
                ):
                    value = None  # not a string: nil, as Redis's MGET answers
                if value is None:
                    items.append(NIL)
                    size += REPLY_ITEM_BYTES
                    continue
                size += len(value) + REPLY_ITEM_BYTES
                if size > max_bytes:
                    raise reply_too_large(size, max_bytes, more=i + 1 < len(keys))
                items.append(Bulk(data=value))
        except PostOfficeError as exc:
            if isinstance(exc, CommandError):
                raise
            raise engine_refusal(exc) from None
        return Array(items=items)

    def mset(self, pairs: Sequence[tuple[bytes, bytes]], db: int = 0) -> Answer:
        """MSET: the values written in one step on the loop, so no reader sees part of it
        (several store batches past MAX_BATCH_OPS; see `_apply`); OK once durable."""
        self._open()
        for i, (key, value) in enumerate(pairs):
            encode_key(db, key, f"batch op {i} key")
            _check_value(f"batch op {i} value", value)
        writes = [SetValue(db=db, key=key, value=value) for key, value in pairs]
        return self.run(Op(reads=(), compute=writer(writes)))

    def dbsize(self, db: int = 0) -> Answer:
        """DBSIZE: the database's key count (expired keys not yet removed included, as in
        Redis). Database 0 is the store's count less the reserved range's."""
        store = self._open()
        try:
            if db == 0:
                return Integer(value=len(store) - self._count(RESERVED_START, PLAIN_START))
            prefix = db_prefix(db)
            return Integer(value=self._count(prefix, prefix_end(prefix)))
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None

    def _count(self, start: bytes, end: bytes) -> int:
        store = self._open()
        count = 0
        cursor: bytes | None = start
        while cursor is not None:
            page = store.scan_keys(start=cursor, end=end, limit=MAX_SCAN_LIMIT)
            count += len(page)
            cursor = page[-1] + b"\0" if len(page) == MAX_SCAN_LIMIT else None
        return count

    def scan(
        self,
        prefix: bytes | None,
        start: bytes | None,
        limit: int,
        page: PageMaker,
        db: int = 0,
        *,
        kind: int | None = None,
    ) -> Answer:
        """SCAN: up to `limit` keys of `db` in key order from `start` (a stored key) on,
        with `prefix`; expired keys, and keys not of `kind` (when given), are skipped."""
        store = self._open()
        if prefix is not None and len(prefix) > MAX_BOUND_BYTES - 2:
            raise CommandError(
                f"scan prefix of {len(prefix)} bytes exceeds limit {MAX_BOUND_BYTES - 2}"
            )
        keys: list[bytes] = []
        now = self._now_ms()
        resume: bytes | None = None
        try:
            for stored_prefix, first in db_ranges(db, prefix or b""):
                lo = max(first or b"", stored_prefix)
                if start is not None:
                    if start < lo:
                        pass
                    elif stored_prefix and not start.startswith(stored_prefix):
                        continue  # that range is done
                    else:
                        lo = start
                want = limit + 1 - len(keys)
                found = store.scan_keys(prefix=stored_prefix or None, start=lo, limit=want)
                keys.extend(found)
                if len(keys) > limit:
                    break
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        if len(keys) > limit:
            del keys[limit:]
            resume = keys[-1] + b"\0"  # where a store server's next page starts
        shown: list[bytes] = []
        for stored in keys:
            at = self._expires.get(stored) if self._expires else None
            if at is not None and at <= now:
                continue
            if kind is not None and base_kind(self._kinds.get(stored, STRING)) != kind:
                continue
            decoded = decode_key(stored)
            if decoded is not None and decoded[0] == db:
                shown.append(decoded[1])
        return page(shown, resume)

    # -- read-modify-write and whole databases -------------------------------------------

    def run(self, op: Op) -> Answer:
        """Run `op` now, in one step on the event loop: its reads, its compute, its writes
        in one batch (answered once durable under `always`)."""
        store = self._open()
        now = self._now_ms()
        expires = self._expires
        kinds = self._kinds
        entries: list[Entry | None] = []
        writes: list[Write] = []
        try:
            for db, key in op.reads:
                stored = encode_key(db, key)
                value = store.get(stored)
                if value is None:
                    entries.append(None)
                    continue
                at = expires.get(stored)
                if at is not None and at <= now:
                    entries.append(None)
                    writes.append(Drop(db=db, key=key))  # lazily, as Redis on access
                    continue
                entries.append(Entry(value=value, expire_at=at, kind=kinds.get(stored, STRING)))
            for db, key in op.writes_to:
                encode_key(db, key)
        except PostOfficeError as exc:
            if isinstance(exc, CommandError):
                raise
            raise engine_refusal(exc) from None
        outcome = op.decide(entries, now)
        writes.extend(outcome.writes)
        return self._written(self._apply(writes), outcome.reply)

    def _apply(self, writes: Sequence[Write]) -> int:
        """Write `writes` as one batch (several past MAX_BATCH_OPS); the last ticket."""
        if not writes:
            return 0
        store = self._open()
        expires = self._expires
        kinds = self._kinds
        ops: list[BatchOp] = []
        changes: list[tuple[bytes, int | None]] = []
        retyped: list[tuple[bytes, int]] = []
        for write in writes:
            stored = encode_key(write.db, write.key)
            if not isinstance(write, SetExpiry) and (
                stored in kinds or (isinstance(write, SetValue) and write.kind != STRING)
            ):
                kind = write.kind if isinstance(write, SetValue) else STRING
                if kind == STRING:
                    ops.append(Delete(key=type_key(stored)))
                else:
                    ops.append(Put(key=type_key(stored), value=bytes((kind,))))
                retyped.append((stored, kind))
            if isinstance(write, SetValue):
                _check_value("value", write.value)
                ops.append(Put(key=stored, value=write.value))
                if write.expire_at is None:
                    if stored in expires:  # the mirror says whether there is one to delete
                        ops.append(Delete(key=expiry_key(stored)))
                        changes.append((stored, None))
                elif write.expire_at != KEEP:
                    ops.append(Put(key=expiry_key(stored), value=encode_deadline(write.expire_at)))
                    changes.append((stored, write.expire_at))
            elif isinstance(write, Drop):
                ops.append(Delete(key=stored))
                ops.append(Delete(key=expiry_key(stored)))
                changes.append((stored, None))
            elif write.expire_at is None:
                ops.append(Delete(key=expiry_key(stored)))
                changes.append((stored, None))
            else:
                ops.append(Put(key=expiry_key(stored), value=encode_deadline(write.expire_at)))
                changes.append((stored, write.expire_at))
        ticket = 0
        try:
            for i in range(0, len(ops), MAX_BATCH_OPS):
                ticket = store.batch_nowait(ops[i : i + MAX_BATCH_OPS]) or ticket
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        for stored, at in changes:
            if at is None:
                expires.pop(stored, None)
            else:
                expires[stored] = at
        for stored, kind in retyped:
            if kind == STRING:
                kinds.pop(stored, None)
            else:
                kinds[stored] = kind
        return ticket

    def _db_keys(self, db: int, prefix: bytes = b"") -> list[bytes]:
        """Every stored key of database `db` (beginning with `prefix`), live or not."""
        store = self._open()
        keys: list[bytes] = []
        for stored_prefix, first in db_ranges(db, prefix):
            cursor: bytes | None = max(first or b"", stored_prefix)
            while cursor is not None:
                page = store.scan_keys(
                    prefix=stored_prefix or None, start=cursor, limit=MAX_SCAN_LIMIT
                )
                keys.extend(page)
                cursor = page[-1] + b"\0" if len(page) == MAX_SCAN_LIMIT else None
        return keys

    def keys(self, db: int, prefix: bytes, finish: KeysMaker) -> Answer:
        """The live keys of `db` beginning with `prefix`: `finish(keys)`."""
        now = self._now_ms()
        try:
            stored = self._db_keys(db, prefix)
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        expires = self._expires
        live: list[bytes] = []
        for skey in stored:
            at = expires.get(skey) if expires else None
            if at is not None and at <= now:
                continue
            decoded = decode_key(skey)
            if decoded is not None:
                live.append(decoded[1])
        return finish(live)

    def flush(self, db: int | None) -> Answer:
        """FLUSHDB (`db`) or FLUSHALL (None): every key gone, with its expiry; OK."""
        dbs = range(DATABASES) if db is None else (db,)
        try:
            writes: list[Write] = []
            for each in dbs:
                for skey in self._db_keys(each):
                    decoded = decode_key(skey)
                    if decoded is not None:
                        writes.append(Drop(db=each, key=decoded[1]))
            return self._written(self._apply(writes), OK)
        except PostOfficeError as exc:
            if isinstance(exc, CommandError):
                raise
            raise engine_refusal(exc) from None

    def swap(self, first: int, second: int) -> Answer:
        """SWAPDB: each database's keys (and expiries) moved to the other; OK."""
        store = self._open()
        try:
            writes: list[Write] = []
            for source in (first, second):
                for skey in self._db_keys(source):
                    decoded = decode_key(skey)
                    if decoded is None:
                        continue
                    writes.append(Drop(db=source, key=decoded[1]))
            for source, target in ((first, second), (second, first)):
                for skey in self._db_keys(source):
                    decoded = decode_key(skey)
                    value = store.get(skey)
                    if decoded is None or value is None:
                        continue
                    at = self._expires.get(skey)
                    kind = self._kinds.get(skey, STRING)
                    writes.append(
                        SetValue(db=target, key=decoded[1], value=value, expire_at=at, kind=kind)
                    )
            return self._written(self._apply(writes), OK)
        except PostOfficeError as exc:
            if isinstance(exc, CommandError):
                raise
            raise engine_refusal(exc) from None

    # -- expiry ------------------------------------------------------------------------------

    def _load_expiries(self, store: Store) -> dict[bytes, int]:
        """Every expiry kept in the store (read once, at start, off the loop)."""
        expires: dict[bytes, int] = {}
        cursor: bytes | None = EXPIRY_PREFIX
        while cursor is not None:
            page = store.scan(prefix=EXPIRY_PREFIX, start=cursor, limit=MAX_SCAN_LIMIT)
            for key, raw in page:
                at = decode_deadline(raw)
                if at is not None:
                    expires[key[len(EXPIRY_PREFIX) :]] = at
            cursor = page[-1][0] + b"\0" if len(page) == MAX_SCAN_LIMIT else None
        return expires

    def _load_kinds(self, store: Store) -> dict[bytes, int]:
        """Every type tag kept in the store (read once, at start, off the loop)."""
        kinds: dict[bytes, int] = {}
        cursor: bytes | None = TYPE_PREFIX
        while cursor is not None:
            page = store.scan(prefix=TYPE_PREFIX, start=cursor, limit=MAX_SCAN_LIMIT)
            for key, raw in page:
                kind = decode_kind(raw)
                if kind != STRING:
                    kinds[key[len(TYPE_PREFIX) :]] = kind
            cursor = page[-1][0] + b"\0" if len(page) == MAX_SCAN_LIMIT else None
        return kinds

    def sweep(self) -> int:
        """One active-expiry cycle: expired keys removed, SWEEP_SAMPLE at a time, going on
        while more than a quarter of a sample had expired, at most SWEEP_ROUNDS samples.
        Returns how many were removed."""
        if self.store is None or not self._expires:
            return 0
        now = self._now_ms()
        removed = 0
        for _ in range(SWEEP_ROUNDS):
            sample = self._sweep_sample()
            if not sample:
                break
            dead = [stored for stored in sample if self._expires.get(stored, now + 1) <= now]
            writes: list[Write] = []
            for stored in dead:
                decoded = decode_key(stored)
                if decoded is not None:
                    writes.append(Drop(db=decoded[0], key=decoded[1]))
            self._apply(writes)
            removed += len(writes)
            if len(dead) * 4 <= len(sample):
                break
        self.expired += removed
        return removed

    def _sweep_sample(self) -> list[bytes]:
        """The next SWEEP_SAMPLE keys with an expiry, going round the table in turn.

        The round is a snapshot of the table, so keys removed since (a FLUSHALL of many)
        are passed over here: counted in the sample they would fill it with keys that
        cannot expire, and keep the keys added since waiting for the round's end.
        """
        if self._sweep_iter is None:
            self._sweep_iter = iter(list(self._expires))
        expires = self._expires
        sample = list(
            itertools.islice(filter(expires.__contains__, self._sweep_iter), SWEEP_SAMPLE)
        )
        if len(sample) < SWEEP_SAMPLE:
            self._sweep_iter = None
        return sample

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self.sweep()
            except PostOfficeError as exc:
                log.warning("expiry sweep failed error=%s", exc)


__all__ = ["EmbeddedKeyspace"]
