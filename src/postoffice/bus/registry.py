"""The bus server's channels and their users: create, check, register, remove, clean up.

Bus server layer, no sockets: the server's connections call it one request at a time
(registrations must be serialized, docs/design/bus-memory.md), and hand back the
descriptors it lists. Creating a channel is a few files on a tmpfs (no disk I/O), so it
runs on the loop rather than in a thread that would break that serialization.

Design
------
The first user of a name creates the channel, with its parameters (0: the server's
defaults). A channel a subscriber created is *provisional* until its first publisher
comes: that publisher's type, fixed-size and checksum options are adopted (the CCB's
header is rewritten; nobody publishes yet), its larger slot size grows the channel, but
num_slots is fixed at creation (the CCB is sized by it). After that every publisher
must agree with the channel (type, num_slots, fixed size, checksum, a fixed channel's
slot size) and with the other publishers on reliability; a subscriber's non-empty type
must match. A channel whose last user goes is removed and its files unlinked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, final

from postoffice.bus import memory, wire
from postoffice.bus.blocks import (
    BusLocation,
    ChannelFds,
    ChannelSpec,
    SystemControlBlock,
    create_channel,
    remove_channel_files,
)
from postoffice.bus.channel import Channel, slots_needed
from postoffice.bus.errors import (
    BusError,
    BusLimitError,
    BusMismatchError,
    BusNotFoundError,
    BusStorageError,
    CapacityError,
)
from postoffice.bus.native import atomics
from postoffice.bus.retirement import new_pipe as new_retirement_pipe
from postoffice.bus.triggers import Triggers, new_eventfd
from postoffice.core.errors import translate_os_error
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: The server's own user of its channels (/bus/directory, /bus/stats); clients are 1..
SERVER_CLIENT: Final = 0
#: Buffer descriptors one grant carries; later buffers are mapped by name (so a reply
#: stays under the kernel's 253 descriptors with 64 + 64 triggers).
MAX_GRANTED_BUFFERS: Final = 64

#: One descriptor to pass: what it is and the fd, owned by the reply (closed once sent).
Passed = tuple[wire.FdEntry, int]


@final
@dataclass(eq=False)
class ServerChannel:
    """One channel as the server keeps it: the mapping, the eventfds it made, who owns
    each user, and whether a publisher has defined it yet."""

    name: str
    channel: Channel
    fds: ChannelFds
    triggers: Triggers
    defined: bool
    subscriber_owner: dict[int, int] = field(default_factory=dict)
    publisher_owner: dict[int, int] = field(default_factory=dict)
    subscriber_fds: dict[int, int] = field(default_factory=dict)
    publisher_fds: dict[int, int] = field(default_factory=dict)
    #: The retirement pipes (read end, write end) of the publishers that asked, by id.
    retirement_fds: dict[int, tuple[int, int]] = field(default_factory=dict)
    reliable_publishers: bool = False
    #: A mux's virtual channels: name -> vchan id, and each user's vchan by
    #: (publisher?, user id). A vchan lives while it has users.
    vchans: dict[str, int] = field(default_factory=dict)
    user_vchans: dict[tuple[bool, int], int] = field(default_factory=dict)

    @property
    def mux(self) -> bool:
        return self.channel.mux

    @property
    def channel_id(self) -> int:
        return self.channel.channel_id

    @property
    def empty(self) -> bool:
        return not self.subscriber_owner and not self.publisher_owner

    def slot_size(self) -> int:
        newest = self.channel.newest_buffer()
        return newest.slot_size if newest is not None else 0

    def __repr__(self) -> str:
        return (
            f"<ServerChannel {self.channel_id} {self.name!r} "
            f"publishers={sorted(self.publisher_owner)} "
            f"subscribers={sorted(self.subscriber_owner)}>"
        )


@final
class Registry:
    """Every channel of one session, by name, and which client registered which user.

    `on_change` is called after any change of channels or users (the directory)."""

    def __init__(
        self,
        location: BusLocation,
        scb: SystemControlBlock,
        *,
        max_channels: int,
        max_buffer_bytes: int,
        default_num_slots: int,
        default_slot_size: int,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.location = location
        self.scb = scb
        self._max_channels = max_channels
        self._max_buffer_bytes = max_buffer_bytes
        self._default_num_slots = default_num_slots
        self._default_slot_size = default_slot_size
        self._on_change = on_change
        self._channels: dict[str, ServerChannel] = {}
        #: Every virtual channel's name -> its mux's name.
        self._vchans: dict[str, str] = {}
        self._free_ids = list(range(memory.MAX_CHANNELS - 1, -1, -1))
        self._reserved: set[str] = set()

    def __repr__(self) -> str:
        return f"<Registry session={self.location.session} channels={len(self._channels)}>"

    def reserve(self, name: str) -> None:
        """Mark `name` as one of the server's own channels (not counted in max_channels)."""
        self._reserved.add(name)

    def channels(self) -> Iterator[ServerChannel]:
        """Every channel, in channel-id order."""
        return iter(sorted(self._channels.values(), key=lambda c: c.channel_id))

    def get(self, name: str) -> ServerChannel:
        """The channel called `name`; BusNotFoundError if there is none."""
        found = self._channels.get(name)
        if found is None:
            raise BusNotFoundError(f"no channel {name!r}")
        return found

    # -- creating -------------------------------------------------------------------------

    def _create(
        self,
        name: str,
        *,
        type_: str,
        num_slots: int,
        slot_size: int,
        flags: int,
        defined: bool,
        metadata_bytes: int = 0,
    ) -> ServerChannel:
        counted = sum(1 for n in self._channels if n not in self._reserved)
        if name not in self._reserved and counted >= self._max_channels:
            raise BusLimitError(
                f"the server has {counted} channels, the limit (--max-channels) is "
                f"{self._max_channels}"
            )
        if not self._free_ids:
            raise BusLimitError(f"every one of the {memory.MAX_CHANNELS} channel ids is in use")
        num_slots = num_slots or self._default_num_slots
        slot_size = slot_size or self._default_slot_size
        self._check_buffer(name, num_slots, slot_size)
        spec = ChannelSpec(
            channel_id=self._free_ids[-1], name=name, type=type_, num_slots=num_slots,
            slot_size=slot_size, fixed_size=bool(flags & memory.FLAG_FIXED_SIZE),
            checksum=bool(flags & memory.FLAG_CHECKSUM), metadata_bytes=metadata_bytes,
            placeholder=bool(flags & memory.FLAG_PLACEHOLDER), mux=bool(flags & memory.FLAG_MUX),
        )  # fmt: skip
        fds = create_channel(self.location, spec)
        try:
            channel = Channel.open(self.location, fds, scb=self.scb)
        except BaseException:
            fds.close()
            remove_channel_files(self.location, spec.channel_id)
            raise
        self._free_ids.pop()
        self.scb.reset(spec.channel_id)
        created = ServerChannel(
            name=name, channel=channel, fds=fds, triggers=Triggers(channel.ccb), defined=defined
        )
        self._channels[name] = created
        log.info(
            "channel created %s",
            kv(channel=name, id=spec.channel_id, slots=num_slots, slot_size=slot_size),
        )
        return created

    def _check_buffer(self, name: str, num_slots: int, slot_size: int) -> None:
        if num_slots * slot_size > self._max_buffer_bytes:
            raise BusLimitError(
                f"channel {name!r}: {num_slots} slots x {slot_size} bytes = "
                f"{num_slots * slot_size} bytes exceeds the limit of {self._max_buffer_bytes} "
                "(--max-buffer-size)"
            )

    # -- users ----------------------------------------------------------------------------

    def add_publisher(
        self, client_id: int, request: wire.CreatePublisherRequest
    ) -> tuple[ServerChannel, int]:
        """Register a publisher (creating or defining its channel); the channel and the
        publisher id. Raises BusMismatchError, BusLimitError, TooManyUsersError,
        CapacityError, BusStorageError; a channel it created is removed again on error."""
        flags = (memory.FLAG_FIXED_SIZE if request.fixed_size else 0) | (
            memory.FLAG_CHECKSUM if request.checksum else 0
        )
        if request.mux:
            return self._add_virtual(client_id, request, flags)
        self._check_not_virtual(request.channel)
        found = self._channels.get(request.channel)
        if found is not None and not found.defined and self._reshapes(found, request):
            self._remap(found, request, flags)
        if found is None:
            target = self._create(
                request.channel, type_=request.type, num_slots=request.num_slots,
                slot_size=request.slot_size, flags=flags, defined=True,
                metadata_bytes=request.metadata_bytes,
            )  # fmt: skip
        else:
            target = found
            self._check_publisher(target, request, flags)
        try:
            if found is not None and not target.defined:
                target.channel.redefine(type=request.type, flags=flags)
                target.defined = True
            if request.slot_size > target.slot_size():
                self._check_buffer(request.channel, target.channel.num_slots, request.slot_size)
                target.channel.grow(request.slot_size)
            user = target.channel.add_publisher(reliable=request.reliable)
        except BaseException:
            self._remove_if_empty(target)
            raise
        target.defined = True
        target.reliable_publishers = request.reliable
        target.publisher_owner[user] = client_id
        if request.reliable:
            fd = new_eventfd()
            target.publisher_fds[user] = fd
            target.triggers.set_publisher(user, fd)
        if request.retirement:
            pipe = new_retirement_pipe()
            target.retirement_fds[user] = pipe
            target.triggers.set_retirer(user, pipe[1])
        self._changed()
        return target, user

    @staticmethod
    def _reshapes(target: ServerChannel, request: wire.CreatePublisherRequest) -> bool:
        """Whether a placeholder's first publisher needs files of another shape."""
        channel = target.channel
        return bool(
            (request.num_slots and request.num_slots != channel.num_slots)
            or request.metadata_bytes != channel.metadata_bytes
        )

    def _remap(
        self, target: ServerChannel, request: wire.CreatePublisherRequest, flags: int
    ) -> None:
        """Give a placeholder new files of its first publisher's shape, with its
        subscribers registered again under their ids (and counted once, as before), then
        mark the old CCB replaced and wake them: each asks for the new files. Raises
        BusMismatchError (a type), BusLimitError, CapacityError, BusStorageError; the
        placeholder is then unchanged (its old files are gone only if new ones exist)."""
        old = target.channel
        name = target.name
        if old.type and request.type != old.type:
            raise BusMismatchError(
                f"channel {name!r} has type {old.type!r}, the publisher's is {request.type!r}"
            )
        num_slots = request.num_slots or old.num_slots
        slot_size = max(request.slot_size, target.slot_size())
        self._check_buffer(name, num_slots, slot_size)
        users = [
            (user, old.is_reliable_subscriber(user), old.max_active_messages(user))
            for user in sorted(target.subscriber_owner)
        ]
        if not request.reliable:
            needed = slots_needed(1, len(users), sum(active for _, _, active in users))
            if needed > num_slots:
                raise CapacityError(
                    f"unreliable channel {name!r} would have {num_slots} slots and needs "
                    f"{needed}: publishers 1 + subscribers {len(users)} + max active "
                    f"messages {needed - len(users) - 2} + 1"
                )
        spec = ChannelSpec(
            channel_id=old.channel_id, name=name, type=request.type, num_slots=num_slots,
            slot_size=slot_size, fixed_size=bool(flags & memory.FLAG_FIXED_SIZE),
            checksum=bool(flags & memory.FLAG_CHECKSUM), metadata_bytes=request.metadata_bytes,
        )  # fmt: skip
        # The old files go first (the names are the channel id's); the old descriptors
        # and every mapping of them stay valid, so a failure below leaves the placeholder
        # working.
        remove_channel_files(self.location, old.channel_id)
        fds = create_channel(self.location, spec)
        try:
            channel = Channel.open(self.location, fds)
            for user, reliable, active in users:
                channel.restore_subscriber(user, reliable=reliable, max_active_messages=active)
        except BaseException:
            fds.close()
            raise
        channel.scb = self.scb
        triggers = Triggers(channel.ccb)
        for user, fd in target.subscriber_fds.items():
            triggers.set_subscriber(user, fd)
        old.mark_replaced()
        old_fds = target.fds
        target.channel, target.fds, target.triggers = channel, fds, triggers
        target.defined = True
        try:
            old.close()
        except BusError as exc:
            log.warning("placeholder closed with views %s", kv(channel=name, error=exc))
        old_fds.close()
        self.scb.add(channel.channel_id, "remaps", 1)
        for fd in target.subscriber_fds.values():
            try:
                os.eventfd_write(fd, 1)
            except BlockingIOError:
                pass  # at its maximum: a wake-up is pending anyway
        log.info(
            "placeholder remapped %s",
            kv(channel=name, slots=num_slots, slot_size=slot_size, subscribers=len(users)),
        )

    def reopen_subscriber(self, client_id: int, name: str, user: int) -> ServerChannel:
        """The channel of subscriber `user` of channel `name`, which `client_id`
        registered (to grant its current files again). Raises BusNotFoundError."""
        target = self.get(name)
        if target.subscriber_owner.get(user) != client_id:
            raise BusNotFoundError(f"no subscriber {user} of this client on channel {name!r}")
        return target

    def grant(
        self, target: ServerChannel, *, publisher: bool, user: int
    ) -> tuple[wire.GrantReply, list[Passed]]:
        """The grant of an existing user: the reply and its descriptors (grant_fds)."""
        passed = self.grant_fds(target, publisher=publisher, user=user)
        channel = target.channel
        reply = wire.GrantReply(
            publisher=publisher, channel_id=channel.channel_id, user_id=user,
            num_slots=channel.num_slots, slot_size=target.slot_size(), flags=channel.flags,
            type=channel.type, fds=tuple(entry for entry, _ in passed),
        )  # fmt: skip
        return reply, passed

    def _check_publisher(
        self, target: ServerChannel, request: wire.CreatePublisherRequest, flags: int
    ) -> None:
        channel = target.channel
        name = target.name  # a vchan's publisher must agree with its mux
        if request.num_slots and request.num_slots != channel.num_slots:
            raise BusMismatchError(
                f"channel {name!r} has {channel.num_slots} slots, the publisher asks for "
                f"{request.num_slots}"
            )
        if request.metadata_bytes != channel.metadata_bytes:
            raise BusMismatchError(
                f"channel {name!r} has {channel.metadata_bytes} bytes of metadata per message, "
                f"the publisher asks for {request.metadata_bytes}"
            )
        if (target.defined or channel.type) and request.type != channel.type:
            raise BusMismatchError(
                f"channel {name!r} has type {channel.type!r}, the publisher's is {request.type!r}"
            )
        if target.defined:
            for flag, what in (
                (memory.FLAG_FIXED_SIZE, "fixed size"),
                (memory.FLAG_CHECKSUM, "checksum"),
            ):
                if (flags ^ channel.flags) & flag:
                    have = "is" if channel.flags & flag else "is not"
                    asks = "asks" if flags & flag else "does not ask"
                    raise BusMismatchError(
                        f"channel {name!r} {have} {what}, the publisher {asks} for it"
                    )
            current = target.slot_size()
            if channel.fixed_size and request.slot_size not in (0, current):
                raise BusMismatchError(
                    f"channel {name!r} has fixed slots of {current} bytes, the publisher "
                    f"asks for {request.slot_size}"
                )
        if target.publisher_owner and request.reliable != target.reliable_publishers:
            have = "reliable" if target.reliable_publishers else "unreliable"
            asks = "reliable" if request.reliable else "unreliable"
            raise BusMismatchError(
                f"channel {name!r} has {have} publishers, this one asks to be {asks}"
            )

    def add_subscriber(
        self, client_id: int, request: wire.CreateSubscriberRequest
    ) -> tuple[ServerChannel, int]:
        """Register a subscriber (creating a provisional channel for an unknown name); the
        channel and the subscriber id. Raises as add_publisher does."""
        if request.mux:
            return self._add_virtual(client_id, request, 0)
        self._check_not_virtual(request.channel)
        target = self._channels.get(request.channel)
        if target is None:
            target = self._create(
                request.channel, type_=request.type, num_slots=request.num_slots,
                slot_size=request.slot_size, flags=memory.FLAG_PLACEHOLDER, defined=False,
            )  # fmt: skip
        else:
            channel = target.channel
            typed = target.defined or channel.type
            if request.type and typed and request.type != channel.type:
                raise BusMismatchError(
                    f"channel {request.channel!r} has type {channel.type!r}, the "
                    f"subscriber's is {request.type!r}"
                )
            if request.num_slots and request.num_slots != channel.num_slots:
                raise BusMismatchError(
                    f"channel {request.channel!r} has {channel.num_slots} slots, the "
                    f"subscriber asks for {request.num_slots}"
                )
        try:
            if request.type and not target.defined and not target.channel.type:
                target.channel.redefine(type=request.type, flags=target.channel.flags)
            user = target.channel.add_subscriber(
                reliable=request.reliable, max_active_messages=request.max_active
            )
        except BaseException:
            self._remove_if_empty(target)
            raise
        fd = new_eventfd()
        target.subscriber_owner[user] = client_id
        target.subscriber_fds[user] = fd
        target.triggers.set_subscriber(user, fd)
        self._changed()
        return target, user

    # -- multiplexers ------------------------------------------------------------------

    def _check_not_virtual(self, name: str) -> None:
        mux = self._vchans.get(name)
        if mux is not None:
            raise BusMismatchError(
                f"channel {name!r} is a virtual channel of mux {mux!r}: name its mux"
            )

    def _add_virtual(
        self,
        client_id: int,
        request: wire.CreatePublisherRequest | wire.CreateSubscriberRequest,
        flags: int,
    ) -> tuple[ServerChannel, int]:
        """Register a user of virtual channel `request.channel` on mux `request.mux`,
        creating the mux (with the request's parameters) and the vchan on first use; the
        mux and the user id. Raises BusMismatchError when a name is taken by the other
        kind (a channel of its own, a mux, another mux's vchan) or the parameters
        disagree with the mux's, BusLimitError past MAX_VCHANS vchans, and as
        add_publisher does."""
        name, mux_name = request.channel, request.mux
        if isinstance(request, wire.CreatePublisherRequest) and request.retirement:
            raise BusMismatchError(
                f"{name!r} is a virtual channel of mux {mux_name!r}: its publishers cannot "
                "ask for retirement notifications (publish on the mux itself)"
            )
        if name == mux_name:
            raise BusMismatchError(f"virtual channel {name!r} cannot be its own mux")
        if name in self._channels:
            raise BusMismatchError(
                f"channel {name!r} is not a virtual channel, but a vchan of mux {mux_name!r} "
                "was asked for"
            )
        owner = self._vchans.get(name)
        if owner is not None and owner != mux_name:
            raise BusMismatchError(
                f"virtual channel {name!r} is on mux {owner!r}, not {mux_name!r}"
            )
        self._check_not_virtual(mux_name)
        publisher = isinstance(request, wire.CreatePublisherRequest)
        metadata = request.metadata_bytes if isinstance(request, wire.CreatePublisherRequest) else 0
        target = self._channels.get(mux_name)
        if target is None:
            target = self._create(
                mux_name, type_=request.type, num_slots=request.num_slots,
                slot_size=request.slot_size, flags=flags | memory.FLAG_MUX, defined=True,
                metadata_bytes=metadata,
            )  # fmt: skip
        elif not target.mux:
            raise BusMismatchError(f"channel {mux_name!r} is not a mux")
        elif isinstance(request, wire.CreatePublisherRequest):
            self._check_publisher(target, request, flags)
        elif request.type and request.type != target.channel.type:
            raise BusMismatchError(
                f"mux {mux_name!r} has type {target.channel.type!r}, the subscriber's is "
                f"{request.type!r}"
            )
        vchan = target.vchans.get(name)
        try:
            if vchan is None:
                vchan = self._new_vchan(target, name)
            if isinstance(request, wire.CreatePublisherRequest):
                if request.slot_size > target.slot_size():
                    self._check_buffer(mux_name, target.channel.num_slots, request.slot_size)
                    target.channel.grow(request.slot_size)
                user = target.channel.add_publisher(reliable=request.reliable, vchan=vchan)
            else:
                user = target.channel.add_subscriber(
                    reliable=request.reliable, max_active_messages=request.max_active, vchan=vchan
                )
        except BaseException:
            self._forget_vchan_if_unused(target, name)
            self._remove_if_empty(target)
            raise
        target.user_vchans[(publisher, user)] = vchan
        if isinstance(request, wire.CreatePublisherRequest):
            target.reliable_publishers = request.reliable
            target.publisher_owner[user] = client_id
            if request.reliable:
                fd = new_eventfd()
                target.publisher_fds[user] = fd
                target.triggers.set_publisher(user, fd)
        else:
            fd = new_eventfd()
            target.subscriber_owner[user] = client_id
            target.subscriber_fds[user] = fd
            target.triggers.set_subscriber(user, fd)
        self._changed()
        return target, user

    def _new_vchan(self, target: ServerChannel, name: str) -> int:
        used = set(target.vchans.values())
        free = next((v for v in range(memory.MAX_VCHANS) if v not in used), None)
        if free is None:
            raise BusLimitError(
                f"mux {target.name!r} has {memory.MAX_VCHANS} virtual channels, the limit"
            )
        # A reused id starts afresh: nobody uses it (its last user went), so no
        # publisher moves its counter and no subscriber reads its ordinals.
        line = target.channel.vchan_line(free)
        atomics.store_release_u64(target.channel.ccb, line + memory.VCHAN_NEXT_ORDINAL, 0)
        atomics.store_release_u64(target.channel.ccb, line + memory.VCHAN_SUBSCRIBERS, 0)
        target.vchans[name] = free
        self._vchans[name] = target.name
        log.info("vchan created %s", kv(mux=target.name, vchan=name, id=free))
        return free

    def _forget_vchan_if_unused(self, target: ServerChannel, name: str) -> None:
        vchan = target.vchans.get(name)
        if vchan is None or vchan in target.user_vchans.values():
            return
        del target.vchans[name]
        self._vchans.pop(name, None)

    def _release_vchan(self, target: ServerChannel, key: tuple[bool, int]) -> None:
        vchan = target.user_vchans.pop(key, None)
        if vchan is None:
            return
        name = next(n for n, v in target.vchans.items() if v == vchan)
        self._forget_vchan_if_unused(target, name)

    def remove_publisher(self, client_id: int, name: str, user: int) -> None:
        """Unregister publisher `user` of channel `name`, which `client_id` registered:
        its unpublished slot is freed and waiting subscribers woken; the channel goes
        when it was the last user. Raises BusNotFoundError."""
        target = self.get(name)
        if target.publisher_owner.get(user) != client_id:
            raise BusNotFoundError(f"no publisher {user} of this client on channel {name!r}")
        self._drop_publisher(target, user)
        self._remove_if_empty(target)
        self._changed()

    def remove_subscriber(self, client_id: int, name: str, user: int) -> None:
        """Unregister subscriber `user` of channel `name`: its holds and unread marks are
        released and waiting reliable publishers woken. Raises BusNotFoundError."""
        target = self.get(name)
        if target.subscriber_owner.get(user) != client_id:
            raise BusNotFoundError(f"no subscriber {user} of this client on channel {name!r}")
        self._drop_subscriber(target, user)
        self._remove_if_empty(target)
        self._changed()

    def _drop_publisher(self, target: ServerChannel, user: int) -> None:
        del target.publisher_owner[user]
        target.channel.remove_publisher(user, target.triggers)
        self._release_vchan(target, (True, user))
        target.triggers.remove_publisher(user)
        fd = target.publisher_fds.pop(user, None)
        if fd is not None:
            os.close(fd)
        target.triggers.remove_retirer(user)
        for end in target.retirement_fds.pop(user, ()):
            os.close(end)

    def _drop_subscriber(self, target: ServerChannel, user: int) -> None:
        del target.subscriber_owner[user]
        target.channel.remove_subscriber(user, target.triggers)
        self._release_vchan(target, (False, user))
        target.triggers.remove_subscriber(user)
        os.close(target.subscriber_fds.pop(user))

    def drop_client(self, client_id: int) -> int:
        """Remove every user `client_id` registered (its connection closed, or its process
        died): holds released, BUSY slots freed, waiters woken, empty channels removed;
        how many users went."""
        count = 0
        for target in list(self._channels.values()):
            for user in [u for u, c in target.publisher_owner.items() if c == client_id]:
                self._drop_publisher(target, user)
                count += 1
            for user in [u for u, c in target.subscriber_owner.items() if c == client_id]:
                self._drop_subscriber(target, user)
                count += 1
            self._remove_if_empty(target)
        if count:
            self._changed()
        return count

    def _remove_if_empty(self, target: ServerChannel) -> None:
        if not target.empty or self._channels.get(target.name) is not target:
            return
        del self._channels[target.name]
        for vchan in target.vchans:
            self._vchans.pop(vchan, None)
        target.vchans.clear()
        self._close(target)
        log.info("channel removed %s", kv(channel=target.name, id=target.channel_id))

    def _close(self, target: ServerChannel) -> None:
        channel_id = target.channel_id
        for fd in [*target.subscriber_fds.values(), *target.publisher_fds.values()]:
            os.close(fd)
        target.subscriber_fds.clear()
        target.publisher_fds.clear()
        for pipe in target.retirement_fds.values():
            for end in pipe:
                os.close(end)
        target.retirement_fds.clear()
        try:
            target.channel.close()
        except BusError as exc:  # a view still exported: it stays mapped, files still go
            log.warning("channel closed with views %s", kv(channel=target.name, error=exc))
        target.fds.close()
        try:
            remove_channel_files(self.location, channel_id)
        except BusStorageError as exc:
            log.warning("channel files not removed %s", kv(channel=target.name, error=exc))
        self.scb.reset(channel_id)
        self._free_ids.append(channel_id)

    def close(self) -> None:
        """Remove every channel and its files (the server's shutdown)."""
        for target in list(self._channels.values()):
            del self._channels[target.name]
            self._close(target)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # -- descriptors ----------------------------------------------------------------------

    def grant_fds(self, target: ServerChannel, *, publisher: bool, user: int) -> list[Passed]:
        """The descriptors of a grant, each a fresh fd the reply owns: CCB, BCB, the ready
        buffers (up to MAX_GRANTED_BUFFERS), the user's own eventfd, and the eventfds it
        wakes (a publisher: the subscribers'; a subscriber: the reliable publishers').
        Raises BusStorageError if a descriptor cannot be made (none leak)."""
        passed: list[Passed] = []
        try:
            passed.append((wire.FdEntry(role=wire.FdRole.CCB), _dup(target.fds.ccb)))
            passed.append((wire.FdEntry(role=wire.FdRole.BCB), _dup(target.fds.bcb)))
            passed.extend(self._buffer_fds(target))
            own = (target.publisher_fds if publisher else target.subscriber_fds).get(user)
            if own is not None:
                passed.append((wire.FdEntry(role=wire.FdRole.OWN_TRIGGER, id=user), _dup(own)))
            pipe = target.retirement_fds.get(user) if publisher else None
            if pipe is not None:
                entry = wire.FdEntry(role=wire.FdRole.RETIREMENT, id=user)
                passed.append((entry, _dup(pipe[0])))
            if publisher:
                passed.extend(self._trigger_fds(target, subscribers=True, publishers=False))
            else:
                passed.extend(self._trigger_fds(target, subscribers=False, publishers=True))
        except BaseException:
            close_passed(passed)
            raise
        return passed

    def trigger_fds(self, target: ServerChannel) -> list[Passed]:
        """Every subscriber's and reliable publisher's eventfd, as fresh fds."""
        return self._trigger_fds(target, subscribers=True, publishers=True)

    def _trigger_fds(
        self, target: ServerChannel, *, subscribers: bool, publishers: bool
    ) -> list[Passed]:
        passed: list[Passed] = []
        try:
            if subscribers:
                for user, fd in sorted(target.subscriber_fds.items()):
                    entry = wire.FdEntry(role=wire.FdRole.SUBSCRIBER_TRIGGER, id=user)
                    passed.append((entry, _dup(fd)))
            if publishers:
                for user, fd in sorted(target.publisher_fds.items()):
                    entry = wire.FdEntry(role=wire.FdRole.PUBLISHER_TRIGGER, id=user)
                    passed.append((entry, _dup(fd)))
            # Every user lets messages go (a publisher too: it takes over unreported slots).
            for user, (_, write_end) in sorted(target.retirement_fds.items()):
                entry = wire.FdEntry(role=wire.FdRole.RETIRER, id=user)
                passed.append((entry, _dup(write_end)))
        except BaseException:
            close_passed(passed)
            raise
        return passed

    def _buffer_fds(self, target: ServerChannel) -> list[Passed]:
        channel = target.channel
        passed: list[Passed] = []
        try:
            for index in range(min(channel.num_buffers(), MAX_GRANTED_BUFFERS)):
                if index == 0:
                    fd = _dup(target.fds.buffers[0])
                elif channel.slot_size_of(index) == 0:
                    break  # being made by a publisher now: mapped by name when met
                else:
                    path = self.location.buffer_path(channel.channel_id, index)
                    try:
                        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                    except OSError as exc:
                        raise translate_os_error(exc, BusStorageError, f"open {path}") from exc
                passed.append((wire.FdEntry(role=wire.FdRole.BUFFER, id=index), fd))
        except BaseException:
            close_passed(passed)
            raise
        return passed

    # -- reports --------------------------------------------------------------------------

    def vchan_infos(self, target: ServerChannel) -> list[wire.ChannelInfo]:
        """One record per virtual channel of a mux (none for another channel), by id."""
        channel = target.channel
        records = []
        for name, vchan in sorted(target.vchans.items(), key=lambda item: item[1]):
            users = [key for key, v in target.user_vchans.items() if v == vchan]
            pubs = [u for p, u in users if p]
            subs = [u for p, u in users if not p]
            record = wire.ChannelInfo(
                name=name, type=channel.type, channel_id=channel.channel_id,
                num_slots=channel.num_slots, slot_size=target.slot_size(),
                flags=wire.CHANNEL_VIRTUAL, publishers=len(pubs),
                reliable_publishers=sum(1 for u in pubs if u in target.publisher_fds),
                subscribers=len(subs),
                reliable_subscribers=sum(1 for u in subs if channel.is_reliable_subscriber(u)),
                mux=target.name,
            )  # fmt: skip
            records.append(record)
        return records

    def info(self, target: ServerChannel) -> wire.ChannelInfo:
        """What the channel is and who uses it."""
        channel = target.channel
        reliable_subs = sum(1 for u in target.subscriber_owner if channel.is_reliable_subscriber(u))
        return wire.ChannelInfo(
            name=target.name, type=channel.type, channel_id=channel.channel_id,
            num_slots=channel.num_slots, slot_size=target.slot_size(), flags=channel.flags,
            publishers=len(target.publisher_owner),
            reliable_publishers=len(target.publisher_fds),
            subscribers=len(target.subscriber_owner), reliable_subscribers=reliable_subs,
        )  # fmt: skip

    def stats(self, target: ServerChannel) -> wire.ChannelStatsRecord:
        """The channel's statistics now."""
        now = target.channel.stats()
        return wire.ChannelStatsRecord(
            name=target.name, channel_id=target.channel_id, messages=now.messages,
            bytes=now.bytes, max_message_bytes=now.max_message_bytes, drops=now.drops,
            last_ordinal=now.last_ordinal, num_buffers=now.num_buffers,
            slot_size=now.slot_size, publishers=now.publishers, subscribers=now.subscribers,
        )  # fmt: skip


def _dup(fd: int) -> int:
    try:
        return os.dup(fd)
    except OSError as exc:
        raise translate_os_error(exc, BusStorageError, "duplicate a descriptor") from exc


def close_passed(passed: list[Passed]) -> None:
    """Close the descriptors of a reply (sent, or never to be)."""
    for _, fd in passed:
        try:
            os.close(fd)
        except OSError:
            pass
    passed.clear()
