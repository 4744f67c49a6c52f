"""The store's key index: LMDB on disk with an in-memory layer of recent writes in front.

Blocking I/O layer; not thread-safe on its own: the engine serialises every call.
"""

# Design
# ------
# LMDB refuses keys over 511 bytes but the store allows longer ones, so LMDB holds buckets:
# the LMDB key is the store key's first BUCKET_KEY_BYTES bytes and the value lists every store
# key sharing that prefix as [u16 key_len][key][location], sorted. Truncation keeps order
# (if a[:n] < b[:n] then a < b), so a cursor walk over buckets yields keys in order.
# Recent writes live in `memory` (key -> location, or None for a tombstone) and reach LMDB in
# one write transaction per `flush`, together with the meta record: the log position every
# indexed record lies before, the last sequence number and the live key count.
#
# A flush can also run in the background, so writers never wait for LMDB: `freeze` moves
# `memory` aside into `frozen` (still read, below `memory`), `write_frozen` commits it
# without the engine's lock, and `thaw` drops it. `_txn_lock` orders LMDB write
# transactions: a foreground `flush` (which writes frozen and memory together) and a
# background one never commit out of order, and a background commit that finds its
# snapshot already written by a foreground flush does nothing.
#
# A scan merges LMDB's cursor with the memory layers in key order. A layer only gains keys
# until a flush or a freeze puts a new dict in its place (`reset` empties it), and a dict
# keeps insertion order, so each layer's sorted keys are kept between scans (`_Order`) and
# brought up to date by sorting in the keys past the count last seen; a scan then bisects
# to its first key and reads only as far as its limit takes it.

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast, final

import lmdb

from postoffice.core.errors import os_errors
from postoffice.store.engine.logstore import Position
from postoffice.store.errors import StoreStorageError

BUCKET_KEY_BYTES: Final = 448  # under LMDB's compiled-in 511-byte key limit
_LOC: Final = struct.Struct("<IQIQ")
_KLEN: Final = struct.Struct("<H")
_META: Final = struct.Struct("<IQQQ")
_META_KEY: Final = b"position"
DEFAULT_CACHE_ENTRIES: Final = 1 << 18  # ~60 MB of cached locations at most
#: Entries a flush packs and puts between two calls of its `pause` (see `_write`): about
#: a quarter of a millisecond of packing, what an event loop may wait for the GIL.
FLUSH_STEP_ENTRIES: Final = 512
# LMDB's two meta pages, which no database's stat counts.
_META_PAGES: Final = 2
# `compact_file` leaves a file alone unless it could shed this many pages (1 MiB of 4 KiB
# pages) and half its size: a copy costs a pass over the whole index.
_COMPACT_MIN_PAGES: Final = 256
# A bucket of one key in one pack call, [u16 key_len][key][location], by key length.
_ENTRY_PACKERS: Final[dict[int, Callable[..., bytes]]] = {}


#: Where a key's current record lies in the log: (segment, offset, length, seq).
#: A plain tuple, not a named tuple or a dataclass: one is made per write and per index
#: read, the log's append returns it as it is, and the garbage collector stops tracking
#: a tuple of ints after its first pass (a named tuple it tracks, and walks on every full
#: collection, for as long as the memory layer or the cache holds it).
Location = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    """The index's persisted progress through the log."""

    position: Position
    last_seq: int
    live_keys: int


@dataclass(slots=True, kw_only=True)
class _Order:
    """A memory layer's keys in order, as of when it held `count` keys."""

    layer: dict[bytes, Location | None]
    count: int = 0
    keys: list[bytes] = field(default_factory=list)


def _pack_loc(loc: Location) -> bytes:
    return _LOC.pack(*loc)


def _decode_bucket(raw: bytes) -> list[tuple[bytes, Location]]:
    """A bucket's entries. Raises StoreStorageError if it is malformed."""
    out: list[tuple[bytes, Location]] = []
    pos = 0
    try:
        while pos < len(raw):
            (klen,) = _KLEN.unpack_from(raw, pos)
            pos += _KLEN.size
            key = bytes(raw[pos : pos + klen])
            pos += klen
            out.append((key, cast(Location, _LOC.unpack_from(raw, pos))))
            pos += _LOC.size
    except struct.error as exc:
        raise _damaged_bucket(raw) from exc
    return out


