"""The ingest cluster library: ownership of uploads in NATS JetStream KV, chunks and published
files in S3, events on a JetStream stream; opened as one Cluster from the event loop."""

from __future__ import annotations

from postoffice.ingest.cluster.claims import Claims, LostReason, OnLost
from postoffice.ingest.cluster.config import ClusterConfig, parse_nats_urls
from postoffice.ingest.cluster.connection import Cluster
from postoffice.ingest.cluster.errors import ClusterError
from postoffice.ingest.cluster.events import Events, OnEvent
from postoffice.ingest.cluster.nodes import Nodes, NodeTable
from postoffice.ingest.cluster.objects import FileWriter, Objects
from postoffice.ingest.cluster.published import Publications
from postoffice.ingest.cluster.records import Claim, PublishedRecord
from postoffice.ingest.cluster.routes import ClusterOwnership
from postoffice.ingest.ownership import Owner

__all__ = [
    "Claim",
    "Claims",
    "Cluster",
    "ClusterConfig",
    "ClusterError",
    "ClusterOwnership",
    "Events",
    "FileWriter",
    "LostReason",
    "NodeTable",
    "Nodes",
    "Objects",
    "OnEvent",
    "OnLost",
    "Owner",
    "Publications",
    "PublishedRecord",
    "parse_nats_urls",
]
