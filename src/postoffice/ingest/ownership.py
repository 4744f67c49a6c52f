"""Which node of a cluster owns an upload: the Owner a MOVED reply names, its text, and the
Ownership seam the ingest server consults before it takes a chunk or answers a QUERY.

Ingest layer, pure: no I/O. A single-node server has no Ownership and never sends MOVED.
"""

# Design
# ------
# The server asks `owner(file_id)` of every chunk and QUERY, from memory and without
# waiting: the upload's owner once known, None while this node has not decided. Only
# then does it await `claim(file_id)`, the one asynchronous decision per upload (the
# cluster asks NATS once, then answers from memory). A claim this node loses (taken
# over, or its lease lapsed) shows as `owner` naming the new owner from then on: that
# is the "lost" notice, and the next chunk is refused with MOVED. A lost claim whose
# new owner is not known yet answers None again, so the next chunk awaits `claim`,
# which raises the IngestError the chunk is refused with while no owner can be told.
# A QUERY awaits `find` instead, which takes over a dead owner's claim (the client fails
# over to this node) but never creates one: only a chunk claims a free id.
# A single-node server holds `ownership = None`: one attribute test per chunk.

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final, Protocol

from postoffice.core.errors import ConfigError
from postoffice.ingest.messages import FileId

__all__ = ["MAX_NODE_BYTES", "MOVED_PREFIX", "Owner", "Ownership", "moved_message"]

MOVED_PREFIX: Final = "moved"
#: Longest node name, in bytes: a host name (at most 253) and a port fit, and the whole
#: MOVED message stays far below any frame limit.
MAX_NODE_BYTES: Final = 255
#: Data ports one node may advertise: the server's own limit on X.
MAX_OWNER_PORTS: Final = 64
# Visible ASCII only, so the message splits on spaces and needs no quoting.
_NODE: Final = re.compile(r"[!-~]+")
# A host name, an IPv4 address or an IPv6 one (with its zone): never a bracket, which
# marks an IPv6 host in the message.
_HOST: Final = re.compile(r"[A-Za-z0-9._:%-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """A node as a MOVED reply names it: its name, its host, its health port (sys-base+0,
    where GET /info lists its data ports, and sys-base+3 is its ack port) and its data
    ports. Raises ConfigError for a field a MOVED message could not carry."""

    node: str
    host: str
    health_port: int
    data_ports: tuple[int, ...]

    def __post_init__(self) -> None:
        if not _NODE.fullmatch(self.node) or len(self.node) > MAX_NODE_BYTES:
            raise ConfigError(
                f"owner node {self.node[:80]!r} must be 1 to {MAX_NODE_BYTES} visible ascii "
                "characters"
            )
        if not _HOST.fullmatch(self.host) or len(self.host) > MAX_NODE_BYTES:
            raise ConfigError(
                f"owner host {self.host[:80]!r} must be 1 to {MAX_NODE_BYTES} characters of "
                "a host name or an ip address"
            )
        if not 1 <= len(self.data_ports) <= MAX_OWNER_PORTS:
            raise ConfigError(
                f"owner data_ports lists {len(self.data_ports)} ports, expected 1 to "
                f"{MAX_OWNER_PORTS}"
            )
        for field, port in (
            ("health_port", self.health_port),
            *(("data_ports", p) for p in self.data_ports),
        ):
            if not 1 <= port <= 65535:
                raise ConfigError(f"owner {field} {port} is not a bound port: expected 1 to 65535")


def moved_message(owner: Owner) -> str:
    """The MOVED reply's message naming `owner`:
    `moved <node> <host>:<health port> <data port>,<data port>,...` (an IPv6 host in
    brackets)."""
    host = f"[{owner.host}]" if ":" in owner.host else owner.host
    ports = ",".join(str(port) for port in owner.data_ports)
    return f"{MOVED_PREFIX} {owner.node} {host}:{owner.health_port} {ports}"


class Ownership(Protocol):
    """Who owns which upload, as this node knows it (the cluster's view; see the design
    note above)."""

    @property
    def node(self) -> str:
        """This node's name: an upload whose owner has it is taken here."""
        ...

    def owner(self, file_id: FileId) -> Owner | None:
        """The upload's owner from memory, without waiting; None while undecided."""
        ...

    def claim(self, file_id: FileId) -> Awaitable[Owner]:
        """Decide for an upload `owner` does not know: claim it for this node, or learn
        the node that has it; remembered, so `owner` answers from then on. Raises the
        IngestError that refuses the chunk when no owner can be decided now."""
        ...

    def find(self, file_id: FileId) -> Awaitable[Owner | None]:
        """For a QUERY of an upload `owner` does not know: its live owner, or this node
        once it has taken over a dead owner's claim (as `claim` does), or None when no
        node claims it. Never claims a free id: a QUERY of an id nobody uploads must
        leave nothing behind in the cluster. Raises as `claim` does."""
        ...
