"""The key-value engine: an append-only log of CRC'd records with an LMDB index (seed 002).

Core layer: the store service serves it over the binary protocol, and the command server
can open it in its own process (`--store-dir`). It lives in core, not in the store
service, because more than the store uses it, and services never import one another.
Open a directory with `Store.open`; `GroupCommit` (commit.py) is the event loop's half of
group-committed fsyncs, shared by both servers.
"""

from __future__ import annotations

from postoffice.core.kv.engine import BatchOp, Delete, Put, RecoveryReport, Store, StoreStats
from postoffice.core.kv.errors import (
    KeySizeError,
    LogCorruptError,
    StoreClosedError,
    StoreLockedError,
    StoreStorageError,
    ValueSizeError,
)
from postoffice.core.kv.logstore import DEFAULT_DURABILITY, Durability
from postoffice.core.kv.records import Damage

__all__ = [
    "DEFAULT_DURABILITY",
    "BatchOp",
    "Damage",
    "Delete",
    "Durability",
    "KeySizeError",
    "LogCorruptError",
    "Put",
    "RecoveryReport",
    "Store",
    "StoreClosedError",
    "StoreLockedError",
    "StoreStats",
    "StoreStorageError",
    "ValueSizeError",
]
