"""Settings of the bus server, with their defaults and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postoffice.bus import memory
from postoffice.bus.blocks import DEFAULT_DIRECTORY
from postoffice.core.config import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    check_range,
    check_settings,
    setting,
)
from postoffice.core.errors import ConfigError

#: The channels the server itself publishes (the directory and the statistics) take ids
#: of the 1024 the SCB has room for.
RESERVED_CHANNELS: Final = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class BusConfig:
    """Everything `postoffice bus serve` can be told; see docs/protocols/bus.md.

    The control socket is `<data_dir>/run/bus.sock` unless `socket` names another; the
    shared-memory files go to `shm_dir`. A field declared with `setting()` has a flag of
    `bus serve`. Raises ConfigError naming the bad field.
    """

    socket: Path | None = setting(
        None,
        help="The control socket (a Unix domain socket).",
        default_text="<data-dir>/run/bus.sock",
        path="file",
    )
    shm_dir: Path = setting(
        DEFAULT_DIRECTORY, help="Where the shared-memory files go (a tmpfs).", path="dir"
    )
    data_dir: Path = setting(DEFAULT_DATA_DIR, help=f"State directory (also ${DATA_DIR_ENV}).")
    local: bool = setting(
        False,
        help="Serve this machine only (no discovery, no bridge: the only mode built so far).",
    )
    max_clients: int = setting(
        1024, help="Client connections at once; more are refused.", low=1, high=65536
    )
    max_channels: int = setting(
        memory.MAX_CHANNELS - RESERVED_CHANNELS,
        help="Channels at once (the server's own two not counted).",
        low=1,
        high=memory.MAX_CHANNELS - RESERVED_CHANNELS,
    )
    max_buffer_bytes: int = setting(
        1 << 30,
        help="Largest buffer file a request may make (num_slots x slot_size).",
        flag="--max-buffer-size",
        unit="bytes",
        low=4096,
        high=memory.MAX_BUFFER_BYTES,
    )
    default_num_slots: int = setting(
        16, help="Slots of a channel created without num_slots.", low=1, high=memory.MAX_SLOTS
    )
    default_slot_size: int = setting(
        256,
        help="Slot size of a channel created without one.",
        flag="--default-slot-size",
        unit="bytes",
        low=1,
        high=memory.MAX_SLOT_BYTES,
    )
    request_timeout_s: float = setting(
        10.0,
        help="Close a client whose request has not arrived whole this many seconds after "
        "its first byte (0: never).",
        unit="seconds",
        low=0,
        high=3600,
    )
    stats_interval_s: float = setting(
        2.0,
        help="Seconds between two messages on /bus/stats.",
        unit="seconds",
        low=0.05,
        high=3600,
    )
    #: Unsent replies one client may owe before it is closed (it does not read).
    max_output_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        check_settings(self)
        check_range("max_output_bytes", self.max_output_bytes, 64 * 1024, 1 << 30)
        if self.default_num_slots * self.default_slot_size > self.max_buffer_bytes:
            raise ConfigError(
                f"setting 'default_num_slots' x 'default_slot_size' "
                f"({self.default_num_slots} x {self.default_slot_size}) exceeds "
                f"'max_buffer_bytes' {self.max_buffer_bytes}"
            )

    @property
    def socket_path(self) -> Path:
        """Where the control socket listens."""
        return self.socket or self.data_dir / "run" / "bus.sock"
