"""A channel in a private directory of /dev/shm, with its users and their eventfds."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from postoffice.bus import (
    BusLocation,
    Channel,
    ChannelFds,
    ChannelSpec,
    Publisher,
    Subscriber,
    Triggers,
    create_channel,
    new_eventfd,
    new_retirement_pipe,
)

SHM = Path("/dev/shm")

#: Every directory shm_directory made; the `shm_directories_removed` fixture (autouse,
#: tests/bus/fixtures.py) removes them after each test, however the test ended.
MADE: list[Path] = []


def shm_directory() -> Path:
    """A fresh directory on the tmpfs (falls back to the temp dir off Linux tmpfs)."""
    base = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else None
    made = Path(tempfile.mkdtemp(prefix="po-bus-test-", dir=base))
    MADE.append(made)
    return made


@dataclass
class Rig:
    """One channel, opened in this process; users registered through it. A child
    process (forked) calls `reopen()` to map the channel again from the same fds."""

    directory: Path
    location: BusLocation
    fds: ChannelFds
    channel: Channel
    subscriber_fds: dict[int, int] = field(default_factory=dict)
    publisher_fds: dict[int, int] = field(default_factory=dict)
    #: Retirement pipes (read end, write end) of the publishers that asked, by id.
    retirement_fds: dict[int, tuple[int, int]] = field(default_factory=dict)
    users: list[Publisher | Subscriber] = field(default_factory=list)
    shared: Triggers | None = None

    @classmethod
    def make(cls, **spec: object) -> Rig:
        directory = shm_directory()
        location = BusLocation.new(directory)
        settings: dict[str, object] = {"channel_id": 3, "name": "test", "num_slots": 8}
        settings.update(spec)
        settings.setdefault("slot_size", 64)
        fds = create_channel(location, ChannelSpec(**settings))  # type: ignore[arg-type]
        return cls(directory, location, fds, Channel.open(location, fds))

    def triggers(self, channel: Channel | None = None) -> Triggers:
        """The Triggers of this rig's channel, told of every user as it registers (as the
        server will keep them), or for another mapping, Triggers that know every user
        registered so far."""
        if channel is None:
            if self.shared is None:
                self.shared = Triggers(self.channel.ccb)
            return self.shared
        triggers = Triggers(channel.ccb)
        for user, fd in self.subscriber_fds.items():
            triggers.set_subscriber(user, fd)
        for user, fd in self.publisher_fds.items():
            triggers.set_publisher(user, fd)
        for user, (_, write_end) in self.retirement_fds.items():
            triggers.set_retirer(user, write_end)
        return triggers

    def register_publisher(
        self, *, reliable: bool = False, vchan: int = -1, retirement: bool = False
    ) -> int:
        user = self.channel.add_publisher(reliable=reliable, vchan=vchan)
        if reliable:
            self.publisher_fds[user] = new_eventfd()
            self.triggers().set_publisher(user, self.publisher_fds[user])
        if retirement:
            self.retirement_fds[user] = new_retirement_pipe()
            self.triggers().set_retirer(user, self.retirement_fds[user][1])
        return user

    def register_subscriber(
        self, *, reliable: bool = False, max_active: int = 1, vchan: int = -1
    ) -> int:
        user = self.channel.add_subscriber(
            reliable=reliable, max_active_messages=max_active, vchan=vchan
        )
        self.subscriber_fds[user] = new_eventfd()
        self.triggers().set_subscriber(user, self.subscriber_fds[user])
        return user

    def publisher_for(self, user: int, channel: Channel | None = None) -> Publisher:
        """A Publisher for a registered id (on `channel`, by default this rig's)."""
        publisher = Publisher(
            channel or self.channel,
            user,
            triggers=self.triggers(channel),
            eventfd=self.publisher_fds.get(user),
            retirement=self.retirement_fds[user][0] if user in self.retirement_fds else None,
        )
        self.users.append(publisher)
        return publisher

    def subscriber_for(
        self,
        user: int,
        channel: Channel | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> Subscriber:
        subscriber = Subscriber(
            channel or self.channel,
            user,
            triggers=self.triggers(channel),
            eventfd=self.subscriber_fds[user],
            on_drop=on_drop,
        )
        self.users.append(subscriber)
        return subscriber

    def publisher(
        self, *, reliable: bool = False, vchan: int = -1, retirement: bool = False
    ) -> Publisher:
        user = self.register_publisher(reliable=reliable, vchan=vchan, retirement=retirement)
        return self.publisher_for(user)

    def subscriber(
        self,
        *,
        reliable: bool = False,
        max_active: int = 1,
        on_drop: Callable[[int], None] | None = None,
        vchan: int = -1,
    ) -> Subscriber:
        user = self.register_subscriber(reliable=reliable, max_active=max_active, vchan=vchan)
        return self.subscriber_for(user, on_drop=on_drop)

    def reopen(self) -> Channel:
        """The channel mapped again from the rig's descriptors, as another process would."""
        return Channel.open(self.location, self.fds)

    def close(self) -> None:
        for user in self.users:
            user.close()
        self.channel.close()
        self.fds.close()
        for fd in [*self.subscriber_fds.values(), *self.publisher_fds.values()]:
            os.close(fd)
        for pair in self.retirement_fds.values():
            for fd in pair:
                os.close(fd)
        shutil.rmtree(self.directory, ignore_errors=True)
