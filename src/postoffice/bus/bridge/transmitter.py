"""The publishing end of a bridge (bus server layer): a local subscriber whose messages
leave as frames, holding those whose publisher watches retirement until RETIRED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import final

from postoffice.bus import netwire, retirement
from postoffice.bus.bridge.link import Link, LinkState, either
from postoffice.bus.discovery import Address
from postoffice.bus.errors import BusError, BusProtocolError
from postoffice.bus.registry import ServerChannel
from postoffice.bus.subscriber import Message, Subscriber
from postoffice.core.logs import kv

log = logging.getLogger(__name__)


@final
class Transmitter:
    """A local channel forwarded to one remote receiver at `remote` (its bridge port),
    read by `subscriber`, a user registered for owner `client` (a bridge's negative id).

    `run()` connects (within `connect_timeout_s`), sends SUBSCRIBED and forwards until
    the connection ends; it never raises BusError (a failure is logged and ends the
    run). A reliable subscriber (registered with max active messages
    netwire.MAX_HELD_MESSAGES) keeps each message that asks for retirement, sent as
    HELD_MESSAGE, until a RETIRED names it, and reads no more while it holds that many;
    what it holds when the bridge ends is let go. Once `still_published()` says the
    channel has no publisher here (looked at when `poke()`d), and nothing is left to
    forward or held, the run ends: a bridge of a channel nobody publishes is useless,
    and its subscriber's hold would count against a new unreliable publisher."""

    def __init__(
        self,
        *,
        channel: str,
        client: int,
        subscriber: Subscriber,
        remote: Address,
        connect_timeout_s: float,
        still_published: Callable[[], bool],
    ) -> None:
        self.channel = channel
        self.connect_timeout_s = connect_timeout_s
        self._still_published = still_published
        self.client = client
        self.subscriber = subscriber
        self.remote = remote
        self.task: asyncio.Task[None] | None = None
        self.link: Link | None = None
        self.forwarded = 0
        self.skipped = 0
        #: Held messages by source ordinal, each waiting for the receiver's RETIRED.
        self._held: dict[int, Message] = {}
        #: Set by a RETIRED and by poke(): look again at what to do.
        self._changed = asyncio.Event()
        self.retired = 0

    @property
    def held(self) -> int:
        """How many messages wait for the receiver's RETIRED."""
        return len(self._held)

    def __repr__(self) -> str:
        state = "connecting" if self.link is None else self.link.state.value
        return (
            f"<Transmitter {self.channel!r} to={self.remote} {state} "
            f"forwarded={self.forwarded} held={self.held} skipped={self.skipped}>"
        )

    async def run(self, target: ServerChannel) -> None:
        """Connect, announce the channel as `target` makes it, and forward."""
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    _, link = await loop.create_connection(
                        lambda: Link(f"to {self.channel}", self._on_event, lambda _: None),
                        host=self.remote[0], port=self.remote[1],
                    )  # fmt: skip
            except (OSError, TimeoutError) as exc:
                log.warning(
                    "bridge connect failed %s",
                    kv(channel=self.channel, to=self.remote, error=exc),
                )
                return
            self.link = link
            link.state = LinkState.FORWARDING
            channel = target.channel
            link.write(
                netwire.encode_bridge(
                    netwire.Subscribed(
                        channel=self.channel, type=channel.type, slot_size=target.slot_size(),
                        num_slots=channel.num_slots, reliable=self.subscriber.reliable,
                        fixed_size=channel.fixed_size, checksum=channel.checksum,
                    )
                )
            )  # fmt: skip
            log.info("bridge transmitting %s", kv(channel=self.channel, to=self.remote))
            await self._forward(link)
        except BusError as exc:
            log.warning("bridge transmitter stopped %s", kv(channel=self.channel, error=exc))
        finally:
            if self.link is not None:
                self.link.close()

    async def _forward(self, link: Link) -> None:
        subscriber = self.subscriber
        while link.state is not LinkState.CLOSED:
            if not link.writable.is_set():
                # The peer reads slower than we publish: leave messages in the channel
                # (a reliable publisher then waits for us).
                await either(link.closed, link.writable.wait())
                continue
            # Cleared before looking, so a change from here on wakes the wait below.
            self._changed.clear()
            if len(self._held) >= netwire.MAX_HELD_MESSAGES:
                # Reading one more would let the subscriber release the oldest held one.
                await either(link.closed, self._changed.wait())
                continue
            message = subscriber.read()
            if message is None:
                if not self._held and not self._still_published():
                    log.info(
                        "bridge transmitter done %s",
                        kv(channel=self.channel, reason="no publisher left"),
                    )
                    break
                await either(link.closed, subscriber.wait_async(), self._changed.wait())
                continue
            try:
                if message.size > netwire.MAX_BRIDGED_MESSAGE_BYTES:
                    self.skipped += 1
                    log.warning(
                        "bridged message too large %s",
                        kv(channel=self.channel, ordinal=message.ordinal, bytes=message.size),
                    )
                    continue
                # Held on reliable channels only: an unreliable publisher must always
                # find a slot nobody holds.
                hold = subscriber.reliable and retirement.asked(
                    subscriber.channel.ccb, message.slot, message.ordinal
                )
                link.write(netwire.encode_message(message.ordinal, message.data, held=hold))
                if hold:
                    self._held[message.ordinal] = message
            finally:
                if message.ordinal not in self._held:
                    message.release()
            self.forwarded += 1
        log.info(
            "bridge transmitter ended %s",
            kv(channel=self.channel, to=self.remote, forwarded=self.forwarded,
               retired=self.retired, held=self.held, skipped=self.skipped),
        )  # fmt: skip

    def _retired(self, link: Link, ordinals: tuple[int, ...]) -> bool:
        """Let go of the held messages the receiver reports retired: their publisher's
        retirement pipe hears of each once no local holder is left either."""
        for ordinal in ordinals:
            message = self._held.pop(ordinal, None)
            if message is None:
                link.fail(BusProtocolError(f"RETIRED names ordinal {ordinal}, which is not held"))
                return False
            message.release()
            self.retired += 1
        self._changed.set()
        return True

    def _on_event(self, link: Link, event: netwire.BridgeEvent) -> bool:
        if isinstance(event, netwire.Retired):
            return self._retired(link, event.ordinals)
        if isinstance(event, netwire.BridgeError):
            log.warning(
                "bridge refused by receiver %s",
                kv(link=link.name, code=event.code, message=event.message),
            )
            link.close()
        else:
            link.fail(
                BusProtocolError(
                    f"a receiver sends nothing but RETIRED and ERROR, got {type(event).__name__}"
                )
            )
        return False

    def poke(self) -> None:
        """The registry changed: look again whether the channel is still published."""
        self._changed.set()

    def stop(self) -> None:
        """Cancel the run (the caller still ends the transmitter)."""
        if self.task is not None:
            self.task.cancel()

    def close(self) -> None:
        """Let go of every message held (each retires here, whatever became of it on the
        far side); the subscriber stops."""
        self.subscriber.close()
        self._held.clear()
