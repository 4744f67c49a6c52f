"""The store service: an embedded key-value engine (append-only log + LMDB index)."""

from __future__ import annotations

from postoffice.core.storeclient import AsyncClient, Client, StoreRequestError
from postoffice.store.engine import BatchOp, Delete, Put, RecoveryReport, Store, StoreStats
from postoffice.store.errors import (
    KeySizeError,
    LogCorruptError,
    StoreClosedError,
    StoreLockedError,
    StoreStorageError,
    ValueSizeError,
)
from postoffice.store.logstore import Durability
from postoffice.store.records import Damage

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
