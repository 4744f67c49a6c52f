"""The key-value engine (an append-only log of CRC'd records with an LMDB index, opened
with `Store.open`) and `GroupCommit`, the event loop's half of its group-committed fsyncs.
"""

from __future__ import annotations

from postoffice.store.engine.commit import GroupCommit, OwedReplies
from postoffice.store.engine.engine import BatchOp, Delete, Put, RecoveryReport, Store, StoreStats
from postoffice.store.engine.logstore import DEFAULT_DURABILITY, Durability
from postoffice.store.engine.records import Damage
from postoffice.store.errors import (
    KeySizeError,
    LogCorruptError,
    StoreClosedError,
    StoreLockedError,
    StoreStorageError,
    ValueSizeError,
)

__all__ = [
    "DEFAULT_DURABILITY",
    "BatchOp",
    "Damage",
    "Delete",
    "Durability",
    "GroupCommit",
    "KeySizeError",
    "LogCorruptError",
    "OwedReplies",
    "Put",
    "RecoveryReport",
    "Store",
    "StoreClosedError",
    "StoreLockedError",
    "StoreStats",
    "StoreStorageError",
    "ValueSizeError",
]
