"""The cluster library's one error: NATS or S3 could not be reached, refused an operation, or
held a record this library cannot read."""

from __future__ import annotations

from postoffice.core.errors import BrokenError
from postoffice.ingest.errors import IngestError


class ClusterError(IngestError, BrokenError):
    """NATS JetStream or the S3 store failed us: unreachable within the connect timeout, an
    operation refused or timed out, or a stored record that does not parse. A chunk that
    meets it is not acknowledged, so a client sees STORAGE and sends it again."""

    wire_code = "STORAGE"
