"""The store-backed keys of the command server: GET, SET, DEL, MGET, MSET, EXISTS, SCAN, DBSIZE.

The handlers here parse a command's arguments and call the server's `Keyspace`, the seam
between them and where the keys live. It has two implementations: `RemoteKeyspace`
(command/remote.py, `--store HOST:PORT`) forwards each command to a store server over one
pipelined connection and answers with a `Deferred` (the store's future and how to turn its
response into a reply); `EmbeddedKeyspace` (command/embedded.py, `--store-dir DIR`) opens
the store engine in this process, answers reads at once, and answers a durable write with
a `Durable` (its reply and the ticket whose fsync it waits for). The connection keeps
every reply in request order either way.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

from postoffice.command.errors import CommandError, ReplyTooLargeError, StoreUnavailableError
from postoffice.command.layout import KIND_NAMES
from postoffice.command.ops import Op
from postoffice.core.errors import BrokenError, ClosedError, LimitExceeded, PostOfficeError
from postoffice.core.resp import Array, Error, Glob, Reply, bulk
from postoffice.store import MAX_SCAN_LIMIT  # COUNT's limit, in both modes

log = logging.getLogger(__name__)

DEFAULT_SCAN_COUNT: Final = 10  # Redis's default COUNT
#: Steps of glob matching one SCAN call may take (`Glob.cost`), about 10 ms at worst: past
#: it the page ends early and its cursor resumes at the first key not examined. A page
#: always examines one key at least, which costs at most 1024 x 2048 steps, so it moves on.
MAX_MATCH_STEPS: Final = 1 << 21
# The active expiry, as Redis's: every SWEEP_INTERVAL_S look at SWEEP_SAMPLE keys that have
# an expiry and remove the expired ones; go on while more than a quarter of a sample had
# expired, at most SWEEP_ROUNDS samples a cycle, so one cycle's work stays bounded.
SWEEP_INTERVAL_S: Final = 0.1
SWEEP_SAMPLE: Final = 20
SWEEP_ROUNDS: Final = 16


def wall_clock_ms() -> int:
    """Now, in unix milliseconds: what expiries are kept in (EXPIREAT is wall-clock)."""
    return time.time_ns() // 1_000_000


@final
@dataclass(slots=True)
class Deferred:
    """A reply that is not ready yet: `finish(future.result())` makes it.

    `finish` may raise a PostOfficeError, which becomes an error reply.
    """

    future: asyncio.Future[Any]
    finish: Callable[[Any], Reply]


class SyncWaiter(Protocol):
    """A connection holding the replies of durable writes."""

    def synced(self, covered: int, error: BaseException | None) -> bool:
        """Writes up to ticket `covered` are durable (or failed): send what is owed up to
        it; return whether a later write is still owed."""
        ...


class SyncQueue(Protocol):
    """Where a connection waits for the fsync of a durable write (store.GroupCommit)."""

    def wait(self, waiter: SyncWaiter, ticket: int) -> None:
        """Call `waiter.synced(covered, error)` once the write with `ticket` is durable."""
        ...


@final
@dataclass(slots=True)
class Durable:
    """The reply of a write that may leave only once the fsync covering `ticket` is done.

    The connection holds it (and every reply behind it) in its queue and waits in `commit`.
    """

    ticket: int
    reply: Reply
    commit: SyncQueue


#: What a keyspace method (and so a keyspace handler) answers with.
Answer = Reply | Deferred | Durable
#: Makes a SCAN reply from the page's keys and where the next page starts (None: done).
PageMaker = Callable[[Sequence[bytes], "bytes | None"], Reply]
#: Makes a reply from a database's live keys (KEYS, RANDOMKEY).
KeysMaker = Callable[[Sequence[bytes]], Reply]


class Keyspace(Protocol):
    """Where the keys live; what the handlers call. Methods raise CommandError.

    A method answers at once (a Reply), later (a Deferred), or once durable (a Durable).
    """

    @property
    def cursors(self) -> Cursors:
        """The SCAN cursors handed out."""
        ...

    async def start(self) -> None:
        """Open it (phase two of the server's init). Raises PostOfficeError."""
        ...

    async def close(self) -> None:
        """Close it; waits for the syncs asked for."""
        ...

    def info(self) -> dict[str, object]:
        """The INFO keyspace section."""
        ...

    def get(self, key: bytes, db: int = 0) -> Answer:
        """The value of `key` in database `db`, or nil."""
        ...

    def set(self, key: bytes, value: bytes, db: int = 0) -> Answer:
        """Store `value` under `key` (dropping any expiry): OK."""
        ...

    def delete(self, keys: Sequence[bytes], db: int = 0) -> Answer:
        """Delete `keys`: how many existed."""
        ...

    def exists(self, keys: Sequence[bytes], db: int = 0) -> Answer:
        """How many of `keys` exist (a key named twice counts twice)."""
        ...

    def mget(self, keys: Sequence[bytes], max_bytes: int, db: int = 0) -> Answer:
        """The values of `keys`, nil for each missing one; ReplyTooLargeError when the
        reply would pass `max_bytes`, holding no more than about that much meanwhile."""
        ...

    def mset(self, pairs: Sequence[tuple[bytes, bytes]], db: int = 0) -> Answer:
        """Store all `pairs` in one atomic batch (dropping their expiries): OK."""
        ...

    def dbsize(self, db: int = 0) -> Answer:
        """How many keys database `db` holds."""
        ...

    def scan(
        self,
        prefix: bytes | None,
        start: bytes | None,
        limit: int,
        page: PageMaker,
        db: int = 0,
        *,
        kind: int | None = None,
    ) -> Answer:
        """Look at up to `limit` keys of `db` from `start` on, with `prefix`, and show
        those of `kind` (layout.STRING, LIST, SET; None: all): `page(keys, next)`."""
        ...

    def run(self, op: Op) -> Answer:
        """Run a read-modify-write command as one step for the keys it names."""
        ...

    def keys(self, db: int, prefix: bytes, finish: KeysMaker) -> Answer:
        """Every live key of `db` that begins with `prefix`: `finish(keys)`."""
        ...

    def flush(self, db: int | None) -> Answer:
        """Delete every key of `db` (None: of every database): OK."""
        ...

    def swap(self, first: int, second: int) -> Answer:
        """Swap two databases' keys: OK."""
        ...


class KeyspaceClient(Protocol):
    """What the handlers here need of the calling connection: its SELECTed database."""

    db: int


class KeyspaceServer(Protocol):
    """What the handlers here need of the server."""

    @property
    def keyspace(self) -> Keyspace | None: ...

    @property
    def max_reply_bytes(self) -> int:
        """The largest reply one command may make."""
        ...


#: What a reply costs beyond its data, per item, at most: a bulk's `$<len>\r\n` and `\r\n`.
REPLY_ITEM_BYTES: Final = 16


def reply_too_large(size: int, limit: int, *, more: bool = False) -> ReplyTooLargeError:
    """The refusal of a reply of `size` bytes (`more`: at least that many) over `limit`."""
    shown = f"more than {size}" if more else str(size)
    return ReplyTooLargeError(
        f"reply of {shown} bytes exceeds limit {limit} (CONFIG SET max-reply-bytes)"
    )


def keyspace_of(server: KeyspaceServer) -> Keyspace:
    """The server's keyspace; CommandError when it has none."""
    return _keyspace(server)


def _keyspace(server: KeyspaceServer) -> Keyspace:
    keyspace = server.keyspace
    if keyspace is None:
        raise CommandError(
            "no store is configured (start the server with --store HOST:PORT or --store-dir DIR)"
        )
    return keyspace


# -- handlers ------------------------------------------------------------------------------


def cmd_get(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """GET key: the value, or nil."""
    keyspace = server.keyspace  # _keyspace inlined: this is the hot path
    if keyspace is None:
        keyspace = _keyspace(server)  # raises
    return keyspace.get(args[1], client.db)


def cmd_del(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """DEL key [key ...]: how many of the keys existed."""
    return _keyspace(server).delete(args[1:], client.db)


def cmd_exists(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """EXISTS key [key ...]: how many of the keys exist (a key named twice counts twice)."""
    return _keyspace(server).exists(args[1:], client.db)


def cmd_mget(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """MGET key [key ...]: the values, nil for a missing key."""
    return _keyspace(server).mget(args[1:], server.max_reply_bytes, client.db)


def cmd_mset(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """MSET key value [key value ...]: all stored at once, in one atomic batch."""
    if len(args) % 2 == 0:
        raise CommandError("wrong number of arguments for 'mset' command")
    pairs = [(args[i], args[i + 1]) for i in range(1, len(args), 2)]
    return _keyspace(server).mset(pairs, client.db)


def cmd_dbsize(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """DBSIZE: how many keys the SELECTed database holds."""
    return _keyspace(server).dbsize(client.db)


# -- SCAN ------------------------------------------------------------------------------------
# Redis clients treat the cursor as an unsigned 64-bit integer (redis-cli parses it with
# strtoull), and "0" both starts and ends an iteration. Our store continues a scan from a
# key, which does not fit in 64 bits, so the server keeps a bounded table from cursor
# numbers to the key the next page starts at. An iteration only ever needs its latest
# cursor; the oldest entries are forgotten first, and a forgotten cursor is a clear error.


@final
class Cursors:
    """Cursor numbers handed to SCAN clients and the start key each one stands for."""

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._starts: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._next = 0

    def __len__(self) -> int:
        return len(self._starts)

    def issue(self, start: bytes | None) -> bytes:
        """The cursor for a scan that resumes at `start`; b"0" when the iteration is over."""
        if start is None:
            return b"0"
        self._next = self._next % (2**63 - 1) + 1
        self._starts[self._next] = start
        if len(self._starts) > self.capacity:
            self._starts.popitem(last=False)
        return str(self._next).encode()

    def resolve(self, raw: bytes) -> bytes | None:
        """The start key of cursor `raw` (None for "0"); CommandError for an unknown one."""
        if not raw.isdigit() or len(raw) > 20:
            raise CommandError("invalid cursor")
        number = int(raw)
        if number == 0:
            return None
        start = self._starts.get(number)
        if start is None:
            raise CommandError("invalid or expired cursor (start again from 0)")
        return start


def literal_prefix(pattern: bytes) -> bytes:
    """The part of a glob pattern before its first special character."""
    return Glob(pattern).prefix


def glob_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """A matcher for Redis's glob (see `core.resp.globs`); PatternTooLongError when too
    long."""
    return Glob.compile(pattern).matches


def _scan_options(args: list[bytes]) -> tuple[bytes | None, int, int | None]:
    pattern: bytes | None = None
    count = DEFAULT_SCAN_COUNT
    kind: int | None = None
    i = 2
    while i < len(args):
        option = args[i].upper()
        if i + 1 >= len(args):
            raise CommandError("syntax error")
        value = args[i + 1]
        if option == b"MATCH":
            pattern = value
        elif option == b"COUNT":
            if not value.isdigit() or not 1 <= int(value) <= MAX_SCAN_LIMIT:
                raise CommandError(f"COUNT must be an integer from 1 to {MAX_SCAN_LIMIT}")
            count = int(value)
        elif option == b"TYPE":
            named = [k for k, name in KIND_NAMES.items() if name.encode() == value.lower()]
            if not named:  # a kind this server does not keep (hash, zset, stream ...)
                count = 0
            else:
                kind = named[0]
        else:
            raise CommandError("syntax error")
        i += 2
    return pattern, count, kind


def cmd_scan(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """SCAN cursor [MATCH pattern] [COUNT n] [TYPE kind]: a page of keys and the next cursor.

    As in Redis, COUNT is how many keys to look at, so a page filtered by MATCH may be
    short or empty while the cursor is not 0.
    """
    keyspace = _keyspace(server)
    cursors = keyspace.cursors
    start = cursors.resolve(args[1])
    pattern, count, kind = _scan_options(args)
    if count == 0:
        return Array(items=(bulk(b"0"), Array(items=())))
    glob = Glob.compile(pattern) if pattern is not None else None
    prefix = glob.prefix if glob is not None else b""
    max_bytes = server.max_reply_bytes

    def page(keys: Sequence[bytes], resume: bytes | None) -> Reply:
        shown, resume = _page_keys(glob, keys, resume, max_bytes)
        return Array(items=(bulk(cursors.issue(resume)), Array(items=tuple(map(bulk, shown)))))

    return keyspace.scan(prefix or None, start, count, page, client.db, kind=kind)


def _page_keys(
    glob: Glob | None, keys: Sequence[bytes], resume: bytes | None, max_bytes: int
) -> tuple[list[bytes], bytes | None]:
    """The keys of a page to show, and where the next page starts.

    The page ends early, and the next one starts at the first key it did not take, when
    matching would pass MAX_MATCH_STEPS or the reply `max_bytes`; it takes one key at
    least, so an iteration always moves on.
    """
    shown: list[bytes] = []
    steps = 0
    size = 2 * REPLY_ITEM_BYTES  # the outer array and the cursor
    for i, key in enumerate(keys):
        if glob is not None:
            steps += glob.cost(len(key))
            if steps > MAX_MATCH_STEPS and i:
                return shown, key
            if not glob.matches(key):
                continue
        size += len(key) + REPLY_ITEM_BYTES
        if size > max_bytes and i:
            return shown, key
        shown.append(key)
    return shown, resume


def engine_refusal(exc: BaseException) -> CommandError:
    """What an error of the store engine means to a client, worded as a store server's
    refusal of the same request is (so both modes answer alike)."""
    if isinstance(exc, ClosedError):
        return StoreUnavailableError(f"store shutting_down: {exc}")
    if isinstance(exc, LimitExceeded):
        return CommandError(f"store refused the request (TOO_LARGE): {exc}")
    if isinstance(exc, PostOfficeError):
        return CommandError(f"store refused the request (STORAGE): {exc}")
    return CommandError(f"store refused the request (INTERNAL): internal error: {exc!r}")


def settle(deferred: Deferred) -> Reply:
    """The reply of a finished Deferred; store and command errors become error replies."""
    future = deferred.future
    if future.cancelled():
        return Error(code="ERR", message="request cancelled")
    exc = future.exception()
    try:
        if exc is not None:
            raise exc
        return deferred.finish(future.result())
    except BrokenError as err:
        return Error(code=StoreUnavailableError.wire_code, message=f"store unavailable: {err}")
    except PostOfficeError as err:
        return Error(code=err.wire_code, message=str(err))
    except Exception as err:  # a bug must cost one reply, not the connection
        log.exception("store reply failed")
        return Error(code="ERR", message=f"internal error: {err!r}")


__all__ = [
    "REPLY_ITEM_BYTES",
    "SWEEP_INTERVAL_S",
    "SWEEP_ROUNDS",
    "SWEEP_SAMPLE",
    "Answer",
    "Cursors",
    "Deferred",
    "Durable",
    "KeysMaker",
    "Keyspace",
    "KeyspaceClient",
    "cmd_dbsize",
    "cmd_del",
    "cmd_exists",
    "cmd_get",
    "cmd_mget",
    "cmd_mset",
    "cmd_scan",
    "engine_refusal",
    "glob_matcher",
    "keyspace_of",
    "literal_prefix",
    "reply_too_large",
    "settle",
    "wall_clock_ms",
]
