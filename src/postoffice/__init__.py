"""Post Office: four network services (command, ingest, store, bus) on one shared asyncio core."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
