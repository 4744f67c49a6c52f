"""The subscribing side of a bridge: a wanted channel, and the local publisher fed by MESSAGEs.

Bus server layer, kept by `network.Network` for each channel its clients want from
another server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import final

from postoffice.bus import netwire
from postoffice.bus.bridge.link import Link, LinkState
from postoffice.bus.errors import BusError
from postoffice.bus.publisher import Publisher
from postoffice.core.logs import kv

log = logging.getLogger(__name__)


@final
class Receiver:
    """A channel this server's clients subscribe to and nobody here publishes: the bridge
    that brings it, once one connected (`link`), and its `publisher`, a user registered
    for owner `client` (a bridge's negative id)."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.link: Link | None = None
        self.publisher: Publisher | None = None
        self.client = 0
        #: When the last SUBSCRIBE went out (None: none since the last bridge ended).
        self.subscribed_at: float | None = None
        self.pending: netwire.BridgedMessage | None = None
        self.received = 0

    def __repr__(self) -> str:
        state = "unbridged" if self.link is None else self.link.state.value
        return f"<Receiver {self.channel!r} {state} received={self.received}>"

    def attach(self, link: Link, publisher: Publisher, client: int) -> None:
        """Start publishing what `link` brings, as `publisher`."""
        self.publisher = publisher
        self.client = client
        self.link = link
        link.state = LinkState.FORWARDING
        link.name = f"from {self.channel}"
        log.info("bridge receiving %s", kv(channel=self.channel, peer=link.peer))

    def publish(self, link: Link, event: netwire.BridgedMessage) -> bool:
        """Publish one MESSAGE; False when the link must stop reading until a slot frees
        (the message is then published as soon as one does)."""
        publisher = self.publisher
        if publisher is None or link is not self.link:
            link.close()
            return False
        if publisher.publish_bytes(event.data) is not None:
            self.received += 1
            return True
        # Every slot is unread by a reliable subscriber: stop reading the connection
        # (the transmitter's writes back up, and its publisher waits) until one frees.
        self.pending = event
        task = asyncio.get_running_loop().create_task(self._publish_later(link, publisher))
        link.closed.add_done_callback(lambda _: task.cancel())
        return False

    async def _publish_later(self, link: Link, publisher: Publisher) -> None:
        pending = self.pending
        assert pending is not None
        try:
            await publisher.wait_async()
            publisher.publish_bytes(pending.data)
        except BusError as exc:
            link.fail(exc)
            return
        self.received += 1
        self.pending = None
        link.resume()

    def detach(self) -> int:
        """Forget the bridge (its publisher closed): the owner id whose users the caller
        removes from the registry (0: none). The next Advertise brings a new bridge."""
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        client, self.client = self.client, 0
        self.link = None
        self.subscribed_at = None
        self.pending = None
        return client
