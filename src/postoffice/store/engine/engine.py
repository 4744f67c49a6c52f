"""The embedded key-value store: `Store` ties the segment log and the LMDB index together.

Library layer; thread-safe. A server calls the quick methods (get, scan, the `_nowait`
writes) on its event loop and the blocking ones (open, sync, close) on threads.
"""

# Design
# ------
# One RLock (`_lock`) serialises the index and the log's tail: every get, scan, write and
# batch holds it briefly, and a get reads its record under it, so the location it found and
# the segment file it names stay valid for the read (segment removal and close take the same
# lock). That is simpler than reference counts, and reads are short.
# Compaction (store/engine/compaction.py) runs beside them, taking the same lock in short steps.
# An error means nothing changed: every index change a write makes is noted in `_undo`
# (its record's seq, the key, the key's location before) until an fsync covers the record.
# When the log fails a write or an fsync it rolls back to its last durable position
# (logstore.py), and `_roll_back` undoes, newest first, every change past it, under the
# lock, so no reader sees a write that failed once its failure is known. The notes are
# dropped as fsyncs cover them; under `never`, where nothing fsyncs on its own, the log is
# fsynced once they pass _UNDO_MAX_ENTRIES, which bounds both their memory and what a
# failure rolls back.

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, final

from postoffice.core.errors import ConfigError, os_errors
from postoffice.store.engine.compaction import Compaction
from postoffice.store.engine.index import Index, Location, Meta
from postoffice.store.engine.logstore import Durability, LogStore
from postoffice.store.engine.records import FLAG_BATCH, HEADER_BYTES, Kind, count_value
from postoffice.store.engine.recovery import RecoveryReport, lock_dir, recover
from postoffice.store.errors import (
    KeySizeError,
    StoreClosedError,
    StoreStorageError,
    ValueSizeError,
)

__all__ = ["BatchOp", "Delete", "Put", "RecoveryReport", "Store", "StoreStats"]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024  # big enough that rolls are rare
DEFAULT_MAX_KEY_BYTES: Final = 1024  # keys are names, not payloads
DEFAULT_MAX_VALUE_BYTES: Final = 16 * 1024 * 1024  # one pread, one allocation per get
DEFAULT_INTERVAL_MS: Final = 100  # `interval` durability: the most a crash may lose
DEFAULT_INDEX_MAP_BYTES: Final = 1 << 32  # LMDB's map is sparse: this is address space only
# Memory-layer entries written to LMDB per transaction. LMDB copies every page a
# transaction touches, so random keys cost less per entry in bigger transactions (16384:
# a third of 4096's cost); the layer is a few MB, kept in order for scans (index.py).
DEFAULT_FLUSH_ENTRIES: Final = 16384
# Values kept in memory after a get, so the next get of a hot key skips the record's
# unpacking, its CRC check and the copy out of the map (a get costs a third as much):
# emptied when full, cheaper than tracking recency. Large values are never kept.
DEFAULT_VALUE_CACHE_BYTES: Final = 64 * 1024 * 1024
_CACHED_VALUE_MAX_BYTES: Final = 4096
#: `get_view`'s records at least this long are read without a copy; smaller ones cost
#: less to copy than a view costs to make and keep.
VIEW_MIN_BYTES: Final = 64 * 1024
_PUT: Final = int(Kind.PUT)  # a plain int: the log packs it faster than the IntEnum
# Undo notes wait for an fsync to cover them. Under `never` nothing else fsyncs while the
# same few keys are rewritten (no index flush either), so past SOFT a background fsync
# is started, and past MAX the writer fsyncs itself: the notes stay a few MB at most.
_UNDO_MAX_ENTRIES: Final = 1 << 16
_UNDO_SOFT_ENTRIES: Final = 4096
_UNDO_CHECK_EVERY: Final = 1024  # entries added between looks for fsynced ones to drop
#: How long a background index flush sleeps between two steps of packing (index.py's
#: FLUSH_STEP_ENTRIES): a sleep, not a bare yield, so that the event loop, which lets go of
#: the GIL at every callback, runs while the flush waits, and the flush takes a bounded
#: share of the GIL (a flush of 16,384 entries then takes about 30 ms longer; the layer
#: just grows meanwhile).
FLUSH_PAUSE_S: Final = 0.001


