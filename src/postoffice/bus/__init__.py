"""The bus: shared-memory pub/sub channels. Its public API: the channel library, the
control protocol's codec (`wire`), the server's client (`Client`) and its asyncio helpers
(`aio`). Importing it raises BusUnavailableError when its C extension was not built."""

from __future__ import annotations

from postoffice.bus import aio, wire
from postoffice.bus.aio import AsyncClient
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
from postoffice.bus.client import Client, default_socket_path
from postoffice.bus.errors import (
    BusClosedError,
    BusConfigError,
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
    BusUnavailableError,
    BusUsageError,
    CapacityError,
    ChecksumError,
    MessageSizeError,
    TooManyUsersError,
)
from postoffice.bus.native import atomics
from postoffice.bus.publisher import Publisher
from postoffice.bus.retirement import new_pipe as new_retirement_pipe
from postoffice.bus.subscriber import DropCallback, Message, Subscriber
from postoffice.bus.triggers import Triggers, new_eventfd
from postoffice.bus.wire import (
    DIRECTORY_CHANNEL,
    STATS_CHANNEL,
    ChannelInfo,
    ChannelStatsRecord,
)

__all__ = [
    "DEFAULT_DIRECTORY",
    "DIRECTORY_CHANNEL",
    "STATS_CHANNEL",
    "AsyncClient",
    "BusClosedError",
    "BusConfigError",
    "BusConnectionError",
    "BusError",
    "BusLayoutError",
    "BusLimitError",
    "BusLocation",
    "BusMismatchError",
    "BusNotFoundError",
    "BusProtocolError",
    "BusServerError",
    "BusStateError",
    "BusStorageError",
    "BusUnavailableError",
    "BusUsageError",
    "CapacityError",
    "Channel",
    "ChannelCounters",
    "ChannelFds",
    "ChannelInfo",
    "ChannelSpec",
    "ChannelStats",
    "ChannelStatsRecord",
    "ChecksumError",
    "Client",
    "DropCallback",
    "Message",
    "MessageSizeError",
    "Publisher",
    "Subscriber",
    "SystemControlBlock",
    "TooManyUsersError",
    "Triggers",
    "aio",
    "atomics",
    "create_channel",
    "default_socket_path",
    "new_eventfd",
    "new_retirement_pipe",
    "remove_channel_files",
    "remove_session_files",
    "slots_needed",
    "wire",
]
