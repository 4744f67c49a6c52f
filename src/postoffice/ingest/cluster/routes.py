"""ClusterOwnership: the ingest server's Ownership seam (ingest/ownership.py) answered by this
node's claims in NATS, so a chunk of an upload another live node owns is answered MOVED."""

# Design: `owner` answers from memory, never waiting: this node while its claim holds (and
# its lease is current), else the live node a claim last named, else None, so the server
# awaits `claim` once per upload it has not decided. A remembered owner that has gone
# dead answers None again: the next chunk's claim then takes the upload over (or names
# whoever did). A lost claim of ours is forgotten by `lost`, which the cluster's on_lost
# calls. The memory of other nodes' uploads is bounded: the oldest is forgotten first,
# and costs one more claim (a read of its key) if its chunks come here again. A claim that
# comes back ours, of an upload this node holds chunks of, is checked against the published
# records: after a publish the owner releases the key, so a node that lost the upload
# meanwhile (its lease lapsed) would claim it afresh and take chunks of a file already
# published; it names the publisher. (A node holding nothing of it answers a QUERY from
# the published record itself, and a fresh upload costs no extra read.)

from __future__ import annotations

from collections.abc import Callable
from typing import Final, final

from postoffice.ingest.cluster.claims import Claims, LostReason
from postoffice.ingest.cluster.nodes import Nodes
from postoffice.ingest.cluster.published import Publications
from postoffice.ingest.messages import FileId
from postoffice.ingest.ownership import Owner

__all__ = ["MAX_REMEMBERED_OWNERS", "ClusterOwnership"]

#: Uploads of other nodes whose owner this node remembers.
MAX_REMEMBERED_OWNERS: Final = 65_536


@final
class ClusterOwnership:
    """Who owns which upload, as this node's claims and its view of the nodes say."""

    def __init__(
        self,
        claims: Claims,
        nodes: Nodes,
        *,
        published: Publications | None = None,
        holds: Callable[[FileId], bool] | None = None,
    ) -> None:
        self._claims = claims
        self._nodes = nodes
        self._published = published
        #: Whether this node holds chunks of an upload (the server's store says).
        self._holds = holds
        self._me = claims.me
        self._others: dict[FileId, Owner] = {}

    @property
    def node(self) -> str:
        return self._me.node

    def owner(self, file_id: FileId) -> Owner | None:
        if self._claims.owns(file_id):
            return self._me
        other = self._others.get(file_id)
        if other is None:
            return None
        if not self._nodes.table.alive(other.node):
            del self._others[file_id]  # dead: the next claim takes it over or names the taker
            return None
        return other

    async def claim(self, file_id: FileId) -> Owner:
        """Claim `file_id` here or learn its live owner; ClusterError (STORAGE to the
        client) when NATS cannot decide now, or this node is fenced."""
        return await self._settle(file_id, await self._claims.claim(file_id))

    async def find(self, file_id: FileId) -> Owner | None:
        """`file_id`'s owner for a QUERY (a dead owner's claim taken over), or None when no
        node claims it, which claims nothing; raises as `claim` does."""
        named = await self._claims.find(file_id)
        if named is not None:
            return await self._settle(file_id, named)
        # Released: a node holding chunks of an upload another node published is sent there.
        publisher = await self._publisher(file_id)
        return None if publisher is None else self._remember(file_id, publisher)

    async def _settle(self, file_id: FileId, named: Owner) -> Owner:
        """Remember the owner a claim named; a claim of ours on an upload another live node
        published is given back, and the publisher named instead."""
        if named.node == self._me.node:
            publisher = await self._publisher(file_id)
            if publisher is None:
                self._others.pop(file_id, None)
                return self._me
            await self._claims.release(file_id)  # published: the claim has no upload to hold
            named = publisher
        return self._remember(file_id, named)

    def _remember(self, file_id: FileId, owner: Owner) -> Owner:
        if file_id not in self._others and len(self._others) >= MAX_REMEMBERED_OWNERS:
            del self._others[next(iter(self._others))]
        self._others[file_id] = owner
        return owner

    async def _publisher(self, file_id: FileId) -> Owner | None:
        """The live node that published `file_id`, if another did and this node holds chunks
        of it (its chunks go there, which answers them as published); None otherwise, and
        when the publisher is dead (then this node answers for it)."""
        if self._published is None or (self._holds is not None and not self._holds(file_id)):
            return None
        record = await self._published.get(file_id)
        if record is None or record.node == self._me.node:
            return None
        if not self._nodes.table.alive(record.node):
            return None
        return self._nodes.owner(record.node)

    def lost(self, file_id: FileId, reason: LostReason) -> None:
        """Our claim on `file_id` went (the cluster's on_lost): the next chunk claims again,
        which names the node that took it, or takes it back if nobody did."""
        self._others.pop(file_id, None)

    def handed_over(self, file_id: FileId) -> None:
        """Another node handed `file_id` over as it drains: forget it as the owner, so the
        next request takes the upload over instead of being sent there."""
        self._others.pop(file_id, None)

    async def release(self, file_id: FileId) -> None:
        """The upload is published or aborted: give its claim back."""
        self._others.pop(file_id, None)
        await self._claims.release(file_id)

    def __repr__(self) -> str:
        return f"<ClusterOwnership {self._me.node} others={len(self._others)}>"
