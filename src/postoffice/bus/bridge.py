"""Bridges between bus servers: channels carried over TCP, found by UDP discovery.

Bus server layer. `Network` is what a server that is not --local runs beside its Unix
socket: the discovery socket, one TCP listener for incoming bridges, a gratuitous
Advertise of every local channel to the peers every few seconds, and the bridges. A
*transmitter* (on the publishing side) subscribes to a local channel and forwards each
message as a MESSAGE frame; a *receiver* (on the subscribing side) registers a local
publisher and publishes what arrives. Design: docs/design/bus-bridge.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, cast, final

from postoffice.bus import netwire, wire
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
from postoffice.core.errors import FrameError, translate_os_error
from postoffice.core.framing import NEED_DATA
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: Bridges at once, each way: every one holds a user of a channel and a connection.
MAX_BRIDGES: Final = 256
#: A transmitter's connection and its SUBSCRIBED must arrive within this.
HANDSHAKE_TIMEOUT_S: Final = 10.0
#: A receiver asks again (on the next Advertise) if no transmitter came in this long.
SUBSCRIBE_PATIENCE_S: Final = 2.0
#: Unsent bytes a transmitter lets its transport hold before it stops reading the
#: channel (then a reliable publisher waits: TCP's backpressure reaches it).
WRITE_HIGH_BYTES: Final = 1 << 20
WRITE_LOW_BYTES: Final = 256 * 1024


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


class LinkState(enum.Enum):
    """A bridge connection: waiting for SUBSCRIBED (receivers), forwarding, closed."""

    HANDSHAKE = "handshake"
    FORWARDING = "forwarding"
    CLOSED = "closed"


@final
class _Link(asyncio.Protocol):
    """One bridge TCP connection, either side: frames in, flow control out.

    `on_event` gets each decoded event and returns False to stop taking more (a receiver
    whose channel has no free slot); `resume()` goes on. A broken frame or a bad message
    is answered with ERROR and the connection closed."""

    def __init__(
        self,
        name: str,
        on_event: Callable[[_Link, netwire.BridgeEvent], bool],
        on_closed: Callable[[_Link], None],
    ) -> None:
        self.name = name
        self._on_event = on_event
        self._on_closed = on_closed
        self._stream = netwire.bridge_stream()
        self._transport: asyncio.Transport | None = None
        self.state = LinkState.HANDSHAKE
        self.peer: Address | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.get_running_loop().create_future()
        self._blocked = False
        self.frames_in = 0
        self.frames_out = 0

    def __repr__(self) -> str:
        return (
            f"<BridgeLink {self.name} {self.peer} {self.state.value} in={self.frames_in} "
            f"out={self.frames_out}>"
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclasses of asyncio's, but have its methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES, low=WRITE_LOW_BYTES)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer is not None:
            self.peer = (str(peer[0]), int(peer[1]))

    def data_received(self, data: bytes) -> None:
        self._stream.feed(data)
        if not self._blocked:
            self._drain()

    def _drain(self) -> None:
        while self.state is not LinkState.CLOSED:
            try:
                item = self._stream.next_event()
            except (FrameError, BusProtocolError) as exc:
                self.fail(BusProtocolError(str(exc)))
                return
            if item is NEED_DATA:
                return
            self.frames_in += 1
            if not self._on_event(self, item[1]):
                self._blocked = True
                if self._transport is not None:
                    self._transport.pause_reading()
                return

    def resume(self) -> None:
        """Take events again after `on_event` said stop."""
        if not self._blocked or self.state is LinkState.CLOSED:
            return
        self._blocked = False
        if self._transport is not None:
            self._transport.resume_reading()
        self._drain()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def write(self, data: bytes) -> None:
        """Send one encoded frame."""
        if self._transport is not None and self.state is not LinkState.CLOSED:
            self._transport.write(data)
            self.frames_out += 1

    def fail(self, exc: BusError) -> None:
        """Tell the peer why (ERROR with the error's code), then close."""
        log.warning("bridge closed %s", kv(link=self.name, peer=self.peer, error=exc))
        with contextlib.suppress(BusError):
            self.write(
                netwire.encode_bridge(netwire.BridgeError(code=exc.wire_code, message=str(exc)))
            )
        self.close()

    def close(self) -> None:
        """Close after what is written (the peer then sees the end of the stream)."""
        if self._transport is not None and self.state is not LinkState.CLOSED:
            self._transport.close()
        elif self._transport is None:
            self._lost()

    def abort(self) -> None:
        """Close at once, dropping what is unsent."""
        if self._transport is not None:
            self._transport.abort()
        else:
            self._lost()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        if self.state is LinkState.CLOSED:
            return
        self.state = LinkState.CLOSED
        self.writable.set()
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_closed(self)


@final
@dataclass(eq=False)
class _Want:
    """A channel this server's clients subscribe to and nobody here publishes."""

    channel: str
    link: _Link | None = None
    publisher: Publisher | None = None
    client: int = 0
    subscribed_at: float | None = None
    pending: netwire.BridgedMessage | None = None


@final
@dataclass(eq=False)
class _Transmitter:
    """A local channel forwarded to one remote receiver."""

    channel: str
    client: int
    subscriber: Subscriber
    remote: Address
    task: asyncio.Task[None] | None = None
    link: _Link | None = None
    forwarded: int = 0
    skipped: int = 0


async def _either(waiting: Coroutine[Any, Any, object], closed: asyncio.Future[None]) -> None:
    """Wait for `waiting` or for `closed`, whichever comes first."""
    task = asyncio.ensure_future(waiting)
    either: list[asyncio.Future[Any]] = [task, closed]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif not task.cancelled():
            task.result()


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
        self._wants: dict[str, _Want] = {}
        self._transmitters: dict[tuple[str, str, int], _Transmitter] = {}
        self._incoming: set[_Link] = set()
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
            self._wants[name] = _Want(channel=name)
            self.discovery.to_peers(netwire.Query(server_id=self.server_id, channel=name))
            log.info("bridge wanted %s", kv(channel=name))
        for name in self._wants.keys() - now:
            self._unwant(self._wants[name])

    def _unwant(self, want: _Want) -> None:
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
            if old.task is not None:
                old.task.cancel()
            self._end_transmitter(old)
        if len(self._transmitters) >= MAX_BRIDGES:
            self.refused += 1
            log.warning("bridge refused %s", kv(channel=message.channel, limit=MAX_BRIDGES))
            return
        registry = self._registry_of()
        assert registry is not None
        client = self._client_id()
        try:
            _, user = registry.add_subscriber(
                client,
                wire.CreateSubscriberRequest(
                    channel=message.channel, reliable=target.reliable_publishers, max_active=1
                ),
            )
        except BusError as exc:
            self.refused += 1
            log.warning("bridge not started %s", kv(channel=message.channel, error=exc))
            return
        subscriber = Subscriber(
            target.channel, user, triggers=target.triggers, eventfd=target.subscriber_fds[user]
        )
        tx = _Transmitter(
            channel=message.channel, client=client, subscriber=subscriber,
            remote=(source[0], message.port),
        )  # fmt: skip
        self._transmitters[key] = tx
        tx.task = asyncio.ensure_future(self._transmit(key, tx, target))

    def _client_id(self) -> int:
        client = self._next_client
        self._next_client -= 1
        return client

    # -- transmitters ---------------------------------------------------------------------

    async def _transmit(
        self, key: tuple[str, str, int], tx: _Transmitter, target: ServerChannel
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    _, link = await loop.create_connection(
                        lambda: _Link(f"to {tx.channel}", self._transmitter_event, lambda _: None),
                        host=tx.remote[0], port=tx.remote[1],
                    )  # fmt: skip
            except (OSError, TimeoutError) as exc:
                log.warning(
                    "bridge connect failed %s", kv(channel=tx.channel, to=tx.remote, error=exc)
                )
                return
            tx.link = link
            link.state = LinkState.FORWARDING
            channel = target.channel
            link.write(
                netwire.encode_bridge(
                    netwire.Subscribed(
                        channel=tx.channel, type=channel.type, slot_size=target.slot_size(),
                        num_slots=channel.num_slots, reliable=tx.subscriber.reliable,
                        fixed_size=channel.fixed_size, checksum=channel.checksum,
                    )
                )
            )  # fmt: skip
            log.info("bridge transmitting %s", kv(channel=tx.channel, to=tx.remote))
            await self._forward(tx, link)
        except BusError as exc:
            log.warning("bridge transmitter stopped %s", kv(channel=tx.channel, error=exc))
        finally:
            if tx.link is not None:
                tx.link.close()
            if self._transmitters.get(key) is tx:
                self._end_transmitter(tx)

    async def _forward(self, tx: _Transmitter, link: _Link) -> None:
        subscriber = tx.subscriber
        while link.state is not LinkState.CLOSED:
            if not link.writable.is_set():
                # The peer reads slower than we publish: leave messages in the channel
                # (a reliable publisher then waits for us).
                await _either(link.writable.wait(), link.closed)
                continue
            message = subscriber.read()
            if message is None:
                await _either(subscriber.wait_async(), link.closed)
                continue
            with message:
                if message.size > netwire.MAX_BRIDGED_MESSAGE_BYTES:
                    tx.skipped += 1
                    log.warning(
                        "bridged message too large %s",
                        kv(channel=tx.channel, ordinal=message.ordinal, bytes=message.size),
                    )
                    continue
                link.write(netwire.encode_message(message.ordinal, message.data))
            tx.forwarded += 1
        log.info(
            "bridge transmitter ended %s",
            kv(channel=tx.channel, to=tx.remote, forwarded=tx.forwarded, skipped=tx.skipped),
        )

    def _transmitter_event(self, link: _Link, event: netwire.BridgeEvent) -> bool:
        if isinstance(event, netwire.BridgeError):
            log.warning(
                "bridge refused by receiver %s",
                kv(link=link.name, code=event.code, message=event.message),
            )
            link.close()
        else:
            link.fail(
                BusProtocolError(f"a receiver sends nothing but ERROR, got {type(event).__name__}")
            )
        return False

    def _end_transmitter(self, tx: _Transmitter) -> None:
        for key, value in list(self._transmitters.items()):
            if value is tx:
                del self._transmitters[key]
        tx.subscriber.close()
        registry = self._registry_of()
        if registry is not None:
            registry.drop_client(tx.client)

    # -- receivers ------------------------------------------------------------------------

    def _incoming_link(self) -> _Link:
        link = _Link("from peer", self._receiver_event, self._receiver_closed)
        self._incoming.add(link)
        assert self._loop is not None
        handle = self._loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout, link)
        link.closed.add_done_callback(lambda _: handle.cancel())
        if len(self._incoming) > MAX_BRIDGES:
            self._loop.call_soon(link.fail, BusLimitError(f"more than {MAX_BRIDGES} bridges"))
        return link

    def _handshake_timeout(self, link: _Link) -> None:
        if link.state is LinkState.HANDSHAKE:
            link.fail(BusStateError(f"no SUBSCRIBED in {HANDSHAKE_TIMEOUT_S:g} s"))

    def _receiver_event(self, link: _Link, event: netwire.BridgeEvent) -> bool:
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
                    return self._publish(link, event)
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

    def _want_of(self, link: _Link) -> _Want | None:
        return next((w for w in self._wants.values() if w.link is link), None)

    def _attach(self, link: _Link, event: netwire.Subscribed) -> None:
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
            ),
        )  # fmt: skip
        want.publisher = Publisher(
            target.channel, user, triggers=target.triggers, eventfd=target.publisher_fds.get(user)
        )
        want.client = client
        want.link = link
        link.state = LinkState.FORWARDING
        link.name = f"from {event.channel}"
        log.info("bridge receiving %s", kv(channel=event.channel, peer=link.peer))

    def _publish(self, link: _Link, event: netwire.BridgedMessage) -> bool:
        want = self._want_of(link)
        if want is None or want.publisher is None:
            link.close()
            return False
        if want.publisher.publish_bytes(event.data) is not None:
            return True
        # Every slot is unread by a reliable subscriber: stop reading the connection
        # (the transmitter's writes back up, and its publisher waits) until one frees.
        want.pending = event
        assert self._loop is not None
        task = self._loop.create_task(self._publish_later(link, want))
        link.closed.add_done_callback(lambda _: task.cancel())
        return False

    async def _publish_later(self, link: _Link, want: _Want) -> None:
        publisher, pending = want.publisher, want.pending
        assert publisher is not None
        assert pending is not None
        try:
            await publisher.wait_async()
            publisher.publish_bytes(pending.data)
        except BusError as exc:
            link.fail(exc)
            return
        want.pending = None
        link.resume()

    def _receiver_closed(self, link: _Link) -> None:
        self._incoming.discard(link)
        want = self._want_of(link)
        if want is not None:
            self._detach(want)
            log.info("bridge receiver ended %s", kv(channel=want.channel, peer=link.peer))

    def _detach(self, want: _Want) -> None:
        """Forget the want's bridge (its publisher removed): the next Advertise of the
        channel brings a new one."""
        if want.publisher is not None:
            want.publisher.close()
            want.publisher = None
        if want.client:
            registry = self._registry_of()
            if registry is not None:
                registry.drop_client(want.client)
            want.client = 0
        want.link = None
        want.subscribed_at = None
        want.pending = None
