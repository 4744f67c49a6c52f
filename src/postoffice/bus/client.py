"""The bus's client: ask the server for channels, get the library's Publisher/Subscriber.

Bus library layer. `Client` talks to `postoffice bus serve` over its Unix socket (one
request at a time, blocking, thread-safe) and maps what the replies pass; after that,
messages move through shared memory without the server. A Publisher or Subscriber it
makes learns of users that come later: when a waiting user it cannot wake shows up, and
the SCB says the channel's users changed, the client asks the server for the eventfds.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self, final

from postoffice.bus import wire
from postoffice.bus.blocks import BusLocation, ChannelFds, SystemControlBlock, unix_address
from postoffice.bus.channel import Channel, ChecksumFunction, crc32_checksum
from postoffice.bus.errors import (
    BusClosedError,
    BusConnectionError,
    BusError,
    BusLayoutError,
    BusLimitError,
    BusMismatchError,
    BusNotFoundError,
    BusProtocolError,
    BusServerError,
    BusStateError,
    BusStorageError,
    CapacityError,
    MessageSizeError,
    TooManyUsersError,
)
from postoffice.bus.publisher import Publisher
from postoffice.bus.subscriber import DropCallback, Subscriber
from postoffice.bus.triggers import Triggers
from postoffice.core import config as core_config
from postoffice.core.errors import FrameError
from postoffice.core.framing import NEED_DATA
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: How long one request may wait for its reply before the client gives up.
DEFAULT_TIMEOUT_S: Final = 10.0
_READ_BYTES: Final = 64 * 1024
_ANCILLARY_BYTES: Final = socket.CMSG_SPACE(wire.MAX_FDS * 4)
_ERRORS: Final[dict[str, type[BusError]]] = {
    cls.wire_code: cls
    for cls in (
        BusMismatchError,
        BusNotFoundError,
        BusStateError,
        BusLimitError,
        BusProtocolError,
        TooManyUsersError,
        CapacityError,
        BusStorageError,
        BusLayoutError,
        MessageSizeError,
    )
}


def default_socket_path() -> Path:
    """`<data-dir>/run/bus.sock`, the data dir from POSTOFFICE_DATA_DIR or ./var."""
    return core_config.data_dir() / "run" / "bus.sock"


def error_for(reply: wire.ErrorReply) -> BusError:
    """The error a server's ERROR reply stands for (its class found by wire code)."""
    cls = _ERRORS.get(reply.code)
    if cls is None:
        return BusServerError(f"{reply.code}: {reply.message}")
    return cls(reply.message)


#: The descriptors of other users that a mapping keeps for its Triggers.
_TRIGGER_ROLES: Final = (
    wire.FdRole.SUBSCRIBER_TRIGGER,
    wire.FdRole.PUBLISHER_TRIGGER,
    wire.FdRole.RETIRER,
)


@final
@dataclass(eq=False)
class _Mapped:
    """One channel mapped in this client, shared by its users here."""

    name: str
    channel: Channel
    fds: ChannelFds
    triggers: Triggers
    #: (role, user id) -> a descriptor this mapping owns, known to `triggers`.
    trigger_fds: dict[tuple[wire.FdRole, int], int] = field(default_factory=dict)
    #: Own eventfds of this client's users, by (publisher?, user id).
    own_fds: dict[tuple[bool, int], int] = field(default_factory=dict)
    #: Read ends of the retirement pipes of this client's publishers that asked, by id.
    retirement_fds: dict[int, int] = field(default_factory=dict)
    users: dict[tuple[bool, int], Publisher | Subscriber] = field(default_factory=dict)
    updates_seen: int = -1


