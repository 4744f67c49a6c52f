"""The ingest client: files compressed, chunked and spread over the data ports, resumed.

`IngestClient` (sender.py) is the Python API and `postoffice ingest send` is built on it;
payload.py prepares a file (digests, file id, Zstandard copy, chunk plan), links.py holds
the connections to the data ports, watches.py the ack port's side, routing.py the choices
among the nodes of a cluster (MOVED, failover). It shares only the pure protocol
(messages, protocol, errors, the MOVED owner of ownership.py) with the server.
"""

from __future__ import annotations

from postoffice.ingest.client.sender import (
    DEFAULT_CHUNK_SIZE,
    ClientOptions,
    IngestClient,
    SendResult,
    send_files,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "ClientOptions", "IngestClient", "SendResult", "send_files"]
