"""The embedded stores `peers.py` compares, behind one small interface: ours (`Store`),
sqlite3 in WAL mode, py-lmdb and RocksDB through rocksdict, each at equal durability."""

# Design
# ------
# Each peer is opened in one of two modes, and each mode is set so that the peers promise
# the same thing when a call returns (SETTINGS spells out every setting, the JSON repeats it):
#   durable:  the write is on disk (fsynced) before the call returns. Ours `always` (group
#             commit: concurrent writers share an fsync), sqlite `journal_mode=WAL` with
#             `synchronous=FULL` (the WAL is fsynced at every commit), lmdb `sync=True,
#             metasync=True` (its defaults: every commit fsyncs data and meta page),
#             rocksdict `WriteOptions.sync = True` (the WAL is fsynced before the write
#             returns; RocksDB groups concurrent writers' WAL writes).
#   interval: the write survives a crash of the process (it is in the OS when the call
#             returns) but not of the machine. Ours `interval` (write(2) per put, fsync
#             every 100 ms, so a power loss takes at most the last 100 ms), sqlite WAL with
#             `synchronous=NORMAL` (fsync at checkpoints only), lmdb `sync=False,
#             metasync=False` (the OS writes back when it likes), rocksdict `sync=False`
#             (WAL written per write, never fsynced on its own). Ours promises more here.
# Every peer uses its library's defaults otherwise, as a Python user starting out would,
# with the table sqlite users write first: `CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB)`.

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol, final

import lmdb

from postoffice.store import Put, Store

PEERS: Final = ("ours", "sqlite", "lmdb", "rocksdb")
MODES: Final = ("durable", "interval")

#: Each peer's exact setting per mode; see the design note for why they match.
SETTINGS: Final[dict[str, dict[str, str]]] = {
    "ours": {
        "durable": "Store.open(durability='always')",
        "interval": "Store.open(durability='interval')  # fsync every 100 ms",
    },
    "sqlite": {
        "durable": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; autocommit",
        "interval": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; autocommit",
    },
    "lmdb": {
        "durable": "lmdb.open(sync=True, metasync=True)",
        "interval": "lmdb.open(sync=False, metasync=False)",
    },
    "rocksdb": {
        "durable": "Rdict(Options(raw_mode=True)), WriteOptions.sync = True",
        "interval": "Rdict(Options(raw_mode=True)), WriteOptions.sync = False",
    },
}

#: How to get the peers that are not in the project's own dependencies.
INSTALL_HINT: Final = (
    "rocksdict is missing: install the benchmark's peers with "
    "`.venv/bin/pip install -e '.[bench]'` (or `.venv/bin/pip install rocksdict`)"
)

#: py-lmdb's map: sparse, address space only; 16 GiB holds every data set here thrice over.
LMDB_MAP_BYTES: Final = 1 << 34
#: How long a sqlite writer waits for another connection's write lock (8 threads).
SQLITE_BUSY_TIMEOUT_S: Final = 60.0


def rocksdict_missing() -> bool:
    """Whether the rocksdict package cannot be imported."""
    return importlib.util.find_spec("rocksdict") is None