def _flush_pause() -> None:
    time.sleep(FLUSH_PAUSE_S)


@dataclass(frozen=True, slots=True, kw_only=True)
class Put:
    """A batch operation: set `key` to `value`."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    """A batch operation: remove `key` (absent keys are fine)."""

    key: bytes


BatchOp = Put | Delete


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStats:
    """A snapshot of a Store's counters."""

    keys: int
    segments: int
    log_bytes: int
    last_seq: int
    durability: str
    memory_entries: int
    puts: int
    deletes: int
    batches: int
    gets: int
    fsyncs: int
    compactions: int
    recovery: RecoveryReport = field(default_factory=RecoveryReport)


@final
class Store(Compaction):
    """An embedded, durable, ordered key-value store in one directory.

    Writes go to an append-only log, reads through an LMDB index; compaction runs alongside
    both. Use `Store.open`.
    Every method raises StoreClosedError after `close`, and StoreStorageError when the disk
    or the index fails.
    """

    def __init__(
        self,
        *,
        path: Path,
        lock_fd: int,
        log_store: LogStore,
        index: Index,
        durability: Durability,
        max_key_bytes: int,
        max_value_bytes: int,
        flush_entries: int,
        live_keys: int,
        recovery: RecoveryReport,
        value_cache_bytes: int = DEFAULT_VALUE_CACHE_BYTES,
    ) -> None:
        self._path = path
        self._lock_fd = lock_fd
        self._log = log_store
        self._index = index
        self._durability = durability
        self._max_key = max_key_bytes
        self._max_value = max_value_bytes
        self._flush_entries = flush_entries
        self._live = live_keys
        # Key -> value as of the last write: every write of a key drops it (under `_lock`).
        self._values: dict[bytes, bytes] = {}
        self._values_bytes = 0
        self._value_cache_bytes = value_cache_bytes
        self._lock = threading.RLock()
        self._compacting = threading.Lock()  # held for a whole compaction; see the design note
        self._closing = threading.Event()  # set first by close(): stops a running compaction
        self._shut = False  # the same as `_closing.is_set()`, for the hot paths
        self._closed = False
        self._counts = {"deletes": 0, "batches": 0, "gets": 0, "compactions": 0}
        self._puts = 0  # apart from `_counts`: an attribute adds faster than a dict entry
        # (seq, key, location before) of every index change not yet fsynced; see the note.
        self._undo: collections.deque[tuple[int, bytes, Location | None]] = collections.deque()
        self._undo_check_at = _UNDO_CHECK_EVERY
        self._syncing_soon = False  # a background fsync for the undo notes is running
        log_store.on_sync_failure = self._background_failure
        self.recovery = recovery
        #: Move a full memory layer into LMDB on a thread instead of in the write that
        #: filled it. A server wants this (no write waits tens of ms for LMDB); a
        #: single-threaded batch job does not (the thread costs it a third more CPU).
        self.flush_in_background = False
        #: What a background flush calls between its steps (a seam: tests count the steps).
        self.flush_pause: Callable[[], None] = _flush_pause
        #: The *_nowait writes leave their bytes in memory (readers see them at once) until
        #: `write_pending` or `sync`: a server that applies many requests per event-loop
        #: iteration then pays one write(2) for all of them. It must call `write_pending`
        #: before it acknowledges a write it does not `sync`.
        self.write_behind = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Literal["always", "interval", "never"] | Durability = "always",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        interval_ms: int = DEFAULT_INTERVAL_MS,
        index_map_bytes: int = DEFAULT_INDEX_MAP_BYTES,
        flush_entries: int = DEFAULT_FLUSH_ENTRIES,
        value_cache_bytes: int = DEFAULT_VALUE_CACHE_BYTES,
    ) -> Store:
        """Open (creating if needed) the store at `path` and recover it from its log.

        A torn or corrupt log tail is cut at the last good record; a lost or damaged index
        is rebuilt from the log; both are reported in `recovery`. Raises ConfigError for bad
        settings, StoreLockedError if another process has the store open, StoreStorageError.
        """
        try:
            mode = Durability(durability)
        except ValueError as exc:
            raise ConfigError(
                f"durability must be always, interval or never, not {durability!r}"
            ) from exc
        for name, value in (
            ("segment_bytes", segment_bytes),
            ("max_key_bytes", max_key_bytes),
            ("max_value_bytes", max_value_bytes),
            ("interval_ms", interval_ms),
            ("index_map_bytes", index_map_bytes),
            ("flush_entries", flush_entries),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        if value_cache_bytes < 0:
            raise ConfigError(f"value_cache_bytes must be at least 0, not {value_cache_bytes}")
        if max_key_bytes > 0xFFFF:
            raise ConfigError(f"max_key_bytes must be at most 65535, not {max_key_bytes}")
        root = Path(path)
        with os_errors(StoreStorageError, f"create {root}"):
            root.mkdir(parents=True, exist_ok=True)
        lock_fd = lock_dir(root)
        try:
            log_store = LogStore(
                root / "log", segment_bytes=segment_bytes, durability=mode, interval_ms=interval_ms
            )
            try:
                index, reason = Index.open_or_reset(root / "index", map_bytes=index_map_bytes)
                try:
                    live, recovery = recover(root, log_store, index, reason)
                    store = cls(
                        path=root,
                        lock_fd=lock_fd,
                        log_store=log_store,
                        index=index,
                        durability=mode,
                        max_key_bytes=max_key_bytes,
                        max_value_bytes=max_value_bytes,
                        flush_entries=flush_entries,
                        live_keys=live,
                        recovery=recovery,
                        value_cache_bytes=value_cache_bytes,
                    )
                except BaseException:
                    index.close()
                    raise
            except BaseException:
                log_store.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        return store

    def __repr__(self) -> str:
        state = "CLOSED" if self._closed else "COMPACTING" if self._compacting.locked() else "OPEN"
        return f"<Store {self._path} {state} keys={self._live} {self._durability.value}>"

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- checks ----------------------------------------------------------------------------

    def _check_key(self, key: bytes) -> None:
        if not key:
            raise KeySizeError("key of 0 bytes is empty")
        if len(key) > self._max_key:
            raise KeySizeError(f"key of {len(key)} bytes exceeds limit {self._max_key}")

    def _check_value(self, value: bytes) -> None:
        if len(value) > self._max_value:
            raise ValueSizeError(f"value of {len(value)} bytes exceeds limit {self._max_value}")

    def _check_open(self) -> None:
        if self._shut:
            raise StoreClosedError(f"store {self._path} is closed")

    # -- writes ----------------------------------------------------------------------------

    def _append(
        self, items: list[tuple[Kind, bytes, bytes, int]], counter: str, *, defer: bool = False
    ) -> int:
        with self._lock:
            self._check_open()
            return self._append_locked(items, counter, defer=defer)

    def _wait_durable(self, ticket: int) -> None:
        if self._durability is Durability.ALWAYS:
            self.sync(ticket)

    def _append_locked(
        self,
        items: list[tuple[Kind, bytes, bytes, int]],
        counter: str | None,
        *,
        defer: bool = False,
    ) -> int:
        """Append records and index them in log order; the caller holds `_lock`."""
        if counter is not None:
            self._counts[counter] += 1
        if self._log.needs_roll_back:
            self._roll_back()
        try:
            locs, ticket = self._log.append(items, defer=defer)
        except StoreStorageError:
            self._roll_back()
            raise
        values = self._values
        undo = self._undo
        for (kind, key, _, _), loc in zip(items, locs, strict=True):
            if kind is Kind.BATCH_END:
                continue
            if key in values:
                self._uncache(key)
            old = self._index.get(key)
            undo.append((loc[3], key, old))
            if kind is Kind.PUT:
                self._live += old is None
                self._index.set(key, loc)
            elif old is not None:
                self._live -= 1
                self._index.set(key, None)
        if len(undo) >= self._undo_check_at:
            self._trim_undo()
        if len(self._index.memory) >= self._flush_entries:
            self._flush_due()
        return ticket

    def _trim_undo(self) -> None:
        """Drop the undo notes an fsync has covered; fsync if too many are left (under
        `never`). The caller holds `_lock`."""
        undo = self._undo
        durable = self._log.durable_seq
        while undo and undo[0][0] <= durable:
            undo.popleft()
        if len(undo) >= _UNDO_MAX_ENTRIES:
            self._sync_locked(self._log.last_seq)
            durable = self._log.durable_seq
            while undo and undo[0][0] <= durable:
                undo.popleft()
        elif len(undo) >= _UNDO_SOFT_ENTRIES and not self._syncing_soon:
            self._syncing_soon = True
            threading.Thread(
                target=self._sync_in_background,
                args=(self._log.last_seq,),
                name="store-undo-sync",
                daemon=True,
            ).start()
        self._undo_check_at = len(undo) + _UNDO_CHECK_EVERY

    def _sync_in_background(self, ticket: int) -> None:
        """Fsync up to `ticket` off the writer's thread, so the undo notes can be dropped."""
        try:
            self.sync(ticket)
        except Exception as exc:  # the writes were rolled back; the next writer hears it
            if not self._closing.is_set():
                log.error("background fsync failed path=%s error=%s", self._path, exc)
        finally:
            self._syncing_soon = False

    def _roll_back(self) -> None:
        """After a failed log write or fsync: cut the log back to its last durable position
        and undo, newest first, every index change past it. The caller holds `_lock`.

        Never raises: a cut that fails is logged, the changes are undone all the same (the
        log refuses writes meanwhile), and the next write tries the cut again.
        """
        try:
            kept = self._log.roll_back()
        except StoreStorageError as exc:
            log.error("log cannot be cut back path=%s error=%s", self._path, exc)
            self._undo_past(self._log.durable_seq)
            return
        if kept is not None:
            undone = self._undo_past(kept)
            log.error(
                "writes undone after a failed write path=%s changes=%d kept_seq=%d",
                self._path,
                undone,
                kept,
            )

    def _undo_past(self, seq: int) -> int:
        """Undo the index changes of records after `seq`, newest first; return how many."""
        undo = self._undo
        index = self._index
        undone = 0
        while undo and undo[-1][0] > seq:
            _, key, old = undo.pop()
            now = index.get(key)
            index.set(key, old)
            self._live += (old is not None) - (now is not None)
            if key in self._values:
                self._uncache(key)
            undone += 1
        self._undo_check_at = len(undo) + _UNDO_CHECK_EVERY
        return undone

    def _background_failure(self) -> None:
        """An fsync on a background thread failed: roll back now (no lock is held)."""
        with self._lock:
            if self._closed:
                return
            self._roll_back()

    def _sync_locked(self, ticket: int) -> int:
        """`sync` with `_lock` held (a flush, a close): roll back if it fails."""
        try:
            return self._log.sync(ticket)
        except StoreStorageError:
            self._roll_back()
            raise

    def _flush_due(self) -> None:
        if self.flush_in_background:
            self._flush_soon()
            return
        self._sync_locked(self._log.last_seq)  # a failure here fails (and undoes) the write
        try:
            self._index.flush(
                Meta(position=self._log.tail(), last_seq=self._log.last_seq, live_keys=self._live)
            )
        except StoreStorageError as exc:  # the write is in the log: it stands
            log.error("index flush failed path=%s error=%s", self._path, exc)

    def _flush_soon(self) -> None:
        """Start moving the memory layer into LMDB on a thread; the caller holds `_lock`.

        A writer (often a server's event loop) must not wait for an LMDB transaction of
        thousands of entries, so the layer is frozen (still read) and written by a
        background thread. If one is still running, the layer just grows until it is done.
        """
        if self._index.frozen is not None:
            return
        snapshot = self._index.freeze()
        meta = Meta(position=self._log.tail(), last_seq=self._log.last_seq, live_keys=self._live)
        threading.Thread(
            target=self._flush_frozen, args=(snapshot, meta), name="store-flush", daemon=True
        ).start()

    def _flush_frozen(self, snapshot: dict[bytes, Location | None], meta: Meta) -> None:
        written = False
        try:
            self.sync(meta.last_seq)  # LMDB must never lead the log
            written = self._index.write_frozen(snapshot, meta, self.flush_pause)
        except Exception as exc:  # the layer goes back into memory: nothing is lost
            if not self._closing.is_set():
                log.error("index flush failed path=%s error=%s", self._path, exc)
        with self._lock:
            if not self._closed:
                self._index.thaw(snapshot, written=written)

    def _flush(self) -> None:
        """Move the memory layer into LMDB; the log is fsynced first so LMDB never leads it.

        The caller holds `_lock`. Raises StoreStorageError (the log rolled back if its
        fsync failed).
        """
        self._sync_locked(self._log.live_seq)
        self._index.flush(
            Meta(position=self._log.tail(), last_seq=self._log.last_seq, live_keys=self._live)
        )

    def put(self, key: bytes, value: bytes) -> None:
        """Set `key` to `value`; under `always` it is on disk when this returns.

        Raises KeySizeError, ValueSizeError, StoreClosedError, StoreStorageError.
        """
        ticket = self._put(key, value, False)
        if self._durability is Durability.ALWAYS:
            self.sync(ticket)

    def delete(self, key: bytes) -> bool:
        """Remove `key` (a tombstone in the log); return whether it was present.

        Raises KeySizeError, StoreClosedError, StoreStorageError.
        """
        existed, ticket = self.delete_nowait(key)
        self._wait_durable(ticket)
        return existed

    def batch(self, ops: Sequence[BatchOp]) -> None:
        """Apply puts and deletes atomically: after any crash, all or none of them are there.

        Every op is checked before anything is written. Raises KeySizeError,
        ValueSizeError, StoreClosedError, StoreStorageError.
        """
        self._wait_durable(self.batch_nowait(ops))

    # The *_nowait writes apply at once (a later get sees them) and return a ticket
    # instead of waiting for the disk: `sync(ticket)` waits. A server uses them to apply
    # requests in order on its event loop and leave only the fsync to a thread.

    def put_nowait(self, key: bytes, value: bytes) -> int:
        """`put` without waiting for durability; returns the ticket for `sync`.

        The hot path of a server's writes: one record, no lists, no dataclasses.
        """
        return self._put(key, value, self.write_behind)

    def _put(self, key: bytes, value: bytes, defer: bool) -> int:
        # The hot path of every put: helpers inlined, one call each into the log and the
        # index (a Python call costs as much as the rest of a line here).
        if not key or len(key) > self._max_key:
            self._check_key(key)
        if len(value) > self._max_value:
            self._check_value(value)
        if type(key) is not bytes:
            key = bytes(key)
        if type(value) is not bytes:
            value = bytes(value)
        with self._lock:
            if self._shut:
                self._check_open()
            self._puts += 1
            if self._log.needs_roll_back:
                self._roll_back()
            try:
                loc = self._log.append_one(_PUT, key, value, defer)
            except StoreStorageError:
                self._roll_back()
                raise
            index = self._index
            old = index.replace(key, loc)
            if old is None:
                self._live += 1
            undo = self._undo
            undo.append((loc[3], key, old))
            cached = self._values.pop(key, None)
            if cached is not None:
                self._values_bytes -= len(key) + len(cached)
            if len(undo) >= self._undo_check_at:
                self._trim_undo()
            if len(index.memory) >= self._flush_entries:
                self._flush_due()
            return loc[3]  # its seq

    def _uncache(self, key: bytes) -> None:
        """Forget the cached value of `key`; the caller holds `_lock`."""
        old = self._values.pop(key)
        self._values_bytes -= len(key) + len(old)

    def delete_nowait(self, key: bytes) -> tuple[bool, int]:
        """`delete` without waiting for durability: (whether it was present, ticket)."""
        self._check_key(key)
        with self._lock:
            self._check_open()
            if self._index.get(key) is None:
                return False, 0  # nothing written: ticket 0 is always durable
            item = (Kind.DELETE, bytes(key), b"", 0)
            return True, self._append_locked([item], "deletes", defer=self.write_behind)

    def batch_nowait(self, ops: Sequence[BatchOp]) -> int:
        """`batch` without waiting for durability; returns the ticket for `sync`."""
        items: list[tuple[Kind, bytes, bytes, int]] = []
        for op in ops:
            self._check_key(op.key)
            if isinstance(op, Put):
                self._check_value(op.value)
                items.append((Kind.PUT, bytes(op.key), bytes(op.value), FLAG_BATCH))
            else:
                items.append((Kind.DELETE, bytes(op.key), b"", FLAG_BATCH))
        if not items:
            self._check_open()
            return 0
        items.append((Kind.BATCH_END, b"", count_value(len(items)), 0))
        return self._append(items, "batches", defer=self.write_behind)

    def sync(self, ticket: int) -> int:
        """Return once the write that gave `ticket` (and all before it) is on disk.

        Returns the newest ticket now on disk (at least `ticket`): one fsync covers every
        write appended before it began. Under `interval` and `never` this fsyncs too: the
        caller asked for it. Raises StoreStorageError if the write was rolled back (the log
        failed a write or an fsync: then every write not yet durable is undone, see the
        design note).
        """
        try:
            return self._log.sync(ticket)
        except StoreStorageError:
            with self._lock:
                if not self._closed:
                    self._roll_back()
            raise

    def failures(self, after: int, through: int) -> list[tuple[int, int, StoreStorageError]]:
        """The tickets rolled back, as ranges (lo, hi] with their error, that meet
        (after, through], oldest first: a group commit's waiters in them get the error."""
        return self._log.failures(after, through)

    def write_pending(self) -> None:
        """Write what `write_behind` left in memory (not fsynced). Raises StoreStorageError
        (the writes not yet durable undone)."""
        with self._lock:
            try:
                self._log.write_pending()
            except StoreStorageError:
                self._roll_back()
                raise

    @property
    def durability(self) -> Durability:
        """When acknowledged writes reach the disk."""
        return self._durability

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None. Raises KeySizeError, LogCorruptError, StoreStorageError."""
        if not key or len(key) > self._max_key:
            self._check_key(key)
        with self._lock:
            if self._shut:
                self._check_open()
            self._counts["gets"] += 1
            value = self._values.get(key)
            if value is not None:
                return value
            loc = self._index.get(key)
            if loc is None:
                return None
            return self._read(key, loc)

    def _read(self, key: bytes, loc: Location) -> bytes:
        """The value at `loc`, read from the log and cached when small; under `_lock`."""
        # Read under the lock: neither close() nor compaction's segment removal can then
        # close the file (or its map) between the index lookup and the read.
        value = self._log.read_value(loc[0], loc[1], loc[2], loc[3], key)
        size = len(key) + len(value)
        if len(value) <= _CACHED_VALUE_MAX_BYTES and size <= self._value_cache_bytes:
            if self._values_bytes + size > self._value_cache_bytes:
                self._values.clear()
                self._values_bytes = 0
            self._values[key] = value
            self._values_bytes += size
        return value

    def get_view(self, key: bytes) -> bytes | memoryview | None:
        """`get`, but a value of at least VIEW_MIN_BYTES in a sealed segment comes without
        a copy, as a read-only view of the segment's map (the command server writes it
        to its client from there). Raises what `get` raises."""
        if not key or len(key) > self._max_key:
            self._check_key(key)
        with self._lock:
            if self._shut:
                self._check_open()
            self._counts["gets"] += 1
            value = self._values.get(key)
            if value is not None:
                return value
            loc = self._index.get(key)
            if loc is None:
                return None
            if loc[2] >= VIEW_MIN_BYTES:
                return self._log.read_value_view(loc[0], loc[1], loc[2], loc[3], key)
            return self._read(key, loc)

    def scan(
        self,
        prefix: bytes | None = None,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 100,
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) pairs in key order, with start <= key < end and the prefix.

        Raises LogCorruptError, StoreClosedError, StoreStorageError.
        """
        pre = prefix or b""
        lo = max(pre, start or b"")
        with self._lock:
            self._check_open()
            found = self._index.scan(lo, end, pre, limit)
            read = self._log.read_value
            return [(key, read(loc[0], loc[1], loc[2], loc[3], key)) for key, loc in found]

    def scan_page(
        self,
        prefix: bytes | None = None,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 100,
        *,
        max_bytes: int,
        item_bytes: int = 0,
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """`scan` that reads no more than the page it returns, and whether more follow.

        The page stops before its items would pass `max_bytes`, each counted as its key,
        its value and `item_bytes` (a reply's per-item head). The size of a value is known
        from the index before it is read, so values past the budget are never read. The
        first item is returned whatever its size, so a caller paging on always gets on.
        Raises LogCorruptError, StoreClosedError, StoreStorageError.
        """
        pre = prefix or b""
        lo = max(pre, start or b"")
        with self._lock:
            self._check_open()
            found = self._index.scan(lo, end, pre, limit + 1)  # one more: are there more?
            read = self._log.read_value
            page: list[tuple[bytes, bytes]] = []
            used = 0
            for key, loc in found[:limit]:
                # A record is its header, its key and its value: its length gives the
                # value's size (a damaged one is caught by the read, if it is reached).
                used += item_bytes + len(key) + max(loc[2] - HEADER_BYTES - len(key), 0)
                if page and used > max_bytes:
                    break
                page.append((key, read(loc[0], loc[1], loc[2], loc[3], key)))
            return page, len(found) > len(page)

    def scan_keys(
        self,
        prefix: bytes | None = None,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 100,
    ) -> list[bytes]:
        """The keys `scan` would return, without reading their values.

        Raises StoreClosedError, StoreStorageError.
        """
        pre = prefix or b""
        with self._lock:
            self._check_open()
            return [key for key, _ in self._index.scan(max(pre, start or b""), end, pre, limit)]

    def __len__(self) -> int:
        return self._live

    def stats(self) -> StoreStats:
        """Counters, sizes and the recovery report. Raises StoreClosedError."""
        with self._lock:
            self._check_open()
            return StoreStats(
                keys=self._live,
                segments=len(self._log.segments()),
                log_bytes=self._log.total_bytes(),
                last_seq=self._log.last_seq,
                durability=self._durability.value,
                memory_entries=len(self._index.memory),
                fsyncs=self._log.fsyncs,
                puts=self._puts,
                recovery=self.recovery,
                **self._counts,
            )

    def close(self) -> None:
        """Flush the index, fsync the log and release the lock. Idempotent.

        A running compaction stops at its next step (raising StoreClosedError); close waits
        for it, since it reads segment files without the lock.
        """
        self._closing.set()
        self._shut = True
        with self._compacting, self._lock:
            if self._closed:
                return
            self._closed = True
            self._values.clear()
            try:
                self._flush()
            finally:
                try:
                    self._log.close()
                finally:
                    self._index.close()
                    os.close(self._lock_fd)
