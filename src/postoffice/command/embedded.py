"""The embedded keyspace: the command server's keys in a store engine it opens itself.

With `--store-dir DIR` the command server opens the key-value engine of `postoffice.store.engine`
on DIR in its own process (the same log and LMDB index a store server keeps, behind the
same LOCK file, so a store server and a command server can never open one directory at
once) and answers the keyspace commands from it on the event loop, with no second process
and no future.

Durability is the store server's: under `always` the engine appends with write-behind, and
a write's reply is a `Durable` that the connection holds until the fsync covering its
ticket is done (store/engine/commit.py's `GroupCommit`: one write(2) per loop iteration, one
fsync for every connection's writes of it). Reads answer at once, but never overtake a
reply still owed on their connection. Limits and errors are worded as the store server's
client words them, so both modes answer alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final, final

from postoffice.command.errors import CommandError, StoreUnavailableError
from postoffice.command.keyspace import (
    REPLY_ITEM_BYTES,
    Answer,
    Cursors,
    Durable,
    PageMaker,
    engine_refusal,
    reply_too_large,
)
from postoffice.core.errors import PostOfficeError
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, Reply
from postoffice.store import (
    MAX_BATCH_OPS,
    MAX_BOUND_BYTES,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Durability,
    GroupCommit,
    Put,
    Store,
)

log = logging.getLogger(__name__)

_NOT_OPEN: Final = "store is not open"


def _not_open() -> StoreUnavailableError:
    return StoreUnavailableError(f"store shutting_down: {_NOT_OPEN}")


def _bad_key(what: str, key: bytes) -> CommandError:
    if not key:
        return CommandError(f"{what} is empty")
    return CommandError(f"{what} of {len(key)} bytes exceeds limit {MAX_KEY_BYTES}")


def _check_key(what: str, key: bytes) -> None:
    if not key or len(key) > MAX_KEY_BYTES:
        raise _bad_key(what, key)


def _check_value(what: str, value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise CommandError(f"{what} of {len(value)} bytes exceeds limit {MAX_VALUE_BYTES}")


@final
class EmbeddedKeyspace:
    """A store engine opened in this process, served on the event loop."""

    def __init__(self, path: Path, durability: str) -> None:
        self.path = path
        self.durability = Durability(durability)
        self.requests = 0
        self.store: Store | None = None
        self.commit: GroupCommit | None = None
        self._cursors = Cursors()
        self._durable = self.durability is Durability.ALWAYS

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
        store.flush_in_background = True  # the event loop must not wait for LMDB
        store.write_behind = self._durable  # one write(2) per loop iteration, see GroupCommit
        if self._durable:
            self.commit = GroupCommit(store, asyncio.get_running_loop())
            self.commit.start()
        self.store = store
        log.info("store opened path=%s recovery=%s", path, store.recovery)

    async def close(self) -> None:
        """Finish the syncs asked for, then close the store (index flushed, log fsynced)."""
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
        }

    def _open(self) -> Store:
        store = self.store
        if store is None:
            raise _not_open()
        self.requests += 1
        return store

    def _written(self, ticket: int, reply: Reply) -> Answer:
        """The reply of a write: held for its fsync under `always`, else at once."""
        commit = self.commit
        if ticket and commit is not None:
            return Durable(ticket, reply, commit)
        return reply

    # -- the Keyspace methods ---------------------------------------------------------------

    def get(self, key: bytes) -> Answer:
        """GET: the value or nil, read now (the hot path: no future, no thread)."""
        store = self.store  # _open inlined: this is the hot path
        if store is None:
            raise _not_open()
        self.requests += 1
        if not key or len(key) > MAX_KEY_BYTES:
            raise _bad_key("get key", key)
        try:
            value = store.get(key)
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        return NIL if value is None else Bulk(value)

    def set(self, key: bytes, value: bytes) -> Answer:
        """SET: appended now; OK once durable under `always`."""
        store = self.store  # _open inlined: this is the hot path
        if store is None:
            raise _not_open()
        self.requests += 1
        if not key or len(key) > MAX_KEY_BYTES:
            raise _bad_key("put key", key)
        if len(value) > MAX_VALUE_BYTES:
            _check_value("put value", value)
        try:
            ticket = store.put_nowait(key, value)
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        commit = self.commit
        if commit is not None:
            return Durable(ticket, OK, commit)
        return OK

    def delete(self, keys: Sequence[bytes]) -> Answer:
        """DEL: tombstones for the keys that exist; their count, once durable."""
        store = self._open()
        for key in keys:
            _check_key("delete key", key)
        deleted = newest = 0
        try:
            for key in keys:
                existed, ticket = store.delete_nowait(key)
                deleted += existed
                newest = max(newest, ticket)
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        return self._written(newest, Integer(value=deleted))

    def exists(self, keys: Sequence[bytes]) -> Answer:
        """EXISTS: how many of the keys are there."""
        store = self._open()
        for key in keys:
            _check_key("get key", key)
        try:
            return Integer(value=sum(store.get(key) is not None for key in keys))
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None

    def mget(self, keys: Sequence[bytes], max_bytes: int) -> Answer:
        """MGET: the values, nil for each missing key; read until the reply would pass
        `max_bytes`, then refused (ReplyTooLargeError)."""
        store = self._open()
        for key in keys:
            _check_key("get key", key)
        items: list[Reply] = []
        size = REPLY_ITEM_BYTES
        try:
            for i, key in enumerate(keys):
                value = store.get(key)
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

    def mset(self, pairs: Sequence[tuple[bytes, bytes]]) -> Answer:
        """MSET: one atomic batch; OK once durable."""
        store = self._open()
        if len(pairs) > MAX_BATCH_OPS:
            raise CommandError(f"batch of {len(pairs)} ops exceeds limit {MAX_BATCH_OPS}")
        for i, (key, value) in enumerate(pairs):
            _check_key(f"batch op {i} key", key)
            _check_value(f"batch op {i} value", value)
        try:
            ticket = store.batch_nowait([Put(key=key, value=value) for key, value in pairs])
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        return self._written(ticket, OK)

    def dbsize(self) -> Answer:
        """DBSIZE: the live key count."""
        return Integer(value=len(self._open()))

    def scan(
        self, prefix: bytes | None, start: bytes | None, limit: int, page: PageMaker
    ) -> Answer:
        """SCAN: up to `limit` keys in key order from `start` on, with `prefix`."""
        store = self._open()
        if prefix is not None and len(prefix) > MAX_BOUND_BYTES:
            raise CommandError(
                f"scan prefix of {len(prefix)} bytes exceeds limit {MAX_BOUND_BYTES}"
            )
        try:
            keys = store.scan_keys(prefix=prefix, start=start, limit=limit + 1)
        except PostOfficeError as exc:
            raise engine_refusal(exc) from None
        if len(keys) > limit:
            del keys[limit:]
            return page(keys, keys[-1] + b"\0")  # where a store server's next page starts
        return page(keys, None)


__all__ = ["EmbeddedKeyspace"]
