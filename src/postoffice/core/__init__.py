"""The shared core: config, frames, connections, listeners, runtime, metrics, logging."""

from __future__ import annotations

from postoffice.core.errors import (
    BrokenError,
    ClosedError,
    ConfigError,
    LimitExceeded,
    PostOfficeError,
    ProtocolError,
    StorageError,
)

__all__ = [
    "BrokenError",
    "ClosedError",
    "ConfigError",
    "LimitExceeded",
    "PostOfficeError",
    "ProtocolError",
    "StorageError",
]
