"""Errors of the store engine: storage, corruption, locking and size limits."""

from __future__ import annotations

from postoffice.core.errors import ClosedError, LimitExceeded, StorageError


class StoreStorageError(StorageError):
    """The store's files could not be read or written (an OS or LMDB error)."""


class LogCorruptError(StoreStorageError):
    """A log record failed its checksum or its framing; its bytes are never returned."""


class StoreLockedError(StoreStorageError):
    """Another process (or another open Store) already holds the store's lock."""


class StoreClosedError(ClosedError):
    """The Store was closed and can no longer be used."""


class KeySizeError(LimitExceeded):
    """A key is empty or longer than `max_key_bytes`."""


class ValueSizeError(LimitExceeded):
    """A value is longer than `max_value_bytes`."""
