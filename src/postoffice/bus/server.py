"""The bus server: a Unix control socket that creates channels and passes their fds.

Bus server layer, one thread: `BusServer` accepts clients on the loop, serves their
requests through the Registry, cleans up after a client whose connection closes (a
kill -9 included), publishes the channel directory and statistics as bus channels, and
removes every file it made at shutdown, and those a crashed server left, at start-up.
The server is not in the data path: messages go through shared memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Final, assert_never, final

from postoffice.bus import memory, wire
from postoffice.bus.blocks import (
    BusLocation,
    SystemControlBlock,
    remove_session_files,
    unix_address,
)
from postoffice.bus.bridge import Network
from postoffice.bus.config import BusConfig
from postoffice.bus.connection import BusConnection
from postoffice.bus.errors import (
    BusError,
    BusLimitError,
    BusMismatchError,
    BusStorageError,
)
from postoffice.bus.plugins import PluginHost, ReadyEvent, RegistryWatch
from postoffice.bus.publisher import Publisher
from postoffice.bus.registry import SERVER_CLIENT, Passed, Registry, ServerChannel
from postoffice.bus.wire import DIRECTORY_CHANNEL, RESERVED_PREFIX, STATS_CHANNEL
from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.errors import os_errors, translate_os_error
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: Room for 31 subscribers of one message each (the admission rule: 1 + 2 x 31 + 1).
_OWN_SLOTS: Final = 64
_OWN_SLOT_BYTES: Final = 4096
_LISTEN_BACKLOG: Final = 128
_SWEEP_S: Final = 0.5
_UCRED: Final = struct.Struct("3i")
_SESSION_FILE: Final = re.compile(rf"{memory.FILE_PREFIX}\.([0-9a-f]{{16}})\.")


@final
class BusServer:
    """Serves `config` until shut down. `startup()` takes the socket's lock, removes what
    crashed servers left, creates the session (its lock, its SCB) and listens;
    `shutdown()` undoes it all. Raises BusStorageError when another server holds the
    socket or the files cannot be made."""

    def __init__(self, config: BusConfig, *, clock: Clock = MONOTONIC) -> None:
        self.config = config
        self.socket_path = config.socket_path.absolute()
        self._clock = clock
        self.location: BusLocation | None = None
        self.registry: Registry | None = None
        self._scb: SystemControlBlock | None = None
        self._scb_fd: int | None = None
        self._listener: socket.socket | None = None
        self._socket_lock: IO[bytes] | None = None
        self._session_lock: IO[bytes] | None = None
        self._connections: dict[int, BusConnection] = {}
        self._next_client = SERVER_CLIENT + 1
        self._tasks: list[asyncio.Task[None]] = []
        self._own: dict[str, Publisher] = {}
        self._directory_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stale_removed = 0
        #: Discovery and bridges (None with --local), plugins, and what they are told.
        self.network: Network | None = None
        self.plugins = PluginHost(config.plugins)
        self._watch = RegistryWatch()

    def __repr__(self) -> str:
        session = None if self.location is None else self.location.session
        return f"<BusServer {self.socket_path} session={session} clients={len(self._connections)}>"

    @property
    def addresses(self) -> Mapping[str, tuple[str, int]]:
        """The control socket, as a listener whose port is 0; discovery and the bridge
        listener unless --local."""
        network = {} if self.network is None else self.network.addresses
        return {"bus": (str(self.socket_path), 0), **network}

    # -- lifecycle ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Lock the socket, clean up stale sessions, create this one, listen."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.plugins.load()
        shm_dir = self.config.shm_dir.absolute()
        if not shm_dir.is_dir():
            raise BusStorageError(f"shared-memory directory {shm_dir} does not exist")
        with os_errors(BusStorageError, f"create {self.socket_path.parent}"):
            self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._socket_lock = _try_lock(Path(f"{self.socket_path}.lock"), create=True)
        if self._socket_lock is None:
            raise BusStorageError(f"another bus server serves {self.socket_path}")
        self.stale_removed = remove_stale_sessions(shm_dir)
        location = BusLocation.new(shm_dir)
        self.location = location
        self._session_lock = _lock_session(location)
        self._scb, self._scb_fd = SystemControlBlock.create(location)
        self.registry = Registry(
            location, self._scb, max_channels=self.config.max_channels,
            max_buffer_bytes=self.config.max_buffer_bytes,
            default_num_slots=self.config.default_num_slots,
            default_slot_size=self.config.default_slot_size,
            on_change=self._directory_changed,
        )  # fmt: skip
        for name in (DIRECTORY_CHANNEL, STATS_CHANNEL):
            self._own[name] = self._own_publisher(name)
        self._listen(loop)
        if not self.config.local:
            self.network = Network(self.config, lambda: self.registry, clock=self._clock)
            await self.network.start()
        self._tasks.append(asyncio.ensure_future(self._publish_stats()))
        self._tasks.append(asyncio.ensure_future(self._sweep()))
        self._publish_directory()
        self.plugins.ready(
            ReadyEvent(
                socket=str(self.socket_path), session=location.session,
                addresses={} if self.network is None else self.network.addresses,
            )
        )  # fmt: skip
        self._observe()
        log.info(
            "bus serving %s",
            kv(socket=self.socket_path, session=location.session, shm_dir=shm_dir,
               stale_files_removed=self.stale_removed, local=self.config.local),
        )  # fmt: skip

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        path = str(self.socket_path)
        with os_errors(BusStorageError, f"listen on {path}"):
            # Ours to replace: we hold its lock, so whoever made it is gone.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with unix_address(self.socket_path) as address:
                    listener.bind(address)
                os.chmod(path, 0o600)
                listener.listen(_LISTEN_BACKLOG)
                listener.setblocking(False)
            except BaseException:
                listener.close()
                raise
        self._listener = listener
        loop.add_reader(listener.fileno(), self._accept)

    async def shutdown(self) -> None:
        """Stop accepting, close every client (cleaning up after each), remove every
        channel and every file of the session, unlink the socket. Safe after a failed
        start-up."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.network is not None:
            await self.network.stop()
            self.network = None
        if self._listener is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
        for conn in list(self._connections.values()):
            conn.close()
        for publisher in self._own.values():
            publisher.close()
        self._own.clear()
        if self.registry is not None:
            self.registry.close()
            self.registry = None
        if self._scb is not None:
            self._scb.close()
            self._scb = None
        if self._scb_fd is not None:
            os.close(self._scb_fd)
            self._scb_fd = None
        if self.location is not None:
            try:
                removed = remove_session_files(self.location)
            except BusStorageError as exc:
                log.warning("session files not removed %s", kv(error=exc))
            else:
                log.info("bus stopped %s", kv(session=self.location.session, removed=removed))
        for lock in (self._session_lock, self._socket_lock):
            if lock is not None:
                lock.close()
        self._session_lock = self._socket_lock = None

    # -- clients --------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        assert self._loop is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the next client may fare better
                log.warning("accept failed %s", kv(error=exc))
                return
            if len(self._connections) >= self.config.max_clients:
                _refuse(
                    sock,
                    BusLimitError(
                        f"the bus server has {len(self._connections)} clients, the limit "
                        f"(--max-clients) is {self.config.max_clients}"
                    ),
                )
                continue
            client_id = self._next_client
            self._next_client += 1
            conn = BusConnection(
                sock, self, client_id=client_id, peer_pid=_peer_pid(sock), loop=self._loop,
                max_output_bytes=self.config.max_output_bytes, clock=self._clock,
            )  # fmt: skip
            self._connections[client_id] = conn
            log.debug("client connected %s", kv(client=client_id, pid=conn.peer_pid))

    def connection_closed(self, conn: BusConnection) -> None:
        """Remove everything the client registered (its process may be dead)."""
        self._connections.pop(conn.client_id, None)
        if self.registry is None:
            return
        removed = self.registry.drop_client(conn.client_id)
        log.info(
            "client gone %s",
            kv(client=conn.client_id, pid=conn.peer_pid, name=conn.client_name, users=removed),
        )

    def handle(self, conn: BusConnection, request: wire.Request) -> tuple[wire.Reply, list[Passed]]:
        """Serve one request of `conn`. Raises BusError (answered as an ERROR)."""
        registry = self.registry
        assert registry is not None
        assert self.location is not None
        match request:
            case wire.InitRequest():
                conn.initialized(request.client_name)
                assert self._scb_fd is not None
                passed = [(wire.FdEntry(role=wire.FdRole.SCB), _dup(self._scb_fd))]
                reply: wire.Reply = wire.InitReply(
                    session=self.location.session, client_id=conn.client_id,
                    directory=str(self.location.directory), fds=(passed[0][0],),
                )  # fmt: skip
                return reply, passed
            case wire.CreatePublisherRequest():
                _check_not_reserved(request.channel, "a publisher")
                target, user = registry.add_publisher(conn.client_id, request)
                return self._grant(conn, target, user, publisher=True)
            case wire.CreateSubscriberRequest():
                if request.channel.startswith(RESERVED_PREFIX):
                    registry.get(request.channel)  # only the server's own exist there
                target, user = registry.add_subscriber(conn.client_id, request)
                return self._grant(conn, target, user, publisher=False)
            case wire.RemovePublisherRequest():
                registry.remove_publisher(conn.client_id, request.channel, request.user_id)
                return wire.OkReply(), []
            case wire.RemoveSubscriberRequest():
                registry.remove_subscriber(conn.client_id, request.channel, request.user_id)
                return wire.OkReply(), []
            case wire.GetTriggersRequest():
                target = registry.get(request.channel)
                passed = registry.trigger_fds(target)
                fds = tuple(entry for entry, _ in passed)
                return wire.TriggersReply(channel_id=target.channel_id, fds=fds), passed
            case wire.GetChannelInfoRequest():
                records = []
                for chosen in self._chosen(request.channel):
                    records.append(registry.info(chosen))
                    if not request.channel:
                        records.extend(registry.vchan_infos(chosen))
                # One reply holds MAX_RECORDS: with many vchans the last ones are left out.
                infos = tuple(records[: wire.MAX_RECORDS])
                return wire.ChannelInfoReply(channels=infos), []
            case wire.GetChannelStatsRequest():
                stats = tuple(registry.stats(t) for t in self._chosen(request.channel))
                return wire.ChannelStatsReply(channels=stats), []
            case wire.ReopenSubscriberRequest():
                target = registry.reopen_subscriber(
                    conn.client_id, request.channel, request.user_id
                )
                return registry.grant(target, publisher=False, user=request.user_id)
            case _:
                assert_never(request)

    def _chosen(self, name: str) -> list[ServerChannel]:
        assert self.registry is not None
        if name:
            return [self.registry.get(name)]
        return list(self.registry.channels())

    def _grant(
        self, conn: BusConnection, target: ServerChannel, user: int, *, publisher: bool
    ) -> tuple[wire.Reply, list[Passed]]:
        registry = self.registry
        assert registry is not None
        try:
            passed = registry.grant_fds(target, publisher=publisher, user=user)
        except BaseException:
            if publisher:
                registry.remove_publisher(conn.client_id, target.name, user)
            else:
                registry.remove_subscriber(conn.client_id, target.name, user)
            raise
        channel = target.channel
        reply = wire.GrantReply(
            publisher=publisher, channel_id=channel.channel_id, user_id=user,
            num_slots=channel.num_slots, slot_size=target.slot_size(), flags=channel.flags,
            type=channel.type, fds=tuple(entry for entry, _ in passed),
        )  # fmt: skip
        log.info(
            "user registered %s",
            kv(client=conn.client_id, channel=target.name, user=user,
               kind="publisher" if publisher else "subscriber"),
        )  # fmt: skip
        return reply, passed

    # -- the server's own channels --------------------------------------------------------

    def _own_publisher(self, name: str) -> Publisher:
        assert self.registry is not None
        self.registry.reserve(name)
        request = wire.CreatePublisherRequest(
            channel=name, type="json", slot_size=_OWN_SLOT_BYTES, num_slots=_OWN_SLOTS
        )
        target, user = self.registry.add_publisher(SERVER_CLIENT, request)
        return Publisher(target.channel, user, triggers=target.triggers)

    def _observe(self) -> None:
        """Tell the bridges and the plugins that channels or users changed."""
        if self.network is not None:
            self.network.changed()
        if self.plugins.enabled and self._loop is not None:
            events = self._watch.changes(self.registry)
            if events:
                self._loop.call_soon(self.plugins.dispatch, events)

    def _directory_changed(self) -> None:
        self._observe()
        if self._directory_due or self._loop is None or not self._own:
            return
        self._directory_due = True
        self._loop.call_soon(self._publish_directory)

    def _publish_directory(self) -> None:
        self._directory_due = False
        registry = self.registry
        if registry is None or DIRECTORY_CHANNEL not in self._own:
            return
        body = {"channels": [_info_json(registry.info(t)) for t in registry.channels()]}
        self._publish_own(DIRECTORY_CHANNEL, body)

    async def _publish_stats(self) -> None:
        while True:
            registry = self.registry
            if registry is not None:
                body = {"channels": [_stats_json(registry.stats(t)) for t in registry.channels()]}
                self._publish_own(STATS_CHANNEL, body)
            await asyncio.sleep(self.config.stats_interval_s)

    def _publish_own(self, name: str, body: Mapping[str, object]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            self._own[name].publish_bytes(data)
        except BusError as exc:
            log.warning("own channel not published %s", kv(channel=name, error=exc))

    async def _sweep(self) -> None:
        """Close clients whose request stays partial past request_timeout_s."""
        timeout = self.config.request_timeout_s
        while True:
            await asyncio.sleep(_SWEEP_S if timeout == 0 else min(_SWEEP_S, timeout / 2))
            if timeout == 0:
                continue
            now = self._clock()
            for conn in list(self._connections.values()):
                since = conn.partial_since
                if since is not None and now - since > timeout:
                    log.info(
                        "client request timed out %s",
                        kv(client=conn.client_id, pid=conn.peer_pid, timeout_s=timeout),
                    )
                    conn.close()


# -- helpers ----------------------------------------------------------------------------


def _check_not_reserved(name: str, what: str) -> None:
    if name.startswith(RESERVED_PREFIX):
        raise BusMismatchError(
            f"channel {name!r} is under {RESERVED_PREFIX!r}, the server's own: {what} "
            "cannot be created there"
        )


def _info_json(info: wire.ChannelInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "type": info.type,
        "id": info.channel_id,
        "num_slots": info.num_slots,
        "slot_size": info.slot_size,
        "fixed_size": bool(info.flags & wire.CHANNEL_FIXED_SIZE),
        "checksum": bool(info.flags & wire.CHANNEL_CHECKSUM),
        "publishers": info.publishers,
        "reliable_publishers": info.reliable_publishers,
        "subscribers": info.subscribers,
        "reliable_subscribers": info.reliable_subscribers,
    }


def _stats_json(stats: wire.ChannelStatsRecord) -> dict[str, object]:
    return {
        "name": stats.name,
        "id": stats.channel_id,
        "messages": stats.messages,
        "bytes": stats.bytes,
        "max_message_bytes": stats.max_message_bytes,
        "drops": stats.drops,
        "last_ordinal": stats.last_ordinal,
        "num_buffers": stats.num_buffers,
        "slot_size": stats.slot_size,
        "publishers": stats.publishers,
        "subscribers": stats.subscribers,
    }


def _dup(fd: int) -> int:
    with os_errors(BusStorageError, "duplicate the scb descriptor"):
        return os.dup(fd)


def _try_lock(path: Path, *, create: bool) -> IO[bytes] | None:
    """`path` opened and flocked exclusively, or None when another process holds it (or,
    without `create`, when it does not exist). Raises BusStorageError."""
    try:
        handle = path.open("a+b") if create else path.open("rb")
    except FileNotFoundError:
        if create:
            raise BusStorageError(f"cannot create lock file {path}") from None
        return None
    except OSError as exc:
        raise translate_os_error(exc, BusStorageError, f"open {path}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except OSError as exc:
        handle.close()
        raise translate_os_error(exc, BusStorageError, f"lock {path}") from exc
    return handle


def session_lock_path(location: BusLocation) -> Path:
    """`po-bus.<session>.lock`: held by the session's server for its whole life."""
    return location.directory / f"{memory.FILE_PREFIX}.{location.session}.lock"


def _lock_session(location: BusLocation) -> IO[bytes]:
    """Create and hold the session's lock file. It is locked under a hidden name and
    then renamed, so a server starting at the same moment never sees it unlocked."""
    final_path = session_lock_path(location)
    hidden = final_path.with_name(f".{final_path.name}.tmp")
    handle = _try_lock(hidden, create=True)
    if handle is None:
        raise BusStorageError(f"cannot lock {hidden}")
    with os_errors(BusStorageError, f"rename {hidden}"):
        os.replace(hidden, final_path)
    return handle


def remove_stale_sessions(directory: Path) -> int:
    """Remove the files of every session in `directory` whose server is gone (its lock
    file missing or not held); how many files went. Raises BusStorageError."""
    with os_errors(BusStorageError, f"list {directory}"):
        names = os.listdir(directory)
    sessions = {m.group(1) for n in names if (m := _SESSION_FILE.match(n))}
    removed = 0
    for session in sorted(sessions):
        location = BusLocation(directory=directory, session=session)
        lock = _try_lock(session_lock_path(location), create=False)
        if lock is None and session_lock_path(location).exists():
            continue  # a live server holds it
        try:
            count = remove_session_files(location)
        finally:
            if lock is not None:
                lock.close()
        removed += count
        log.info("stale session removed %s", kv(session=session, files=count))
    return removed


def _peer_pid(sock: socket.socket) -> int:
    try:
        pid, _, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except (OSError, AttributeError):
        return 0
    return int(pid)


def _refuse(sock: socket.socket, exc: BusError) -> None:
    """Tell a client it cannot be served (request id 0), then close it."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(wire.encode_reply(0, wire.ErrorReply(code=exc.wire_code, message=str(exc))))
    sock.close()
    log.warning("client refused %s", kv(error=exc))
