"""The bus's shared-memory files: a session's SCB, a channel's CCB, BCB and buffers.

What the bus server will call to create and remove them, and how any process maps them
from the descriptors it was given (or, for a buffer added by a resize, from its name).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, final

from postoffice.bus import memory
from postoffice.bus.errors import BusConfigError, BusLayoutError, BusStorageError
from postoffice.bus.native import atomics
from postoffice.core.errors import translate_os_error

#: Where the files go unless told otherwise: a tmpfs on Linux.
DEFAULT_DIRECTORY: Final = Path("/dev/shm")
#: Only the user who runs the bus may map its memory.
FILE_MODE: Final = 0o600
_CREATE_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


@dataclass(frozen=True, slots=True, kw_only=True)
class BusLocation:
    """Where one session's files live: a directory and the session's 16 hex digits."""

    directory: Path = DEFAULT_DIRECTORY
    session: str

    def __post_init__(self) -> None:
        memory.check_session(self.session)

    @classmethod
    def new(cls, directory: Path = DEFAULT_DIRECTORY) -> BusLocation:
        """A location with a fresh random session id."""
        return cls(directory=directory, session=secrets.token_hex(8))

    def scb_path(self) -> Path:
        """The session's SCB file."""
        return self.directory / memory.scb_name(self.session)

    def ccb_path(self, channel_id: int) -> Path:
        """A channel's CCB file."""
        return self.directory / memory.ccb_name(self.session, channel_id)

    def bcb_path(self, channel_id: int) -> Path:
        """A channel's BCB file."""
        return self.directory / memory.bcb_name(self.session, channel_id)

    def buffer_path(self, channel_id: int, buffer_index: int) -> Path:
        """One of a channel's buffer files."""
        return self.directory / memory.buffer_name(self.session, channel_id, buffer_index)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSpec:
    """What a channel is created with. Raises BusConfigError for a bad field."""

    channel_id: int
    name: str
    type: str = ""
    num_slots: int
    slot_size: int
    #: A fixed-size channel never grows: a larger message is refused.
    fixed_size: bool = False
    #: Every message carries a checksum (CRC-32 by default) of its metadata and
    #: payload, checked when it is read.
    checksum: bool = False
    #: Each slot's metadata capacity, 0..MAX_METADATA_BYTES.
    metadata_bytes: int = 0
    #: Made by a subscriber: its first publisher may reshape it.
    placeholder: bool = False
    #: A multiplexer: its storage is shared by virtual channels (the CCB has their table).
    mux: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.num_slots <= memory.MAX_SLOTS:
            raise BusConfigError(f"num_slots must be 1..{memory.MAX_SLOTS}, got {self.num_slots}")
        if not 1 <= self.slot_size <= memory.MAX_SLOT_BYTES:
            raise BusConfigError(
                f"slot_size must be 1..{memory.MAX_SLOT_BYTES} bytes, got {self.slot_size}"
            )
        if self.num_slots * self.slot_size > memory.MAX_BUFFER_BYTES:
            raise BusConfigError(
                f"num_slots {self.num_slots} x slot_size {self.slot_size} exceeds the "
                f"buffer limit of {memory.MAX_BUFFER_BYTES} bytes"
            )
        try:
            self.header().pack()
        except BusLayoutError as exc:
            raise BusConfigError(str(exc)) from exc

    @property
    def flags(self) -> int:
        """The CCB's flags word for this spec."""
        return (
            (memory.FLAG_FIXED_SIZE if self.fixed_size else 0)
            | (memory.FLAG_CHECKSUM if self.checksum else 0)
            | (memory.FLAG_PLACEHOLDER if self.placeholder else 0)
            | (memory.FLAG_MUX if self.mux else 0)
        )

    def header(self) -> memory.CcbHeader:
        """The CCB header this spec writes."""
        return memory.CcbHeader(
            channel_id=self.channel_id,
            num_slots=self.num_slots,
            flags=self.flags,
            name=self.name,
            type=self.type,
            metadata_bytes=self.metadata_bytes,
        )


