"""The subscribing end of a bridge (bus server layer): a wanted channel, the local
publisher its frames feed, and RETIRED sent back for held messages that retired here.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from typing import Final, final

from postoffice.bus import netwire, retirement
from postoffice.bus.bridge.link import Link, LinkState
from postoffice.bus.errors import BusError, BusLimitError, BusStateError
from postoffice.bus.publisher import Publisher
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: Read the retirement pipe at least every this many publishes, not only when the loop
#: gets to it: every message of the bridge's publisher writes a record there, and a full
#: pipe loses the ones that follow (a held message never reported stays held at the source).
_COLLECT_EVERY: Final = 64


def fit_pipe(fd: int, records: int) -> int:
    """Make the pipe of `fd` hold at least `records` retirement records (the kernel's
    default holds 5461); its size in bytes. Raises OSError when the kernel refuses."""
    size: int = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    wanted = records * retirement.RECORD.size
    if size < wanted:
        size = fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, wanted)
    return size


@final
class Receiver:
    """A channel this server's clients subscribe to and nobody here publishes: the bridge
    that brings it, once one connected (`link`), and its `publisher`, a user registered
    for owner `client` (a bridge's negative id).

    Given the publisher's retirement pipe (`retirement_fd`, reliable channels), each
    HELD_MESSAGE is remembered by the ordinal it got here, and reported by its source
    ordinal once it retires here (no local subscriber holds it or must still read it)."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.link: Link | None = None
        self.publisher: Publisher | None = None
        self.client = 0
        #: When the last SUBSCRIBE went out (None: none since the last bridge ended).
        self.subscribed_at: float | None = None
        self.pending: netwire.BridgedMessage | None = None
        self.received = 0
        self.reported = 0
        self._retirement_fd: int | None = None
        #: Held messages published here and not retired yet: local ordinal -> source's.
        self._held: dict[int, int] = {}

    def __repr__(self) -> str:
        state = "unbridged" if self.link is None else self.link.state.value
        return (
            f"<Receiver {self.channel!r} {state} received={self.received} "
            f"held={len(self._held)} reported={self.reported}>"
        )

    def attach(
        self, link: Link, publisher: Publisher, client: int, retirement_fd: int | None = None
    ) -> None:
        """Start publishing what `link` brings, as `publisher`; with `retirement_fd` (the
        read end of its retirement pipe), report held messages as they retire."""
        self.publisher = publisher
        self.client = client
        self.link = link
        link.state = LinkState.FORWARDING
        link.name = f"from {self.channel}"
        if retirement_fd is not None:
            # Records waiting at once: each message here not retired at the last read
            # (at most a slot each) and those published since (at most _COLLECT_EVERY).
            records = publisher.channel.num_slots + _COLLECT_EVERY
            try:
                fit_pipe(retirement_fd, records)
            except OSError as exc:
                log.warning(
                    "bridge retirement pipe kept small %s",
                    kv(channel=self.channel, records=records, error=exc),
                )
            self._retirement_fd = retirement_fd
            asyncio.get_running_loop().add_reader(retirement_fd, self._collect)
        log.info("bridge receiving %s", kv(channel=self.channel, peer=link.peer))

    def publish(self, link: Link, event: netwire.BridgedMessage) -> bool:
        """Publish one MESSAGE; False when the link must stop reading until a slot frees
        (the message is then published as soon as one does). Raises BusStateError for a
        HELD_MESSAGE on a channel without retirement, BusLimitError past
        netwire.MAX_HELD_MESSAGES held messages not retired yet."""
        publisher = self.publisher
        if publisher is None or link is not self.link:
            link.close()
            return False
        if event.held:
            if self._retirement_fd is None:
                raise BusStateError("HELD_MESSAGE on an unreliable channel")
            if len(self._held) >= netwire.MAX_HELD_MESSAGES:
                raise BusLimitError(
                    f"more than {netwire.MAX_HELD_MESSAGES} held messages not retired yet"
                )
        ordinal = publisher.publish_bytes(event.data)
        if ordinal is not None:
            self._published(event, ordinal)
            return True
        # Every slot is unread by a reliable subscriber: stop reading the connection
        # (the transmitter's writes back up, and its publisher waits) until one frees.
        self.pending = event
        task = asyncio.get_running_loop().create_task(self._publish_later(link, publisher))
        link.closed.add_done_callback(lambda _: task.cancel())
        return False

    def _published(self, event: netwire.BridgedMessage, ordinal: int) -> None:
        self.received += 1
        if event.held:
            # Its retirement record may be in the pipe already (nobody here had to read
            # it): the pipe is read on this loop only, after this.
            self._held[ordinal] = event.ordinal
        if self._retirement_fd is not None and self.received % _COLLECT_EVERY == 0:
            self._collect()

    async def _publish_later(self, link: Link, publisher: Publisher) -> None:
        pending = self.pending
        assert pending is not None
        try:
            await publisher.wait_async()
            ordinal = publisher.publish_bytes(pending.data)
        except BusError as exc:
            link.fail(exc)
            return
        assert ordinal is not None  # wait_async claimed a slot
        self._published(pending, ordinal)
        self.pending = None
        link.resume()

    def _collect(self) -> None:
        """Read the retirement pipe; send the source ordinals of the held messages that
        retired, in as many RETIRED frames as it takes."""
        fd, link = self._retirement_fd, self.link
        if fd is None or link is None:
            return
        found = [
            source
            for _, ordinal in retirement.read_records(fd)
            if (source := self._held.pop(ordinal, None)) is not None
        ]
        step = netwire.MAX_RETIRED_ORDINALS
        for start in range(0, len(found), step):
            link.write(netwire.encode_retired(found[start : start + step]))
        self.reported += len(found)

    def detach(self) -> int:
        """Forget the bridge (its publisher closed, its pipe no longer watched): the owner
        id whose users the caller removes from the registry (0: none). The next
        Advertise brings a new bridge."""
        if self._retirement_fd is not None:
            asyncio.get_running_loop().remove_reader(self._retirement_fd)
            self._retirement_fd = None
        self._held.clear()
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        client, self.client = self.client, 0
        self.link = None
        self.subscribed_at = None
        self.pending = None
        return client
