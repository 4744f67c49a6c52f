"""The bus: shared-memory pub/sub channels; this is its channel library (the foundation
the bus server and its clients stand on). Importing it raises BusUnavailableError when
its C extension was not built."""

from __future__ import annotations

from postoffice.bus.blocks import (
    DEFAULT_DIRECTORY,
    BusLocation,
    ChannelCounters,
    ChannelFds,
    ChannelSpec,
    SystemControlBlock,
    create_channel,
    remove_channel_files,
    remove_session_files,
)
from postoffice.bus.channel import Channel, ChannelStats, slots_needed
from postoffice.bus.errors import (
    BusClosedError,
    BusConfigError,
    BusError,
    BusLayoutError,
    BusStorageError,
    BusUnavailableError,
    BusUsageError,
    CapacityError,
    ChecksumError,
    MessageSizeError,
    TooManyUsersError,
)
from postoffice.bus.native import atomics
from postoffice.bus.publisher import Publisher
from postoffice.bus.subscriber import DropCallback, Message, Subscriber
from postoffice.bus.triggers import Triggers, new_eventfd

__all__ = [
    "DEFAULT_DIRECTORY",
    "BusClosedError",
    "BusConfigError",
    "BusError",
    "BusLayoutError",
    "BusLocation",
    "BusStorageError",
    "BusUnavailableError",
    "BusUsageError",
    "CapacityError",
    "Channel",
    "ChannelCounters",
    "ChannelFds",
    "ChannelSpec",
    "ChannelStats",
    "ChecksumError",
    "DropCallback",
    "Message",
    "MessageSizeError",
    "Publisher",
    "Subscriber",
    "SystemControlBlock",
    "TooManyUsersError",
    "Triggers",
    "atomics",
    "create_channel",
    "new_eventfd",
    "remove_channel_files",
    "remove_session_files",
    "slots_needed",
]