class Peer(Protocol):
    """What the benchmark calls on every store; every call is one transaction."""

    def put(self, key: bytes, value: bytes) -> None:
        """Set one key."""
        ...

    def put_many(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        """Set many keys in one transaction (write batch)."""
        ...

    def get(self, key: bytes) -> bytes | None:
        """One key's value, or None."""
        ...

    def scan(self, start: bytes, count: int) -> list[tuple[bytes, bytes]]:
        """The first `count` pairs from `start` on, in key order."""
        ...

    def for_thread(self) -> Peer:
        """A handle another thread may write through (sqlite: its own connection)."""
        ...

    def release(self) -> None:
        """Let go of what `for_thread` opened (a no-op for the others)."""
        ...

    def compact(self, into: Path) -> Path:
        """Reclaim the space of overwritten values; return the directory now holding the
        data (`into` for lmdb, whose compaction is a copy; the store's own otherwise)."""
        ...

    def close(self) -> None:
        """Flush what the library flushes on close, and close."""
        ...


@final
class Ours:
    """`postoffice.store.Store`."""

    def __init__(self, path: Path, mode: str) -> None:
        self._path = path
        self._store = Store.open(path, durability="always" if mode == "durable" else "interval")

    def __repr__(self) -> str:
        return f"<Ours {self._store!r}>"

    def put(self, key: bytes, value: bytes) -> None:
        self._store.put(key, value)

    def put_many(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        self._store.batch([Put(key=key, value=value) for key, value in pairs])

    def get(self, key: bytes) -> bytes | None:
        return self._store.get(key)

    def scan(self, start: bytes, count: int) -> list[tuple[bytes, bytes]]:
        return self._store.scan(start=start, limit=count)

    def for_thread(self) -> Peer:
        return self

    def release(self) -> None:
        pass

    def compact(self, into: Path) -> Path:
        self._store.compact()
        return self._path

    def close(self) -> None:
        self._store.close()

    @property
    def store(self) -> Store:
        """The engine itself (its recovery report)."""
        return self._store


@final
class Sqlite:
    """sqlite3 in WAL mode, one statement per transaction (autocommit)."""

    def __init__(self, path: Path, mode: str, *, create: bool = True) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._mode = mode
        self._file = path / "kv.sqlite"
        self._sync = "FULL" if mode == "durable" else "NORMAL"
        self._conn = self._connect()
        if create:
            self._conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB)")

    def __repr__(self) -> str:
        return f"<Sqlite {self._file} synchronous={self._sync}>"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._file,
            isolation_level=None,
            check_same_thread=False,
            timeout=SQLITE_BUSY_TIMEOUT_S,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        return conn

    def put(self, key: bytes, value: bytes) -> None:
        self._conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

    def put_many(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", pairs)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def get(self, key: bytes) -> bytes | None:
        row = self._conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def scan(self, start: bytes, count: int) -> list[tuple[bytes, bytes]]:
        cursor = self._conn.execute(
            "SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT ?", (start, count)
        )
        return [(bytes(key), bytes(value)) for key, value in cursor]

    def for_thread(self) -> Peer:
        return Sqlite(self._file.parent, self._mode, create=False)

    def release(self) -> None:
        self._conn.close()

    def compact(self, into: Path) -> Path:
        self._conn.execute("VACUUM")
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self._file.parent

    def close(self) -> None:
        self._conn.close()


@final
class Lmdb:
    """py-lmdb alone: one transaction per call."""

    def __init__(self, path: Path, mode: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        durable = mode == "durable"
        self._path = path
        self._env = lmdb.open(
            str(path), map_size=LMDB_MAP_BYTES, sync=durable, metasync=durable, max_readers=64
        )

    def __repr__(self) -> str:
        return f"<Lmdb {self._path}>"

    def put(self, key: bytes, value: bytes) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(key, value)

    def put_many(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        with self._env.begin(write=True) as txn, txn.cursor() as cursor:
            cursor.putmulti(pairs)

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin() as txn:
            value: bytes | None = txn.get(key)
            return value

    def scan(self, start: bytes, count: int) -> list[tuple[bytes, bytes]]:
        found: list[tuple[bytes, bytes]] = []
        with self._env.begin() as txn, txn.cursor() as cursor:
            if not cursor.set_range(start):
                return found
            for pair in cursor:
                found.append(pair)
                if len(found) == count:
                    break
        return found

    def for_thread(self) -> Peer:
        return self

    def release(self) -> None:
        pass

    def compact(self, into: Path) -> Path:
        into.mkdir(parents=True)
        self._env.copy(str(into), compact=True)
        return into

    def close(self) -> None:
        self._env.close()


@final
class Rocks:
    """RocksDB through rocksdict, bytes in and out (`raw_mode`)."""

    def __init__(self, path: Path, mode: str) -> None:
        import rocksdict  # an optional peer: imported only when asked for

        self._rocksdict = rocksdict
        self._path = path
        self._db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
        self._write = rocksdict.WriteOptions()
        self._write.sync = mode == "durable"
        self._db.set_write_options(self._write)

    def __repr__(self) -> str:
        return f"<Rocks {self._path} sync={self._write.sync}>"

    def put(self, key: bytes, value: bytes) -> None:
        self._db.put(key, value)

    def put_many(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        batch = self._rocksdict.WriteBatch(raw_mode=True)
        for key, value in pairs:
            batch.put(key, value)
        self._db.write(batch)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def scan(self, start: bytes, count: int) -> list[tuple[bytes, bytes]]:
        found: list[tuple[bytes, bytes]] = []
        it = self._db.iter()
        it.seek(start)
        while it.valid() and len(found) < count:
            found.append((it.key(), it.value()))
            it.next()
        del it  # an iterator keeps the database open
        return found

    def for_thread(self) -> Peer:
        return self

    def release(self) -> None:
        pass

    def compact(self, into: Path) -> Path:
        self._db.compact_range(None, None)
        return self._path

    def close(self) -> None:
        self._db.close()
        del self._db


def open_peer(name: str, path: Path, mode: str) -> Peer:
    """Open (creating) peer `name` at `path` in `mode` ("durable" or "interval")."""
    if mode not in MODES:
        raise ValueError(f"mode must be durable or interval, not {mode!r}")
    if name == "ours":
        return Ours(path, mode)
    if name == "sqlite":
        return Sqlite(path, mode)
    if name == "lmdb":
        return Lmdb(path, mode)
    if name == "rocksdb":
        return Rocks(path, mode)
    raise ValueError(f"peer must be one of {', '.join(PEERS)}, not {name!r}")


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk for every file under `path` (st_blocks, as du counts)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(entry.stat().st_blocks * 512 for entry in path.rglob("*") if entry.is_file())


def remove(path: Path) -> None:
    """Delete a peer's directory, if there."""
    shutil.rmtree(path, ignore_errors=True)