@final
@dataclass(slots=True, kw_only=True)
class ChannelFds:
    """Open descriptors of a channel's CCB, BCB and first buffer, as the server passes
    them; owned by whoever holds this, and closed by `close()` (mapping them dups them)."""

    ccb: int
    bcb: int
    buffers: tuple[int, ...]
    closed: bool = field(default=False)

    def all(self) -> list[int]:
        """Every descriptor, in the order the wire will carry them."""
        return [self.ccb, self.bcb, *self.buffers]

    def close(self) -> None:
        """Close every descriptor (once)."""
        if self.closed:
            return
        self.closed = True
        for fd in self.all():
            try:
                os.close(fd)
            except OSError:
                pass


#: sun_path holds 108 bytes with its NUL: a longer socket path is reached through a
#: descriptor of its directory (/proc/self/fd/N/name), which the kernel resolves.
_SUN_PATH_BYTES: Final = 107


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for bind/connect that names `path` even past sun_path's 107 bytes.
    Raises BusStorageError if the directory of a long path cannot be opened."""
    text = str(path)
    if len(os.fsencode(text)) <= _SUN_PATH_BYTES:
        yield text
        return
    try:
        dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise translate_os_error(exc, BusStorageError, f"open {path.parent}") from exc
    try:
        yield f"/proc/self/fd/{dir_fd}/{path.name}"
    finally:
        os.close(dir_fd)


def _create_file(path: Path, size: int) -> int:
    """Create `path` (it must not exist) of `size` zero bytes; its descriptor."""
    try:
        fd = os.open(path, _CREATE_FLAGS, FILE_MODE)
    except OSError as exc:
        raise translate_os_error(exc, BusStorageError, f"create {path}") from exc
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        _unlink(path)
        raise translate_os_error(exc, BusStorageError, f"size {path} to {size} bytes") from exc
    return fd


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise translate_os_error(exc, BusStorageError, f"remove {path}") from exc
    return True


def map_fd(fd: int, what: str, minimum: int = 0) -> mmap.mmap:
    """Map all of `fd` shared and writable; BusStorageError if it cannot be, or is
    smaller than `minimum` bytes."""
    try:
        size = os.fstat(fd).st_size
        if size < minimum:
            raise BusLayoutError(f"{what} is {size} bytes, expected at least {minimum}")
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise translate_os_error(exc, BusStorageError, f"map {what}") from exc


def create_buffer_file(location: BusLocation, channel_id: int, index: int, size: int) -> int:
    """Create buffer `index` of a channel, `size` bytes; its descriptor."""
    return _create_file(location.buffer_path(channel_id, index), size)


def create_channel(location: BusLocation, spec: ChannelSpec) -> ChannelFds:
    """Create a channel's CCB, BCB and first buffer (none may exist yet) and return their
    descriptors. Raises BusStorageError (the files made so far are removed)."""
    made: list[Path] = []
    fds: list[int] = []
    header = spec.header()
    try:
        for path, size in (
            (location.ccb_path(spec.channel_id), header.size()),
            (location.bcb_path(spec.channel_id), memory.BCB_BYTES),
            (location.buffer_path(spec.channel_id, 0), spec.num_slots * spec.slot_size),
        ):
            fds.append(_create_file(path, size))
            made.append(path)
        ccb, bcb, buffer = fds
        with mmap.mmap(bcb, memory.BCB_BYTES) as block:
            block[: memory.BCB_HEADER.size] = memory.BCB_HEADER.pack(
                memory.BCB_MAGIC, memory.VERSION, 0
            )
            atomics.store_release_u64(block, memory.bcb_slot_size_offset(0), spec.slot_size)
            atomics.store_release_u64(block, memory.BCB_NUM_BUFFERS, 1)
        packed = header.pack()
        with mmap.mmap(ccb, header.size()) as block:
            block[: len(packed)] = packed
            for subscriber in range(memory.MAX_SUBSCRIBERS):
                atomics.store_release_u64(
                    block, memory.vchan_filter_offset(subscriber), memory.ALL_BITS
                )
            for publisher in range(memory.MAX_PUBLISHERS):
                atomics.store_release_u64(
                    block, memory.publisher_vchan_offset(publisher), memory.ALL_BITS
                )
        return ChannelFds(ccb=ccb, bcb=bcb, buffers=(buffer,))
    except BaseException as exc:
        for fd in fds:
            os.close(fd)
        for path in made:
            _unlink(path)
        if isinstance(exc, OSError):
            raise translate_os_error(exc, BusStorageError, "set up channel files") from exc
        raise


def remove_channel_files(location: BusLocation, channel_id: int) -> int:
    """Unlink a channel's files (mappings stay valid until unmapped); how many went."""
    prefix = memory.ccb_name(location.session, channel_id).removesuffix("ccb")
    removed = 0
    try:
        names = [n for n in os.listdir(location.directory) if n.startswith(prefix)]
    except OSError as exc:
        raise translate_os_error(exc, BusStorageError, f"list {location.directory}") from exc
    for name in names:
        removed += _unlink(location.directory / name)
    return removed


