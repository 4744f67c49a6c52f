"""The store service: an append-only log with an LMDB index, served over a binary protocol.

This package's `__all__` is its public API, what other services may use: the engine
(`Store`, opened in-process), `GroupCommit` (the loop's half of its group-committed
fsyncs), the clients (`Client`, `AsyncClient`) and the wire codec's messages and limits.
The server (`postoffice.store.server`) and the CLI are the store's own.
"""

from __future__ import annotations

from postoffice.store.client import AsyncClient, Client
from postoffice.store.engine import (
    DEFAULT_DURABILITY,
    BatchOp,
    Damage,
    Delete,
    Durability,
    GroupCommit,
    Put,
    RecoveryReport,
    Store,
    StoreStats,
)
from postoffice.store.errors import (
    KeySizeError,
    LogCorruptError,
    Status,
    StoreClosedError,
    StoreLimitError,
    StoreLockedError,
    StoreProtocolError,
    StoreRequestError,
    StoreStorageError,
    ValueSizeError,
)
from postoffice.store.wire import (
    MAX_BATCH_OPS,
    MAX_BOUND_BYTES,
    MAX_KEY_BYTES,
    MAX_SCAN_LIMIT,
    MAX_VALUE_BYTES,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PutRequest,
    Request,
    Response,
    ScanRequest,
    StatsRequest,
    decode_delete_body,
    decode_error_body,
    decode_scan_body,
    decode_stats_body,
    next_start,
)

__all__ = [
    "DEFAULT_DURABILITY",
    "MAX_BATCH_OPS",
    "MAX_BOUND_BYTES",
    "MAX_KEY_BYTES",
    "MAX_SCAN_LIMIT",
    "MAX_VALUE_BYTES",
    "AsyncClient",
    "BatchOp",
    "BatchRequest",
    "Client",
    "Damage",
    "Delete",
    "DeleteRequest",
    "Durability",
    "GetRequest",
    "GroupCommit",
    "KeySizeError",
    "LogCorruptError",
    "Put",
    "PutRequest",
    "RecoveryReport",
    "Request",
    "Response",
    "ScanRequest",
    "StatsRequest",
    "Status",
    "Store",
    "StoreClosedError",
    "StoreLimitError",
    "StoreLockedError",
    "StoreProtocolError",
    "StoreRequestError",
    "StoreStats",
    "StoreStorageError",
    "ValueSizeError",
    "decode_delete_body",
    "decode_error_body",
    "decode_scan_body",
    "decode_stats_body",
    "next_start",
]
