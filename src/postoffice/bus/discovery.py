"""Discovery between bus servers: Query, Advertise and Subscribe datagrams over UDP.

Bus server layer, the thin shell around `netwire`'s datagram codec: one UDP socket on
`--interface`:`--discovery-port`, datagrams sent to the configured peers (or answered to
their sender), every datagram received decoded and handed to the bridge. Garbage is
counted and logged (rate-limited), never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Final, Protocol, final

from postoffice.bus import netwire
from postoffice.bus.errors import BusError, BusProtocolError, BusStorageError
from postoffice.core.errors import translate_os_error
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: Log the first few bad datagrams, then one in this many (a flood must not flood the log).
_LOG_EVERY: Final = 1000
_LOG_FIRST: Final = 10

Address = tuple[str, int]


class DiscoveryHandler(Protocol):
    """What discovery hands decoded datagrams to (the bridge)."""

    def on_query(self, source: Address, message: netwire.Query) -> None: ...
    def on_advertise(self, source: Address, message: netwire.Advertise) -> None: ...
    def on_subscribe(self, source: Address, message: netwire.Subscribe) -> None: ...


@final
class Discovery(asyncio.DatagramProtocol):
    """The discovery socket of server `server_id`. `open()` binds it; datagrams of this
    server itself (its own id) are ignored."""

    def __init__(
        self, *, server_id: int, handler: DiscoveryHandler, peers: Iterable[Address]
    ) -> None:
        self.server_id = server_id
        self.peers = tuple(peers)
        self._handler = handler
        self._transport: asyncio.DatagramTransport | None = None
        self.address: Address | None = None
        self.received = 0
        self.sent = 0
        self.garbage = 0
        self.send_errors = 0

    def __repr__(self) -> str:
        return (
            f"<Discovery {self.address} peers={len(self.peers)} received={self.received} "
            f"sent={self.sent} garbage={self.garbage}>"
        )

    async def open(self, host: str, port: int) -> Address:
        """Bind (host, port) and start receiving; the bound address. Raises
        BusStorageError when the port cannot be bound."""
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(host, port)
            )
        except OSError as exc:
            raise translate_os_error(
                exc, BusStorageError, f"cannot listen for discovery on {host}:{port}"
            ) from exc
        self._transport = transport
        bound = transport.get_extra_info("sockname")
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    def close(self) -> None:
        """Stop receiving and sending."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- receiving ------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        source = (str(addr[0]), int(str(addr[1])))
        self.received += 1
        try:
            message = netwire.decode_datagram(data)
        except BusProtocolError as exc:
            self.garbage += 1
            if self.garbage <= _LOG_FIRST or self.garbage % _LOG_EVERY == 0:
                log.warning(
                    "discovery datagram ignored %s",
                    kv(source=f"{source[0]}:{source[1]}", bytes=len(data), error=exc,
                       garbage=self.garbage),
                )  # fmt: skip
            return
        if message.server_id == self.server_id:
            return  # our own, come back by a peer list that names us
        match message:
            case netwire.Query():
                self._handler.on_query(source, message)
            case netwire.Advertise():
                self._handler.on_advertise(source, message)
            case netwire.Subscribe():
                self._handler.on_subscribe(source, message)

    def error_received(self, exc: Exception) -> None:
        # An ICMP port unreachable from a peer that is not up yet: it will be asked again.
        log.debug("discovery socket error %s", kv(error=exc))

    # -- sending --------------------------------------------------------------------------

    def send(self, message: netwire.Datagram, to: Address) -> None:
        """Send one datagram to `to` (dropped, counted, if the socket is closed)."""
        if self._transport is None:
            return
        try:
            data = netwire.encode_datagram(message)
        except BusError as exc:
            log.warning("discovery datagram not encoded %s", kv(error=exc))
            return
        try:
            self._transport.sendto(data, to)
        except OSError as exc:
            self.send_errors += 1
            log.debug("discovery datagram not sent %s", kv(to=to, error=exc))
            return
        self.sent += 1

    def to_peers(self, message: netwire.Datagram) -> None:
        """Send one datagram to every peer."""
        for peer in self.peers:
            self.send(message, peer)