def remove_session_files(location: BusLocation) -> int:
    """Unlink every file of the session (SCB and all channels); how many went."""
    prefix = memory.scb_name(location.session).removesuffix("scb")
    try:
        names = [n for n in os.listdir(location.directory) if n.startswith(prefix)]
    except OSError as exc:
        raise translate_os_error(exc, BusStorageError, f"list {location.directory}") from exc
    return sum(_unlink(location.directory / name) for name in names)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelCounters:
    """One channel's line of the SCB, read at one moment."""

    publishers: int
    reliable_publishers: int
    subscribers: int
    reliable_subscribers: int
    updates: int
    resizes: int
    remaps: int


@final
class SystemControlBlock:
    """A session's SCB mapped: per-channel counters that the server writes (each change
    bumps `updates`, so a client can tell that something changed) and clients read."""

    def __init__(self, block: mmap.mmap, location: BusLocation) -> None:
        self._block = block
        self.location = location

    @classmethod
    def create(cls, location: BusLocation) -> tuple[SystemControlBlock, int]:
        """Create the session's SCB file; the mapped block and the descriptor to pass."""
        fd = _create_file(location.scb_path(), memory.SCB_BYTES)
        block = map_fd(fd, str(location.scb_path()), memory.SCB_BYTES)
        block[: memory.SCB_HEADER.size] = memory.SCB_HEADER.pack(
            memory.SCB_MAGIC, memory.VERSION, memory.MAX_CHANNELS, bytes.fromhex(location.session)
        )
        return cls(block, location), fd

    @classmethod
    def open(cls, fd: int, directory: Path = DEFAULT_DIRECTORY) -> SystemControlBlock:
        """Map an SCB from its descriptor; BusLayoutError if it is not one."""
        block = map_fd(fd, "scb", memory.SCB_BYTES)
        magic, version, channels, session = memory.SCB_HEADER.unpack_from(block)
        if magic != memory.SCB_MAGIC or version != memory.VERSION:
            block.close()
            raise BusLayoutError(f"not an scb of version {memory.VERSION}")
        if channels != memory.MAX_CHANNELS:
            block.close()
            raise BusLayoutError(f"scb has {channels} channels, expected {memory.MAX_CHANNELS}")
        return cls(block, BusLocation(directory=directory, session=session.hex()))

    def counters(self, channel_id: int) -> ChannelCounters:
        """The counters of one channel."""
        values = {
            name: atomics.load_acquire_u64(self._block, memory.scb_counter(channel_id, name))
            for name in memory.SCB_FIELDS
        }
        return ChannelCounters(**values)

    def load(self, channel_id: int, name: str) -> int:
        """One counter of one channel (a single atomic load)."""
        return atomics.load_acquire_u64(self._block, memory.scb_counter(channel_id, name))

    def add(self, channel_id: int, name: str, delta: int) -> None:
        """Move counter `name` of a channel by `delta` (negative to lower it), then bump
        the channel's update sequence."""
        if name not in memory.SCB_FIELDS or name == "updates":
            raise BusConfigError(f"no scb counter {name!r}")
        offset = memory.scb_counter(channel_id, name)
        atomics.fetch_add_u64(self._block, offset, delta % (1 << 64))
        atomics.fetch_add_u64(self._block, memory.scb_counter(channel_id, "updates"), 1)

    def reset(self, channel_id: int) -> None:
        """Zero a channel's counters (its id is reused), then bump its update sequence."""
        for name in memory.SCB_FIELDS:
            if name != "updates":
                atomics.store_release_u64(self._block, memory.scb_counter(channel_id, name), 0)
        atomics.fetch_add_u64(self._block, memory.scb_counter(channel_id, "updates"), 1)

    def close(self) -> None:
        """Unmap the block."""
        self._block.close()

    def __repr__(self) -> str:
        return f"<SystemControlBlock session={self.location.session}>"
