"""The bridges of one bus server (bus server layer): `Network` answers discovery, decides
from the registry which channels to fetch, and starts transmitters and receivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Final, final

from postoffice.bus import netwire, wire
from postoffice.bus.bridge.link import Link, LinkState
from postoffice.bus.bridge.receiver import Receiver
from postoffice.bus.bridge.transmitter import Transmitter
from postoffice.bus.config import BusConfig
from postoffice.bus.discovery import Address, Discovery
from postoffice.bus.errors import (
    BusError,
    BusLimitError,
    BusNotFoundError,
    BusProtocolError,
    BusStateError,
    BusStorageError,
)
from postoffice.bus.publisher import Publisher
from postoffice.bus.registry import Registry, ServerChannel
from postoffice.bus.subscriber import Subscriber
from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.errors import translate_os_error
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: Bridges at once, each way: every one holds a user of a channel and a connection.
MAX_BRIDGES: Final = 256
#: A receiver asks again (on the next Advertise) if no transmitter came in this long.
SUBSCRIBE_PATIENCE_S: Final = 2.0


def is_bridge_client(client: int) -> bool:
    """Whether a registry owner id is a bridge's (bridges take negative ids)."""
    return client < 0


def local_publisher(target: ServerChannel) -> bool:
    """Whether a channel has a publisher that is no bridge's (one we may advertise)."""
    return any(not is_bridge_client(c) for c in target.publisher_owner.values())


def wanted(target: ServerChannel) -> bool:
    """Whether a channel should be fetched from another server: a client subscribes to
    it and nobody here but a bridge publishes it."""
    return not target.name.startswith(wire.RESERVED_PREFIX) and (
        any(c > 0 for c in target.subscriber_owner.values()) and not local_publisher(target)
    )


