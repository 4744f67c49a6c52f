"""Post Office: three network services (command, ingest, store) on one shared asyncio core."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
