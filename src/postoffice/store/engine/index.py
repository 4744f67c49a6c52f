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

from __future__ import annotations

import contextlib
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
        with os_errors(StoreStorageError, f"create {directory}"):
            directory.mkdir(parents=True, exist_ok=True)
        with _lmdb_errors("open", directory):
            # No fsync of the meta page: a crash may undo the last commits, never break the
            # file, and an index that lags the log is caught up by replaying the log.
            self._env = lmdb.open(
                str(directory), map_size=map_bytes, max_dbs=2, subdir=True, metasync=False
            )
            try:
                self._check_file()  # before anything reads a page
            except StoreStorageError:
                self._env.close()
                raise
            self._keys = self._env.open_db(b"keys")
            self._meta = self._env.open_db(b"meta")
        self.memory: dict[bytes, Location | None] = {}
        self.frozen: dict[bytes, Location | None] | None = None  # being written in the background
        self._txn_lock = threading.Lock()
        # Locations as LMDB holds them (None: absent): read from it, or just written to it
        # by a flush, so a hot key costs a dict lookup instead of an LMDB read, and a put
        # of a recently written key too. Emptied when full: cheaper than tracking recency.
        self._cache: dict[bytes, Location | None] = {}
        self.cache_entries = cache_entries
        # One read transaction for `get`, begun again after every commit: beginning one per
        # lookup costs more than the lookup. Between a background commit and `thaw` it is
        # older than LMDB, but every key that commit wrote is still in `frozen`, read first.
        self._reader = self._begin_reader()

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

    def write_frozen(self, snapshot: dict[bytes, Location | None], meta: Meta) -> bool:
        """Commit `snapshot` (from `freeze`) and `meta`; False if a `flush` got there first.

        Called without the engine's lock; raises StoreStorageError.
        """
        with self._txn_lock:
            if self.frozen is not snapshot:
                return False
            self._write(snapshot, meta)
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

    def _write(self, layer: dict[bytes, Location | None], meta: Meta) -> None:
        # In key order: LMDB's B-tree takes sorted puts a quarter faster. A key shorter than
        # a bucket key is its bucket's only key (a longer key's bucket key is longer), so
        # its bucket is written without reading it first, all of them by one `putmulti`:
        # the loop over them runs in C and lets go of the GIL around each LMDB put.
        # Keys that may share a bucket are grouped by it, so each bucket is read, edited
        # and written once per flush: edited key by key, a flush of n keys into a bucket
        # of m cost n*m (8,000 keys sharing their first 448 bytes took minutes).
        packers = _ENTRY_PACKERS
        short: list[tuple[bytes, bytes]] = []
        gone: list[bytes] = []
        shared: dict[bytes, list[bytes]] = {}
        for key in sorted(layer):
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
        with _lmdb_errors("write", self._dir), self._env.begin(write=True) as txn:
            keys = self._keys
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

    def scan(
        self, lo: bytes, hi: bytes | None, prefix: bytes, limit: int
    ) -> list[tuple[bytes, Location]]:
        """Up to `limit` live keys k with lo <= k < hi and k starting with `prefix`, in order."""
        if limit <= 0:
            return []

        def wanted(k: bytes) -> bool:
            return k >= lo and (hi is None or k < hi) and k.startswith(prefix)

        layers = self.memory if self.frozen is None else {**self.frozen, **self.memory}
        # The memory layer is unordered: its matching keys, sorted (no call per key).
        found = [k for k in layers if k >= lo and k.startswith(prefix)]
        if hi is not None:
            found = [k for k in found if k < hi]
        found.sort()
        mem = [(k, layers[k]) for k in found]
        out: list[tuple[bytes, Location]] = []
        mi = 0
        with _lmdb_errors("scan", self._dir), self._env.begin(db=self._keys) as txn:
            cur = txn.cursor()
            more = cur.set_range(lo[:BUCKET_KEY_BYTES])
            while more and len(out) < limit:
                bkey = bytes(cur.key())
                if (hi is not None and bkey >= hi) or (bkey[: len(prefix)] > prefix[: len(bkey)]):
                    break
                for key, loc in _decode_bucket(cur.value()):
                    if not wanted(key):
                        continue
                    while mi < len(mem) and mem[mi][0] < key and len(out) < limit:
                        mk, mloc = mem[mi]
                        if mloc is not None:
                            out.append((mk, mloc))
                        mi += 1
                    if len(out) >= limit:
                        break
                    if mi < len(mem) and mem[mi][0] == key:
                        mk, mloc = mem[mi]
                        mi += 1
                        if mloc is not None:
                            out.append((mk, mloc))
                    else:
                        out.append((key, loc))
                    if len(out) >= limit:
                        break
                more = cur.next()
        while mi < len(mem) and len(out) < limit:
            mk, mloc = mem[mi]
            if mloc is not None:
                out.append((mk, mloc))
            mi += 1
        return out

    def close(self) -> None:
        """Close the LMDB environment (the memory layer must have been flushed)."""
        self._reader.abort()
        self._env.close()
