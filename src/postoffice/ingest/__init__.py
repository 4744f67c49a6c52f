"""The ingest service's public API: its server, its config and its client (zstd-compressed
chunks in over X data ports, files out)."""

from __future__ import annotations

from postoffice.ingest.client import IngestClient, SendResult, send_files
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.server import IngestServer

__all__ = ["IngestClient", "IngestConfig", "IngestServer", "SendResult", "send_files"]