def _damaged_bucket(raw: bytes) -> StoreStorageError:
    return StoreStorageError(f"index bucket {bytes(raw[2:18])!r}... of {len(raw)} bytes is damaged")


def _only_entry(raw: bytes, key: bytes) -> bool:
    """Whether a bucket holds `key` alone (the common case: keys rarely share 448 bytes)."""
    return len(raw) == _KLEN.size + len(key) + _LOC.size and raw[_KLEN.size : -_LOC.size] == key


def _find_in_bucket(raw: bytes, key: bytes) -> Location | None:
    """The location of `key` in a bucket, decoding only that entry."""
    pos = 0
    end = len(raw)
    klen_size = _KLEN.size
    while pos < end:
        (klen,) = _KLEN.unpack_from(raw, pos)
        pos += klen_size
        if raw[pos : pos + klen] == key:
            return cast(Location, _LOC.unpack_from(raw, pos + klen))
        pos += klen + _LOC.size
    return None


def _encode_bucket(entries: list[tuple[bytes, Location]]) -> bytes:
    return b"".join(_KLEN.pack(len(k)) + k + _pack_loc(loc) for k, loc in sorted(entries))


@contextlib.contextmanager
def _lmdb_errors(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except lmdb.Error as exc:
        raise StoreStorageError(f"cannot {action} index {path}: {exc}") from exc


@final
class Index:
    """Key -> Location, persisted in LMDB, with a write-back memory layer.

    Raises StoreStorageError when LMDB fails.
    """

    def __init__(
        self, directory: Path, *, map_bytes: int, cache_entries: int = DEFAULT_CACHE_ENTRIES
    ) -> None:
        self._dir = directory
        self._map_bytes = map_bytes
        with os_errors(StoreStorageError, f"create {directory}"):
            directory.mkdir(parents=True, exist_ok=True)
        self._open_env()
        self.memory: dict[bytes, Location | None] = {}
        self.frozen: dict[bytes, Location | None] | None = None  # being written in the background
        self._txn_lock = threading.Lock()
        # Locations as LMDB holds them (None: absent): read from it, or just written to it
        # by a flush, so a hot key costs a dict lookup instead of an LMDB read, and a put
        # of a recently written key too. Emptied when full: cheaper than tracking recency.
        self._cache: dict[bytes, Location | None] = {}
        self.cache_entries = cache_entries
        self._orders: list[_Order] = []  # of `memory` and `frozen`, for scans
        # One read transaction for `get`, begun again after every commit: beginning one per
        # lookup costs more than the lookup. Between a background commit and `thaw` it is
        # older than LMDB, but every key that commit wrote is still in `frozen`, read first.
        self._reader = self._begin_reader()

    def _open_env(self) -> None:
        with _lmdb_errors("open", self._dir):
            # No fsync of the meta page: a crash may undo the last commits, never break the
            # file, and an index that lags the log is caught up by replaying the log.
            self._env = lmdb.open(
                str(self._dir), map_size=self._map_bytes, max_dbs=2, subdir=True, metasync=False
            )
            try:
                self._check_file()  # before anything reads a page
            except StoreStorageError:
                self._env.close()
                raise
            self._keys = self._env.open_db(b"keys")
            self._meta = self._env.open_db(b"meta")

    @classmethod
    def open_or_reset(cls, directory: Path, *, map_bytes: int) -> tuple[Index, str | None]:
        """Open the index; a damaged one is deleted and created empty, with the reason."""
        index: Index | None = None
        try:
            index = cls(directory, map_bytes=map_bytes)
            index.meta()  # a damaged file may only fail on first read
        except StoreStorageError as exc:
            if index is not None:
                with contextlib.suppress(lmdb.Error):
                    index.close()
            shutil.rmtree(directory, ignore_errors=True)
            return cls(directory, map_bytes=map_bytes), f"index damaged: {exc}"
        return index, None

    def __repr__(self) -> str:
        return f"<Index {self._dir} memory={len(self.memory)}>"

    def _check_file(self) -> None:
        """Raise StoreStorageError if the data file is shorter than its pages say.

        LMDB maps the file and trusts it: a page past a cut-short file is not an error but
        a SIGBUS that kills the process on first touch, so the length is checked first.
        """
        path = self._dir / "data.mdb"
        with _lmdb_errors("read", self._dir):
            pages = self._env.info()["last_pgno"] + 1
            page_bytes = self._env.stat()["psize"]
        with os_errors(StoreStorageError, f"stat {path}"):
            size = path.stat().st_size
        if size < pages * page_bytes:
            raise StoreStorageError(
                f"index file {path} of {size} bytes is shorter than its {pages} pages of"
                f" {page_bytes} bytes"
            )

    def entries(self) -> Iterator[tuple[bytes, Location]]:
        """Every key LMDB holds and its location (the memory layers not included)."""
        with _lmdb_errors("read", self._dir), self._env.begin(db=self._keys) as txn:
            for _, raw in txn.cursor():
                yield from _decode_bucket(raw)

    def meta(self) -> Meta | None:
        """The persisted progress, or None for a new (or reset) index."""
        with _lmdb_errors("read", self._dir), self._env.begin(db=self._meta) as txn:
            raw = txn.get(_META_KEY)
        if raw is None or len(raw) != _META.size:
            return None
        seg, off, seq, live = _META.unpack(raw)
        return Meta(position=Position(seg, off), last_seq=seq, live_keys=live)

    def reset(self) -> None:
        """Forget every key and the meta record (before a rebuild)."""
        self.memory.clear()
        self._cache.clear()
        self._orders.clear()
        with _lmdb_errors("reset", self._dir), self._env.begin(write=True) as txn:
            txn.drop(self._keys, delete=False)
            txn.drop(self._meta, delete=False)
        self._renew_reader()

    def _begin_reader(self) -> lmdb.Transaction:
        with _lmdb_errors("read", self._dir):
            return self._env.begin(db=self._keys)

    def _renew_reader(self) -> None:
        """See the latest commit (and let LMDB reuse the pages the old view pinned)."""
        self._reader.abort()
        self._reader = self._begin_reader()

    def _written(self, entries: dict[bytes, Location | None]) -> None:
        """After a commit of `entries`: the reader sees it, the cache holds what it wrote."""
        self._renew_reader()
        cache = self._cache
        if len(cache) + len(entries) > self.cache_entries:
            cache.clear()
        cache.update(entries)

    def get(self, key: bytes) -> Location | None:
        """The key's location, or None if it is absent or deleted."""
        # The hot path of every read and write: no context-manager helpers, and only the
        # matching bucket entry is decoded.
        memory = self.memory
        if key in memory:
            return memory[key]
        frozen = self.frozen
        if frozen is not None and key in frozen:
            return frozen[key]
        cache = self._cache
        if key in cache:
            return cache[key]
        try:
            raw = cast("bytes | None", self._reader.get(key[:BUCKET_KEY_BYTES]))
        except lmdb.Error as exc:
            raise StoreStorageError(f"cannot read index {self._dir}: {exc}") from exc
        if raw is None:
            loc = None
        elif _only_entry(raw, key):
            loc = cast(Location, _LOC.unpack_from(raw, _KLEN.size + len(key)))
        else:
            try:
                loc = _find_in_bucket(raw, key)
            except struct.error as exc:
                raise _damaged_bucket(raw) from exc
        if len(cache) >= self.cache_entries:
            cache.clear()
        cache[key] = loc
        return loc

    def replace(self, key: bytes, loc: Location) -> Location | None:
        """`set` the key's new location and return what `get` would have: the put path's
        live-key count and its index entry in one call."""
        memory = self.memory
        frozen = self.frozen
        cache = self._cache
        if key in memory:
            old = memory[key]
        elif frozen is not None and key in frozen:
            old = frozen[key]
        elif key in cache:
            old = cache[key]
        else:
            old = self.get(key)  # from LMDB
        memory[key] = loc
        return old

    def set(self, key: bytes, loc: Location | None) -> None:
        """Record a key's new location, or a tombstone (None).

        The cache may keep the key's older location: the memory layer is read first, and
        the flush that writes the key puts its new location in the cache.
        """
        self.memory[key] = loc

    def flush(self, meta: Meta) -> None:
        """Write the frozen and memory layers and `meta` to LMDB in one transaction, then
        clear both."""
        with self._txn_lock:
            entries = self.memory if self.frozen is None else {**self.frozen, **self.memory}
            self._write(entries, meta)
            self.frozen = None
            self.memory = {}
            self._written(entries)

    def freeze(self) -> dict[bytes, Location | None]:
        """Move the memory layer aside for a background `write_frozen`; it stays readable."""
        if self.frozen is not None:
            raise StoreStorageError("index: a background flush is already in progress")
        self.frozen, self.memory = self.memory, {}
        return self.frozen

    def write_frozen(
        self,
        snapshot: dict[bytes, Location | None],
        meta: Meta,
        pause: Callable[[], None] | None = None,
    ) -> bool:
        """Commit `snapshot` (from `freeze`) and `meta`; False if a `flush` got there first.

        Called without the engine's lock; `pause` is called after every FLUSH_STEP_ENTRIES
        entries packed and put (see `_write`). Raises StoreStorageError.
        """
        with self._txn_lock:
            if self.frozen is not snapshot:
                return False
            self._write(snapshot, meta, pause)
            return True

    def thaw(self, snapshot: dict[bytes, Location | None], *, written: bool) -> None:
        """Drop the frozen layer once written; if the write failed, fold it back into memory."""
        if self.frozen is not snapshot:
            return
        if written:
            self._written(snapshot)
        else:
            self.memory = {**snapshot, **self.memory}
        self.frozen = None

    def _write(
        self,
        layer: dict[bytes, Location | None],
        meta: Meta,
        pause: Callable[[], None] | None = None,
    ) -> None:
        # In key order: LMDB's B-tree takes sorted puts a quarter faster. A key shorter than
        # a bucket key is its bucket's only key (a longer key's bucket key is longer), so
        # its bucket is written without reading it first, by one `putmulti` per step:
        # the loop over them runs in C and lets go of the GIL around each LMDB put.
        # Keys that may share a bucket are grouped by it, so each bucket is read, edited
        # and written once per flush: edited key by key, a flush of n keys into a bucket
        # of m cost n*m (8,000 keys sharing their first 448 bytes took minutes).
        # The entries are packed and put FLUSH_STEP_ENTRIES at a time with `pause` between
        # steps: a background flush packs in Python, holding the GIL, and a waiting event
        # loop gets it back only when this thread lets go (after the 5 ms switch interval
        # otherwise, and then only for one callback): a whole layer packed in one go stalled
        # the loop for as long as the packing took (tens of ms).
        packers = _ENTRY_PACKERS
        ordered = sorted(layer)
        shared: dict[bytes, list[bytes]] = {}
        keys = self._keys
        with _lmdb_errors("write", self._dir), self._env.begin(write=True) as txn:
            for at in range(0, len(ordered), FLUSH_STEP_ENTRIES):
                if at and pause is not None:
                    pause()
                short: list[tuple[bytes, bytes]] = []
                gone: list[bytes] = []
                for key in ordered[at : at + FLUSH_STEP_ENTRIES]:
                    size = len(key)
                    if size >= BUCKET_KEY_BYTES:
                        shared.setdefault(key[:BUCKET_KEY_BYTES], []).append(key)
                        continue
                    loc = layer[key]
                    if loc is None:
                        gone.append(key)
                        continue
                    pack = packers.get(size)
                    if pack is None:
                        pack = packers[size] = struct.Struct(f"<H{size}s{_LOC.format[1:]}").pack
                    short.append((key, pack(size, key, *loc)))
                if short:
                    txn.cursor(db=keys).putmulti(short)
                for key in gone:
                    txn.delete(key, db=keys)
            for bkey, edited in shared.items():
                self._write_shared(txn, bkey, [(key, layer[key]) for key in edited])
            txn.put(
                _META_KEY,
                _META.pack(
                    meta.position.segment, meta.position.offset, meta.last_seq, meta.live_keys
                ),
                db=self._meta,
            )

    def _write_shared(
        self, txn: lmdb.Transaction, bkey: bytes, edits: list[tuple[bytes, Location | None]]
    ) -> None:
        """Write the keys of one bucket that other keys may share: read it, edit it, put
        it back (one decode and one encode, however many keys change)."""
        keys = self._keys
        raw = cast("bytes | None", txn.get(bkey, db=keys))
        if len(edits) == 1 and (raw is None or _only_entry(raw, edits[0][0])):
            key, loc = edits[0]  # no other key in the bucket
            if loc is not None:
                txn.put(bkey, _KLEN.pack(len(key)) + key + _LOC.pack(*loc), db=keys)
            elif raw is not None:
                txn.delete(bkey, db=keys)
            return
        entries = dict(_decode_bucket(raw)) if raw is not None else {}
        for key, loc in edits:
            if loc is None:
                entries.pop(key, None)
            else:
                entries[key] = loc
        if entries:
            txn.put(bkey, _encode_bucket(list(entries.items())), db=keys)
        elif raw is not None:
            txn.delete(bkey, db=keys)

    def _ordered(self, layer: dict[bytes, Location | None]) -> list[bytes]:
        """The keys of a memory layer in order (see the design note)."""
        for order in self._orders:
            if order.layer is layer:
                break
        else:
            order = _Order(layer=layer)
            # Only the layers in use are kept: a flushed one is let go at the next scan.
            live = [o for o in self._orders if o.layer is self.memory or o.layer is self.frozen]
            self._orders = [*live, order]
        count = len(layer)
        if count < order.count:  # emptied and filled again: sort it afresh
            order.count = 0
            order.keys = []
        if count > order.count:
            # The keys added since the last scan come last in the dict's order; appending
            # them sorted and sorting again merges two runs, in C.
            order.keys += sorted(itertools.islice(layer, order.count, None))
            order.keys.sort()
            order.count = count
        return order.keys

    def _memory_from(
        self, start: bytes, hi: bytes | None, prefix: bytes
    ) -> Iterator[tuple[bytes, Location | None]]:
        """The memory layers' entries (tombstones too) from `start` on, below `hi` and
        starting with `prefix`, in key order; the memory layer wins over the frozen one."""
        memory = self.memory
        frozen = self.frozen
        keys = self._ordered(memory)
        ordered: Iterator[bytes] = itertools.islice(keys, bisect.bisect_left(keys, start), None)
        if frozen is not None:
            fkeys = self._ordered(frozen)
            ordered = heapq.merge(
                ordered, itertools.islice(fkeys, bisect.bisect_left(fkeys, start), None)
            )
        last: bytes | None = None
        for key in ordered:
            # Every key from `start` (at least `prefix`) on that starts with `prefix` comes
            # before every one that does not.
            if (hi is not None and key >= hi) or not key.startswith(prefix):
                return
            if key == last:  # in both layers
                continue
            last = key
            if key in memory:
                yield key, memory[key]
            elif frozen is not None:
                yield key, frozen[key]

    def scan(
        self, lo: bytes, hi: bytes | None, prefix: bytes, limit: int
    ) -> list[tuple[bytes, Location]]:
        """Up to `limit` live keys k with lo <= k < hi and k starting with `prefix`, in order."""
        if limit <= 0:
            return []
        mem = self._memory_from(max(lo, prefix), hi, prefix)
        pending = next(mem, None)  # the memory layers' next entry
        out: list[tuple[bytes, Location]] = []
        plen = len(prefix)
        unpack = _LOC.unpack_from
        entry_bytes = _KLEN.size + _LOC.size  # and the key
        with _lmdb_errors("scan", self._dir), self._env.begin(db=self._keys) as txn:
            cur = txn.cursor()
            buckets = cur.iternext() if cur.set_range(lo[:BUCKET_KEY_BYTES]) else iter(())
            for bkey, raw in buckets:
                if (hi is not None and bkey >= hi) or (bkey[:plen] > prefix[: len(bkey)]):
                    break
                if len(bkey) < BUCKET_KEY_BYTES and len(raw) == entry_bytes + len(bkey):
                    # A short key is its bucket's only key: no decode of a list.
                    only: Location = unpack(raw, _KLEN.size + len(bkey))
                    entries: list[tuple[bytes, Location]] = [(bkey, only)]
                else:
                    entries = _decode_bucket(raw)
                for key, loc in entries:
                    if key < lo or (hi is not None and key >= hi) or not key.startswith(prefix):
                        continue
                    while pending is not None and pending[0] < key and len(out) < limit:
                        mk, mloc = pending
                        if mloc is not None:
                            out.append((mk, mloc))
                        pending = next(mem, None)
                    if len(out) >= limit:
                        break
                    if pending is not None and pending[0] == key:
                        mk, mloc = pending
                        pending = next(mem, None)
                        if mloc is not None:
                            out.append((mk, mloc))
                    else:
                        out.append((key, loc))
                    if len(out) >= limit:
                        break
                if len(out) >= limit:
                    break
        while pending is not None and len(out) < limit:
            mk, mloc = pending
            if mloc is not None:
                out.append((mk, mloc))
            pending = next(mem, None)
        return out

    def file_bytes(self) -> int:
        """The size of LMDB's data file. Raises StoreStorageError."""
        path = self._dir / "data.mdb"
        with os_errors(StoreStorageError, f"stat {path}"):
            return path.stat().st_size

    def compact_file(self) -> int:
        """Rewrite LMDB's data file without its free pages if they are most of it; return
        the bytes saved (0 if it was left alone).

        LMDB reuses the pages it frees but never gives them back, so after a compaction of
        the log (or many deletes) the file stays as large as it ever was. A compacting
        copy writes only the pages in use; it is fsynced and then renamed over the file,
        so a crash leaves one whole file or the other, holding the same entries. The
        memory layers and the cache are kept (they hold the same locations). Call with
        no reader of the index running. Raises StoreStorageError.
        """
        with self._txn_lock:  # no background flush meanwhile
            with _lmdb_errors("read", self._dir), self._env.begin() as txn:
                stats = (txn.stat(self._keys), txn.stat(self._meta), self._env.stat())
                used = _META_PAGES + sum(
                    stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
                    for stat in stats
                )
                pages = self._env.info()["last_pgno"] + 1
            if pages < 2 * used + _COMPACT_MIN_PAGES:
                return 0
            before = self.file_bytes()
            path = self._dir / "data.mdb"
            tmp = self._dir.with_name(self._dir.name + ".compact")
            shutil.rmtree(tmp, ignore_errors=True)
            with os_errors(StoreStorageError, f"create {tmp}"):
                tmp.mkdir()
            try:
                with _lmdb_errors("copy", self._dir):
                    self._env.copy(str(tmp), compact=True)
                with os_errors(StoreStorageError, f"fsync {tmp}"):
                    fd = os.open(tmp / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                self._reader.abort()
                self._env.close()
                try:
                    with os_errors(StoreStorageError, f"replace {path}"):
                        os.replace(tmp / "data.mdb", path)
                        fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                finally:
                    self._open_env()  # the copy, or the old file if the rename failed
                    self._reader = self._begin_reader()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return before - self.file_bytes()

    def close(self) -> None:
        """Close the LMDB environment (the memory layer must have been flushed)."""
        self._reader.abort()
        self._env.close()