@final
class Network:
    """Discovery and the bridges of one server (`registry_of()` gives its registry, None
    once it is gone). `start()` binds the discovery socket and the bridge listener;
    `stop()` closes every bridge and removes its users. Raises BusStorageError from
    `start()` when a port cannot be bound."""

    def __init__(
        self,
        config: BusConfig,
        registry_of: Callable[[], Registry | None],
        *,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.config = config
        self.server_id = secrets.randbits(64) or 1
        self._registry_of = registry_of
        self._clock = clock
        self.discovery = Discovery(
            server_id=self.server_id, handler=self, peers=config.peer_addresses
        )
        self._listener: asyncio.Server | None = None
        self.bridge_address: Address | None = None
        self._wants: dict[str, Receiver] = {}
        self._transmitters: dict[tuple[str, str, int], Transmitter] = {}
        self._incoming: set[Link] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._next_client = -1
        self._reconcile_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.refused = 0

    def __repr__(self) -> str:
        return (
            f"<Network id={self.server_id:016x} discovery={self.discovery.address} "
            f"bridge={self.bridge_address} wants={len(self._wants)} "
            f"transmitters={len(self._transmitters)}>"
        )

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """The discovery socket and the bridge listener."""
        out: dict[str, tuple[str, int]] = {}
        if self.discovery.address is not None:
            out["discovery"] = self.discovery.address
        if self.bridge_address is not None:
            out["bridge"] = self.bridge_address
        return out

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind discovery and the bridge listener; start advertising."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        host = self.config.interface
        await self.discovery.open(host, self.config.discovery_port)
        try:
            self._listener = await loop.create_server(
                self._incoming_link, host=host, port=self.config.bridge_port, reuse_address=True
            )
        except OSError as exc:
            raise translate_os_error(
                exc, BusStorageError,
                f"cannot listen for bridges on {host}:{self.config.bridge_port}",
            ) from exc  # fmt: skip
        bound = self._listener.sockets[0].getsockname()
        self.bridge_address = (str(bound[0]), int(bound[1]))
        self._tasks.append(asyncio.ensure_future(self._advertise_loop()))
        self.changed()
        log.info(
            "bus network up %s",
            kv(server_id=f"{self.server_id:016x}", discovery=self.discovery.address,
               bridge=self.bridge_address, peers=self.config.peers),
        )  # fmt: skip

    async def stop(self) -> None:
        """Close every bridge (their users removed) and the sockets."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.discovery.close()
        for link in list(self._incoming):
            link.abort()
        for want in list(self._wants.values()):
            self._unwant(want)
        for tx in list(self._transmitters.values()):
            if tx.task is not None:
                tx.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tx.task
            self._end_transmitter(tx)

    def changed(self) -> None:
        """The registry changed: look again (soon, once) at what to fetch."""
        if self._reconcile_due or self._loop is None:
            return
        self._reconcile_due = True
        self._loop.call_soon(self._reconcile)

    def _reconcile(self) -> None:
        self._reconcile_due = False
        registry = self._registry_of()
        if registry is None:
            return
        now = {t.name for t in registry.channels() if wanted(t)}
        for name in now - self._wants.keys():
            self._wants[name] = Receiver(name)
            self.discovery.to_peers(netwire.Query(server_id=self.server_id, channel=name))
            log.info("bridge wanted %s", kv(channel=name))
        for name in self._wants.keys() - now:
            self._unwant(self._wants[name])
        for tx in self._transmitters.values():
            tx.poke()

    def _unwant(self, want: Receiver) -> None:
        self._wants.pop(want.channel, None)
        if want.link is not None:
            want.link.close()
        self._detach(want)

    async def _advertise_loop(self) -> None:
        while True:
            self._advertise()
            await asyncio.sleep(self.config.advertise_interval_s)

    def _advertise(self) -> None:
        """The gratuitous Advertise of every local channel, and a Query for each channel
        wanted and not bridged yet."""
        registry = self._registry_of()
        if registry is None:
            return
        for target in registry.channels():
            if target.name.startswith(wire.RESERVED_PREFIX) or not local_publisher(target):
                continue
            self.discovery.to_peers(
                netwire.Advertise(
                    server_id=self.server_id, channel=target.name,
                    reliable=target.reliable_publishers,
                )
            )  # fmt: skip
        for want in self._wants.values():
            if want.link is None:
                self.discovery.to_peers(
                    netwire.Query(server_id=self.server_id, channel=want.channel)
                )

    # -- discovery ------------------------------------------------------------------------

    def _local(self, name: str) -> ServerChannel | None:
        registry = self._registry_of()
        if registry is None or name.startswith(wire.RESERVED_PREFIX):
            return None
        try:
            target = registry.get(name)
        except BusNotFoundError:
            return None
        return target if local_publisher(target) else None

    def on_query(self, source: Address, message: netwire.Query) -> None:
        """Answer the asker with an Advertise if we publish the channel."""
        target = self._local(message.channel)
        if target is not None:
            self.discovery.send(
                netwire.Advertise(
                    server_id=self.server_id, channel=target.name,
                    reliable=target.reliable_publishers,
                ),
                source,
            )  # fmt: skip

    def on_advertise(self, source: Address, message: netwire.Advertise) -> None:
        """Ask the advertiser for a channel we want and have no bridge for."""
        want = self._wants.get(message.channel)
        if want is None or want.link is not None or self.bridge_address is None:
            return
        now = self._clock()
        if want.subscribed_at is not None and now - want.subscribed_at < SUBSCRIBE_PATIENCE_S:
            return
        want.subscribed_at = now
        self.discovery.send(
            netwire.Subscribe(
                server_id=self.server_id, channel=message.channel, port=self.bridge_address[1]
            ),
            source,
        )
        log.info("bridge subscribe sent %s", kv(channel=message.channel, to=source))

    def on_subscribe(self, source: Address, message: netwire.Subscribe) -> None:
        """Start a transmitter to the asker's bridge port, for a channel we publish."""
        target = self._local(message.channel)
        if target is None:
            return
        key = (message.channel, source[0], message.port)
        old = self._transmitters.get(key)
        if old is not None:
            if old.link is None or old.link.state is not LinkState.CLOSED:
                if old.link is None:
                    return  # still connecting: this is the same request again
                # The receiver asks again, so it lost the old connection: replace it.
                log.info("bridge replaced %s", kv(channel=message.channel, to=key[1:]))
                old.link.abort()
            old.stop()
            self._end_transmitter(old)
        if len(self._transmitters) >= MAX_BRIDGES:
            self.refused += 1
            log.warning("bridge refused %s", kv(channel=message.channel, limit=MAX_BRIDGES))
            return
        registry = self._registry_of()
        assert registry is not None
        client = self._client_id()
        try:
            # On a reliable channel it may hold messages until the far side retires them.
            reliable = target.reliable_publishers
            _, user = registry.add_subscriber(
                client,
                wire.CreateSubscriberRequest(
                    channel=message.channel, reliable=reliable,
                    max_active=netwire.MAX_HELD_MESSAGES if reliable else 1,
                ),
            )  # fmt: skip
        except BusError as exc:
            self.refused += 1
            log.warning("bridge not started %s", kv(channel=message.channel, error=exc))
            return
        subscriber = Subscriber(
            target.channel, user, triggers=target.triggers, eventfd=target.subscriber_fds[user]
        )
        tx = Transmitter(
            channel=message.channel, client=client, subscriber=subscriber,
            remote=(source[0], message.port),
            connect_timeout_s=self.config.bridge_handshake_timeout_s,
            still_published=lambda: local_publisher(target),
        )  # fmt: skip
        self._transmitters[key] = tx
        tx.task = asyncio.ensure_future(self._transmit(key, tx, target))

    def _client_id(self) -> int:
        client = self._next_client
        self._next_client -= 1
        return client

    # -- transmitters ---------------------------------------------------------------------

    async def _transmit(
        self, key: tuple[str, str, int], tx: Transmitter, target: ServerChannel
    ) -> None:
        try:
            await tx.run(target)
        finally:
            if self._transmitters.get(key) is tx:
                self._end_transmitter(tx)

    def _end_transmitter(self, tx: Transmitter) -> None:
        for key, value in list(self._transmitters.items()):
            if value is tx:
                del self._transmitters[key]
        tx.close()
        registry = self._registry_of()
        if registry is not None:
            registry.drop_client(tx.client)

    # -- receivers ------------------------------------------------------------------------

    def _incoming_link(self) -> Link:
        link = Link("from peer", self._receiver_event, self._receiver_closed)
        self._incoming.add(link)
        assert self._loop is not None
        handle = self._loop.call_later(
            self.config.bridge_handshake_timeout_s, self._handshake_timeout, link
        )
        link.closed.add_done_callback(lambda _: handle.cancel())
        if len(self._incoming) > MAX_BRIDGES:
            self._loop.call_soon(link.fail, BusLimitError(f"more than {MAX_BRIDGES} bridges"))
        return link

    def _handshake_timeout(self, link: Link) -> None:
        if link.state is LinkState.HANDSHAKE:
            link.fail(
                BusStateError(f"no SUBSCRIBED in {self.config.bridge_handshake_timeout_s:g} s")
            )

    def _receiver_event(self, link: Link, event: netwire.BridgeEvent) -> bool:
        try:
            match event:
                case netwire.Subscribed():
                    if link.state is not LinkState.HANDSHAKE:
                        raise BusStateError("a second SUBSCRIBED")
                    self._attach(link, event)
                    return True
                case netwire.BridgedMessage():
                    if link.state is not LinkState.FORWARDING:
                        raise BusStateError("MESSAGE before SUBSCRIBED")
                    want = self._want_of(link)
                    if want is None:
                        link.close()
                        return False
                    return want.publish(link, event)
                case netwire.Retired():
                    raise BusProtocolError("a transmitter sends no RETIRED")
                case netwire.BridgeError():
                    log.warning(
                        "bridge closed by transmitter %s",
                        kv(code=event.code, message=event.message),
                    )
                    link.close()
                    return False
        except BusError as exc:
            link.fail(exc)
            return False
        return False

    def _want_of(self, link: Link) -> Receiver | None:
        return next((w for w in self._wants.values() if w.link is link), None)

    def _attach(self, link: Link, event: netwire.Subscribed) -> None:
        want = self._wants.get(event.channel)
        if want is None:
            raise BusNotFoundError(f"channel {event.channel!r} is not wanted here")
        if want.link is not None:
            raise BusStateError(f"channel {event.channel!r} is bridged already")
        registry = self._registry_of()
        if registry is None:
            raise BusStateError("the server is stopping")
        client = self._client_id()
        target, user = registry.add_publisher(
            client,
            wire.CreatePublisherRequest(
                channel=event.channel, type=event.type, slot_size=event.slot_size,
                reliable=event.reliable, fixed_size=event.fixed_size, checksum=event.checksum,
                # A reliable channel's held messages are reported back as they retire.
                retirement=event.reliable,
            ),
        )  # fmt: skip
        pipe = target.retirement_fds.get(user)
        read_end = None if pipe is None else pipe[0]
        publisher = Publisher(
            target.channel, user, triggers=target.triggers,
            eventfd=target.publisher_fds.get(user), retirement=read_end,
        )  # fmt: skip
        want.attach(link, publisher, client, read_end)

    def _receiver_closed(self, link: Link) -> None:
        self._incoming.discard(link)
        want = self._want_of(link)
        if want is not None:
            self._detach(want)
            log.info("bridge receiver ended %s", kv(channel=want.channel, peer=link.peer))

    def _detach(self, want: Receiver) -> None:
        """Forget the want's bridge (its publisher removed): the next Advertise of the
        channel brings a new one."""
        client = want.detach()
        if client:
            registry = self._registry_of()
            if registry is not None:
                registry.drop_client(client)
