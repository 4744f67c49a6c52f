"""The store service: the key-value engine of `postoffice.core.kv`, served over the store's
binary protocol (seed 003). The engine and the clients are re-exported here, so a user of
the store imports one package."""

from __future__ import annotations

from postoffice.core.kv import (
    BatchOp,
    Damage,
    Delete,
    Durability,
    KeySizeError,
    LogCorruptError,
    Put,
    RecoveryReport,
    Store,
    StoreClosedError,
    StoreLockedError,
    StoreStats,
    StoreStorageError,
    ValueSizeError,
)
from postoffice.core.storeclient import AsyncClient, Client, StoreRequestError

__all__ = [
    "AsyncClient",
    "BatchOp",
    "Client",
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
    "StoreRequestError",
    "StoreStats",
    "StoreStorageError",
    "ValueSizeError",
]