@final
class Client:
    """A connection to the bus server at `socket_path` (default: `<data-dir>/run/bus.sock`),
    initialized with `name`. Raises BusConnectionError if the server cannot be reached.

    Use as a context manager; `close()` closes every publisher and subscriber made here
    (the server then removes them, as it does when this process dies).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        name: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self._lock = threading.RLock()
        self._stream = wire.reply_stream()
        self._next_id = 1
        self._mapped: dict[str, _Mapped] = {}
        self.closed = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            with unix_address(self.socket_path) as address:
                sock.connect(address)
        except OSError as exc:
            sock.close()
            raise BusConnectionError(
                f"cannot reach the bus server at {self.socket_path}: {exc.strerror or exc}"
            ) from exc
        self._sock = sock
        try:
            reply, fds = self._call(wire.InitRequest(client_name=name))
            if not isinstance(reply, wire.InitReply) or len(fds) != 1:
                _close_all(fds)
                raise BusProtocolError(f"INIT answered with {type(reply).__name__}")
            try:
                self.scb = SystemControlBlock.open(fds[0], Path(reply.directory))
            finally:
                os.close(fds[0])
        except BaseException:
            sock.close()
            self.closed = True
            raise
        self._scb_closed = False
        self.session = reply.session
        self.client_id = reply.client_id
        self.location = BusLocation(directory=Path(reply.directory), session=reply.session)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"channels={sorted(self._mapped)}"
        return f"<bus.Client {self.socket_path} client={getattr(self, 'client_id', None)} {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------

    def _call(self, request: wire.Request) -> tuple[wire.Reply, list[int]]:
        """Send one request and wait for its reply and the descriptors it passed (owned by
        the caller). Raises the error an ERROR reply stands for, BusConnectionError."""
        with self._lock:
            if self.closed:
                raise BusClosedError("the bus client is closed")
            request_id = self._next_id
            self._next_id += 1
            data = wire.encode_request(request_id, request)
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise self._broken(f"cannot send to the bus server: {exc.strerror or exc}") from exc
            fds: list[int] = []
            try:
                answer_id, reply = self._receive(fds)
            except BaseException:
                _close_all(fds)
                raise
        if isinstance(reply, wire.ErrorReply):
            _close_all(fds)
            if answer_id == 0:
                self._broken("")
            raise error_for(reply)
        if answer_id != request_id:
            _close_all(fds)
            raise self._broken(f"reply to request {answer_id}, expected {request_id}")
        if len(fds) != len(getattr(reply, "fds", ())):
            _close_all(fds)
            raise BusProtocolError(
                f"reply lists {len(getattr(reply, 'fds', ()))} descriptors, {len(fds)} came"
            )
        return reply, fds

    def _receive(self, fds: list[int]) -> tuple[int, wire.Reply]:
        while True:
            try:
                event = self._stream.next_event()
            except (BusError, FrameError) as exc:
                raise self._broken(f"bad reply from the bus server: {exc}") from exc
            if event is not NEED_DATA:
                return event
            try:
                data, ancdata, _, _ = self._sock.recvmsg(
                    _READ_BYTES, _ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC
                )
            except TimeoutError as exc:
                raise self._broken("the bus server did not answer in time") from exc
            except OSError as exc:
                raise self._broken(f"cannot read from the bus server: {exc.strerror}") from exc
            for level, kind, blob in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(blob[: len(blob) - len(blob) % received.itemsize])
                    fds.extend(received)
            if not data:
                raise self._broken(f"the bus server at {self.socket_path} closed the connection")
            self._stream.feed(data)

    def _broken(self, message: str) -> BusConnectionError:
        """Mark the connection unusable; the error to raise."""
        self._sock.close()
        self.closed = True
        return BusConnectionError(message or "the bus server closed the connection")

    # -- users ----------------------------------------------------------------------------

    def create_publisher(
        self,
        name: str,
        *,
        slot_size: int = 0,
        num_slots: int = 0,
        reliable: bool = False,
        fixed_size: bool = False,
        checksum: bool = False,
        type: str = "",
        metadata_bytes: int = 0,
        checksum_function: ChecksumFunction = crc32_checksum,
        activate: bool = False,
        mux: str = "",
        retirement: bool = False,
    ) -> Publisher:
        """A publisher on channel `name`, created if need be (0: the channel's slot size
        and num_slots, or the server's defaults). With `checksum`, every message carries
        `checksum_function(metadata, payload)` (CRC-32 by default); `metadata_bytes` is
        the metadata each message may carry (the channel's; 0..256). With `activate`, the
        publisher's first message is an activation message (Publisher.activate; not
        sent when a reliable publisher finds no free slot). With `mux`, `name` is a
        virtual channel of that multiplexer (both made on first use; the channel
        parameters are the mux's), and `publish` returns the vchan's ordinals. With
        `retirement` (not with `mux`: BusConfigError), the publisher's
        `retirement_fileno()` becomes readable when a message of its retires (nobody
        holds it, no reliable subscriber must still read it), and `retired()` says
        which. Raises
        BusMismatchError when the parameters disagree with the channel's,
        TooManyUsersError, CapacityError, BusLimitError, BusProtocolError (a field out
        of range: nothing sent)."""
        request = wire.CreatePublisherRequest(
            channel=name, type=type, slot_size=slot_size, num_slots=num_slots,
            reliable=reliable, fixed_size=fixed_size, checksum=checksum,
            metadata_bytes=metadata_bytes, mux=mux, retirement=retirement,
        )  # fmt: skip
        reply, fds = self._call(request)
        grant = self._grant(reply, fds, publisher=True)
        mapped, own = self._map(mux or name, grant, fds)
        retire_fd = mapped.retirement_fds.get(grant.user_id)
        if retirement and retire_fd is None:
            raise BusProtocolError("a retirement grant without the retirement pipe")
        publisher = Publisher(
            mapped.channel, grant.user_id, triggers=mapped.triggers, eventfd=own,
            checksum=checksum_function, retirement=retire_fd,
        )  # fmt: skip
        mapped.users[(True, grant.user_id)] = publisher
        if activate:
            publisher.activate()
        return publisher

    def create_subscriber(
        self,
        name: str,
        *,
        reliable: bool = False,
        max_active: int = 1,
        type: str = "",
        slot_size: int = 0,
        num_slots: int = 0,
        on_drop: DropCallback | None = None,
        checksum_function: ChecksumFunction = crc32_checksum,
        drop_bad_checksums: bool = False,
        pass_activations: bool = False,
        mux: str = "",
    ) -> Subscriber:
        """A subscriber on channel `name`, which it creates if need be (with `slot_size`
        and `num_slots`, 0: the server's defaults; its first publisher then says what
        the channel is). A message failing its checksum (`checksum_function`, as the
        publisher's) raises ChecksumError on read, or with `drop_bad_checksums` counts
        as a drop. Activation messages are passed over unless `pass_activations`.
        With `mux`, `name` is a virtual channel of that multiplexer: the subscriber
        reads only its messages, in its own ordinals (a subscriber of the mux itself
        reads every vchan's). Raises as create_publisher does."""
        request = wire.CreateSubscriberRequest(
            channel=name, type=type, slot_size=slot_size, num_slots=num_slots,
            reliable=reliable, max_active=max_active, mux=mux,
        )  # fmt: skip
        reply, fds = self._call(request)
        grant = self._grant(reply, fds, publisher=False)
        mapped, own = self._map(mux or name, grant, fds)
        assert own is not None
        subscriber = Subscriber(
            mapped.channel, grant.user_id, triggers=mapped.triggers, eventfd=own,
            on_drop=on_drop, checksum=checksum_function, drop_bad_checksums=drop_bad_checksums,
            pass_activations=pass_activations,
            on_replaced=self._reopener(mux or name, grant.user_id),
        )  # fmt: skip
        mapped.users[(False, grant.user_id)] = subscriber
        return subscriber

    @staticmethod
    def _grant(reply: wire.Reply, fds: list[int], *, publisher: bool) -> wire.GrantReply:
        if not isinstance(reply, wire.GrantReply) or reply.publisher != publisher:
            _close_all(fds)
            raise BusProtocolError(f"a create answered with {type(reply).__name__}")
        return reply

    def _map(self, name: str, grant: wire.GrantReply, fds: list[int]) -> tuple[_Mapped, int | None]:
        """Map the granted channel (or reuse this client's mapping of it) and take the
        descriptors; the mapping and the user's own eventfd."""
        roles = [entry.role for entry in grant.fds]
        taken: set[int] = set()
        try:
            if roles.count(wire.FdRole.CCB) != 1 or roles.count(wire.FdRole.BCB) != 1:
                raise BusProtocolError("a grant without exactly one ccb and one bcb")
            buffers = [
                (entry.id, fd)
                for entry, fd in zip(grant.fds, fds, strict=True)
                if entry.role is wire.FdRole.BUFFER
            ]
            if [index for index, _ in buffers] != list(range(len(buffers))):
                raise BusProtocolError("a grant's buffers are not 0, 1, 2, ...")
            old = self._mapped.get(name)
            mapped = old
            if (
                mapped is None
                or mapped.channel.channel_id != grant.channel_id
                or mapped.channel.replaced()
            ):
                channel_fds = ChannelFds(
                    ccb=fds[roles.index(wire.FdRole.CCB)],
                    bcb=fds[roles.index(wire.FdRole.BCB)],
                    buffers=tuple(fd for _, fd in buffers),
                )
                channel = Channel.open(self.location, channel_fds)
                taken.update(channel_fds.all())
                mapped = _Mapped(
                    name=name, channel=channel, fds=channel_fds, triggers=Triggers(channel.ccb)
                )
                mapped.triggers.on_waiters = self._refresher(mapped)
                self._mapped[name] = mapped
                if old is not None and old.channel.channel_id == grant.channel_id:
                    self._move(old, mapped)
            own: int | None = None
            publisher = grant.publisher
            for entry, fd in zip(grant.fds, fds, strict=True):
                if entry.role is wire.FdRole.OWN_TRIGGER:
                    known = mapped.own_fds.get((publisher, grant.user_id))
                    if known is not None:  # a reopen: this user has its eventfd already
                        own = known
                        continue
                    own = fd
                    mapped.own_fds[(publisher, grant.user_id)] = fd
                    taken.add(fd)
                elif entry.role is wire.FdRole.RETIREMENT and publisher:
                    mapped.retirement_fds[grant.user_id] = fd
                    taken.add(fd)
                elif entry.role in _TRIGGER_ROLES:
                    self._set_trigger(mapped, entry, fd)
                    taken.add(fd)
            if own is not None:
                if publisher:
                    mapped.triggers.set_publisher(grant.user_id, own)
                else:
                    mapped.triggers.set_subscriber(grant.user_id, own)
        finally:
            _close_all([fd for fd in fds if fd not in taken])
        return mapped, own

    @staticmethod
    def _move(old: _Mapped, new: _Mapped) -> None:
        """A placeholder's new files are mapped: its users here move to them, with their
        eventfds, and the old mapping goes."""
        new.own_fds.update(old.own_fds)
        new.trigger_fds.update(old.trigger_fds)
        old.own_fds.clear()
        old.trigger_fds.clear()
        for (publisher, user), fd in new.own_fds.items():
            if publisher:
                new.triggers.set_publisher(user, fd)
            else:
                new.triggers.set_subscriber(user, fd)
        new.retirement_fds.update(old.retirement_fds)
        old.retirement_fds.clear()
        for (role, user), fd in new.trigger_fds.items():
            if role is wire.FdRole.SUBSCRIBER_TRIGGER:
                new.triggers.set_subscriber(user, fd)
            elif role is wire.FdRole.RETIRER:
                new.triggers.set_retirer(user, fd)
            else:
                new.triggers.set_publisher(user, fd)
        for key, member in old.users.items():
            if isinstance(member, Subscriber):
                member.rebind(new.channel, new.triggers)
            new.users[key] = member
        old.users.clear()
        try:
            old.channel.close()
        except BusStorageError as exc:  # a view still exported: it stays mapped
            log.debug("placeholder kept mapped %s", kv(channel=old.name, error=exc))
        old.fds.close()

    def _reopener(self, name: str, user: int) -> Callable[[], None]:
        def reopen() -> None:
            reply, fds = self._call(wire.ReopenSubscriberRequest(channel=name, user_id=user))
            self._map(name, self._grant(reply, fds, publisher=False), fds)

        return reopen

    @staticmethod
    def _set_trigger(mapped: _Mapped, entry: wire.FdEntry, fd: int) -> None:
        key = (entry.role, entry.id)
        if entry.role is wire.FdRole.SUBSCRIBER_TRIGGER:
            mapped.triggers.set_subscriber(entry.id, fd)
        elif entry.role is wire.FdRole.RETIRER:
            mapped.triggers.set_retirer(entry.id, fd)
        else:
            mapped.triggers.set_publisher(entry.id, fd)
        old = mapped.trigger_fds.get(key)
        mapped.trigger_fds[key] = fd
        if old is not None:
            os.close(old)

    def _refresher(self, mapped: _Mapped) -> Callable[[], None]:
        def refresh() -> None:
            try:
                updates = self.scb.counters(mapped.channel.channel_id).updates
                if updates != mapped.updates_seen:
                    self.refresh_triggers(mapped.name)
                    mapped.updates_seen = updates
            except BusError as exc:  # in a publish or a release: they must not fail
                log.debug("triggers not refreshed %s", kv(channel=mapped.name, error=exc))

        return refresh

    def refresh_triggers(self, name: str) -> None:
        """Ask the server for the eventfds of channel `name`'s users now, so that this
        client's publishers and subscribers wake the users that came since. Raises
        BusNotFoundError, BusConnectionError."""
        mapped = self._mapped.get(name)
        if mapped is None:
            raise BusNotFoundError(f"this client has no publisher or subscriber on {name!r}")
        reply, fds = self._call(wire.GetTriggersRequest(channel=name))
        if not isinstance(reply, wire.TriggersReply):
            _close_all(fds)
            raise BusProtocolError(f"GET_TRIGGERS answered with {type(reply).__name__}")
        listed: set[tuple[wire.FdRole, int]] = set()
        for entry, fd in zip(reply.fds, fds, strict=True):
            if entry.role in _TRIGGER_ROLES:
                self._set_trigger(mapped, entry, fd)
                listed.add((entry.role, entry.id))
            else:
                os.close(fd)
        for key in [k for k in mapped.trigger_fds if k not in listed]:
            role, user = key  # gone from the channel: forget its eventfd
            if role is wire.FdRole.SUBSCRIBER_TRIGGER:
                mapped.triggers.remove_subscriber(user)
            elif role is wire.FdRole.RETIRER:
                mapped.triggers.remove_retirer(user)
            else:
                mapped.triggers.remove_publisher(user)
            os.close(mapped.trigger_fds.pop(key))

    def get_triggers(self, name: str) -> list[wire.FdEntry]:
        """Which users of channel `name` have eventfds now (the descriptors are not kept:
        `refresh_triggers` keeps them for this client's users)."""
        reply, fds = self._call(wire.GetTriggersRequest(channel=name))
        _close_all(fds)
        if not isinstance(reply, wire.TriggersReply):
            raise BusProtocolError(f"GET_TRIGGERS answered with {type(reply).__name__}")
        return list(reply.fds)

    def remove_publisher(self, publisher: Publisher) -> None:
        """Close `publisher` and unregister it (its channel goes when it was the last
        user). Raises BusNotFoundError for a publisher not made by this client."""
        self._remove(publisher, True, publisher.publisher_id)

    def remove_subscriber(self, subscriber: Subscriber) -> None:
        """Release what `subscriber` holds, close and unregister it. Raises
        BusNotFoundError for a subscriber not made by this client."""
        self._remove(subscriber, False, subscriber.subscriber_id)

    def _remove(self, user: Publisher | Subscriber, publisher: bool, user_id: int) -> None:
        name = user.channel.name
        mapped = self._mapped.get(name)
        if mapped is None or mapped.users.get((publisher, user_id)) is not user:
            kind = "publisher" if publisher else "subscriber"
            raise BusNotFoundError(f"{kind} {user_id} on {name!r} is not this client's")
        user.close()
        del mapped.users[(publisher, user_id)]
        try:
            request: wire.Request
            if publisher:
                request = wire.RemovePublisherRequest(channel=name, user_id=user_id)
            else:
                request = wire.RemoveSubscriberRequest(channel=name, user_id=user_id)
            self._call(request)
        finally:
            own = mapped.own_fds.pop((publisher, user_id), None)
            if publisher:
                mapped.triggers.remove_publisher(user_id)
            else:
                mapped.triggers.remove_subscriber(user_id)
            if own is not None:
                os.close(own)
            retire_fd = mapped.retirement_fds.pop(user_id, None) if publisher else None
            if retire_fd is not None:
                os.close(retire_fd)
            if not mapped.users:
                self._unmap(mapped)

    def _unmap(self, mapped: _Mapped) -> None:
        self._mapped.pop(mapped.name, None)
        for user in mapped.users.values():
            user.close()
        mapped.users.clear()
        try:
            mapped.channel.close()
        except BusStorageError as exc:  # a message still referenced: it stays mapped
            log.debug("channel kept mapped %s", kv(channel=mapped.name, error=exc))
        mapped.fds.close()
        _close_all(
            [
                *mapped.trigger_fds.values(),
                *mapped.own_fds.values(),
                *mapped.retirement_fds.values(),
            ]
        )
        mapped.trigger_fds.clear()
        mapped.own_fds.clear()
        mapped.retirement_fds.clear()

    # -- reports --------------------------------------------------------------------------

    def channel_info(self, name: str | None = None) -> list[wire.ChannelInfo]:
        """What channel `name` is (one record), or every channel (None). Raises
        BusNotFoundError for an unknown name."""
        reply, _ = self._call(wire.GetChannelInfoRequest(channel=name or ""))
        if not isinstance(reply, wire.ChannelInfoReply):
            raise BusProtocolError(f"GET_CHANNEL_INFO answered with {type(reply).__name__}")
        return list(reply.channels)

    def channel_stats(self, name: str | None = None) -> list[wire.ChannelStatsRecord]:
        """Channel `name`'s statistics (one record), or every channel's (None). Raises
        BusNotFoundError for an unknown name."""
        reply, _ = self._call(wire.GetChannelStatsRequest(channel=name or ""))
        if not isinstance(reply, wire.ChannelStatsReply):
            raise BusProtocolError(f"GET_CHANNEL_STATS answered with {type(reply).__name__}")
        return list(reply.channels)

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close every publisher and subscriber, unmap, and disconnect (the server then
        removes this client's users). Safe to call twice."""
        with self._lock:
            for mapped in list(self._mapped.values()):
                self._unmap(mapped)
            if not self.closed:
                self.closed = True
                self._sock.close()
            if not self._scb_closed:
                self._scb_closed = True
                self.scb.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
