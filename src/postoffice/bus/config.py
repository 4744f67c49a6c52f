"""Settings of the bus server, with their defaults and validation."""

from __future__ import annotations

import ipaddress
import re
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

_MODULE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _ipv4(key: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(f"setting {key!r}: expected an IPv4 address, got {value!r}") from None


def parse_peer(text: str) -> tuple[str, int]:
    """`HOST:PORT` (HOST an IPv4 address, PORT 1..65535) as a tuple. Raises ConfigError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"setting 'peers': expected HOST:PORT, got {text!r}")
    return _ipv4("peers", host), int(port)


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
        False, help="Serve this machine only: no discovery, no bridge to other servers."
    )
    interface: str = setting(
        "127.0.0.1",
        help="IPv4 address discovery (UDP) and the bridge (TCP) listen on.",
        metavar="ADDR",
    )
    discovery_port: int = setting(
        0, help="UDP port of discovery (0: any free one, named in the ready file).", low=0,
        high=65535,
    )  # fmt: skip
    bridge_port: int = setting(
        0, help="TCP port bridges connect to (0: any free one).", low=0, high=65535
    )
    #: Where discovery datagrams go: every peer's discovery address, HOST:PORT.
    peers: tuple[str, ...] = setting(
        (), help="Discovery addresses of the other servers (--peer HOST:PORT).", flag=None
    )
    advertise_interval_s: float = setting(
        5.0,
        help="Seconds between two gratuitous advertisements of the local channels.",
        unit="seconds",
        low=0.05,
        high=3600,
    )
    bridge_handshake_timeout_s: float = setting(
        10.0,
        help="Seconds a bridge has to connect and send its SUBSCRIBED, either way.",
        unit="seconds",
        low=0.05,
        high=3600,
    )
    #: Python modules loaded at start, whose callbacks see the server's events.
    plugins: tuple[str, ...] = setting((), help="Plugin modules (--plugin MODULE).", flag=None)
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
        _ipv4("interface", self.interface)
        for peer in self.peers:
            parse_peer(peer)
        for module in self.plugins:
            if not _MODULE.fullmatch(module):
                raise ConfigError(f"setting 'plugins': {module!r} is not a module name")

    @property
    def peer_addresses(self) -> tuple[tuple[str, int], ...]:
        """The peers as (IPv4 address, port)."""
        return tuple(parse_peer(peer) for peer in self.peers)

    @property
    def socket_path(self) -> Path:
        """Where the control socket listens."""
        return self.socket or self.data_dir / "run" / "bus.sock"
