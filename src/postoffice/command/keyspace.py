"""The store-backed keys of the command server: GET, SET, DEL, MGET, MSET, EXISTS, SCAN, DBSIZE.

With `--store HOST:PORT` the command server forwards these commands to a store server
over one pipelined connection (`core.storeclient.AsyncClient`), so redis-cli, redis-py
and redis-benchmark read and write the store. One connection keeps every client's
requests in the order they were sent, which is what makes a pipelined SET then GET see
its own write. A handler here does not wait: it returns a `Deferred` (the store's future
and how to turn its response into a reply) and the connection writes the reply when it is
done, in request order.

While the store is unreachable, these commands fail at once with `-TRYAGAIN` and a
background task reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

from postoffice.command.errors import CommandError, StoreUnavailableError
from postoffice.core.errors import BrokenError, PostOfficeError
from postoffice.core.resp import NIL, OK, Array, Bulk, Error, Integer, Reply, bulk
from postoffice.core.runtime import Backoff
from postoffice.core.storeclient import AsyncClient
from postoffice.core.storewire import (
    MAX_SCAN_LIMIT,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PutRequest,
    Request,
    Response,
    ScanRequest,
    StatsRequest,
    Status,
    StoreProtocolError,
    decode_delete_body,
    decode_error_body,
    decode_scan_body,
    decode_stats_body,
    next_start,
)

log = logging.getLogger(__name__)

DEFAULT_SCAN_COUNT: Final = 10  # Redis's default COUNT
_GLOB_CHARS: Final = b"*?[\\"
_OK: Final = Status.OK
_NOT_FOUND: Final = Status.NOT_FOUND


@final
@dataclass(slots=True)
class Deferred:
    """A reply that is not ready yet: `finish(future.result())` makes it.

    `finish` may raise a PostOfficeError, which becomes an error reply.
    """

    future: asyncio.Future[Any]
    finish: Callable[[Any], Reply]


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') to a pair; ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@final
class Keyspace:
    """One pipelined connection to a store server, kept open by a reconnect loop."""

    def __init__(self, host: str, port: int, *, backoff: Backoff | None = None) -> None:
        self.host = host
        self.port = port
        self.requests = 0
        self.unavailable = 0
        self.reconnects = 0
        self.cursors = Cursors()
        self._client: AsyncClient | None = None
        self._backoff = backoff or Backoff(initial_s=0.05, max_s=2.0)
        self._last_error = "not connected yet"
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def __repr__(self) -> str:
        state = "up" if self.connected else "down"
        return f"<Keyspace store={self.host}:{self.port} {state}>"

    @property
    def address(self) -> str:
        """HOST:PORT of the store."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """Whether requests can be sent now."""
        return self._client is not None and self._client.is_open

    def start(self) -> None:
        """Start the connect/reconnect loop (on the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._maintain())

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected, at most `timeout_s`; whether it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        return self.connected

    async def close(self) -> None:
        """Stop reconnecting and close the connection (requests in flight fail)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _maintain(self) -> None:
        while True:
            try:
                client = await AsyncClient.connect(self.host, self.port)
            except BrokenError as exc:
                self._last_error = str(exc)
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._client = client
            self._connected.set()
            self._backoff.reset()
            log.info("store connected store=%s", self.address)
            await asyncio.shield(client.closed)
            self._connected.clear()
            self.reconnects += 1
            self._last_error = "connection lost"
            log.warning("store connection lost store=%s; reconnecting", self.address)

    def _open_client(self) -> AsyncClient:
        """The live store connection, counting the request; StoreUnavailableError if none."""
        client = self._client
        if client is None or not client.is_open:
            self.unavailable += 1
            raise StoreUnavailableError(f"store at {self.address} unavailable: {self._last_error}")
        self.requests += 1
        return client

    def _refusal(self, exc: StoreProtocolError | BrokenError) -> CommandError:
        """What a failed submit means to the client: a bad request, or the store gone."""
        if isinstance(exc, StoreProtocolError):
            return CommandError(str(exc))
        self.unavailable += 1
        return StoreUnavailableError(f"store at {self.address} unavailable: {exc}")

    def submit(self, request: Request) -> asyncio.Future[Response]:
        """Send `request`; StoreUnavailableError when there is no connection."""
        client = self._open_client()
        try:
            return client.submit(request)
        except (StoreProtocolError, BrokenError) as exc:
            raise self._refusal(exc) from None

    def submit_get(self, key: bytes) -> asyncio.Future[Response]:
        """`submit(GetRequest(key=key))`, without making the request (GET's hot path)."""
        client = self._open_client()
        try:
            return client.submit_get(key)
        except (StoreProtocolError, BrokenError) as exc:
            raise self._refusal(exc) from None

    def submit_put(self, key: bytes, value: bytes) -> asyncio.Future[Response]:
        """`submit(PutRequest(key=key, value=value))`, without making the request."""
        client = self._open_client()
        try:
            return client.submit_put(key, value)
        except (StoreProtocolError, BrokenError) as exc:
            raise self._refusal(exc) from None

    def submit_all(self, requests: Sequence[Request]) -> asyncio.Future[list[Response]]:
        """Send several requests; one future for all their responses, in order."""
        futures = [self.submit(request) for request in requests]
        return asyncio.gather(*futures)


class KeyspaceServer(Protocol):
    """What the handlers here need of the server."""

    @property
    def keyspace(self) -> Keyspace | None: ...


def _keyspace(server: KeyspaceServer) -> Keyspace:
    keyspace = server.keyspace
    if keyspace is None:
        raise CommandError("no store is configured (start the server with --store HOST:PORT)")
    return keyspace


def _ok_or_raise(response: Response) -> Response:
    if response.status is Status.OK or response.status is Status.NOT_FOUND:
        return response
    message = decode_error_body(response.body)
    if response.status is Status.SHUTTING_DOWN or response.status is Status.BUSY:
        raise StoreUnavailableError(f"store {response.status.name.lower()}: {message}")
    raise CommandError(f"store refused the request ({response.status.name}): {message}")


def _value(response: Response) -> Reply:
    status = response.status
    if status is _OK:
        return Bulk(data=response.body)  # the body is bytes: no need for bulk()'s check
    if status is _NOT_FOUND:
        return NIL
    _ok_or_raise(response)  # a refusal: raises
    return bulk(response.body)


def _stored(response: Response) -> Reply:
    if response.status is not _OK:
        _ok_or_raise(response)
    return OK


# -- handlers ------------------------------------------------------------------------------


def cmd_get(server: KeyspaceServer, client: object, args: list[bytes]) -> Reply | Deferred:
    """GET key: the value, or nil."""
    return Deferred(_keyspace(server).submit_get(args[1]), _value)


def cmd_set(server: KeyspaceServer, client: object, args: list[bytes]) -> Reply | Deferred:
    """SET key value: stored (durably when the store's durability is `always`)."""
    if len(args) > 3:
        raise CommandError(
            "SET options (EX, PX, EXAT, PXAT, NX, XX, KEEPTTL, GET) are not supported: "
            "the store keeps values without expiry"
        )
    return Deferred(_keyspace(server).submit_put(args[1], args[2]), _stored)


def _count_deleted(responses: list[Response]) -> Reply:
    return Integer(value=sum(decode_delete_body(_ok_or_raise(r).body) for r in responses))


def cmd_del(server: KeyspaceServer, client: object, args: list[bytes]) -> Reply | Deferred:
    """DEL key [key ...]: how many of the keys existed."""
    requests = [DeleteRequest(key=key) for key in args[1:]]
    return Deferred(_keyspace(server).submit_all(requests), _count_deleted)


def _count_found(responses: list[Response]) -> Reply:
    return Integer(value=sum(_ok_or_raise(r).status is Status.OK for r in responses))


def cmd_exists(server: KeyspaceServer, client: object, args: list[bytes]) -> Reply | Deferred:
    """EXISTS key [key ...]: how many of the keys exist (a key named twice counts twice)."""
    requests = [GetRequest(key=key) for key in args[1:]]
    return Deferred(_keyspace(server).submit_all(requests), _count_found)


def _values(responses: list[Response]) -> Reply:
    return Array(items=tuple(_value(r) for r in responses))


def cmd_mget(server: KeyspaceServer, client: object, args: list[bytes]) -> Reply | Deferred:
    """MGET key [key ...]: the values, nil for a missing key."""
    requests = [GetRequest(key=key) for key in args[1:]]
    return Deferred(_keyspace(server).submit_all(requests), _values)


def cmd_mset(server: KeyspaceServer, client: object, args: list[bytes]) -> Reply | Deferred:
    """MSET key value [key value ...]: all stored at once, in one atomic batch."""
    if len(args) % 2 == 0:
        raise CommandError("wrong number of arguments for 'mset' command")
    ops = tuple(PutRequest(key=args[i], value=args[i + 1]) for i in range(1, len(args), 2))
    return Deferred(_keyspace(server).submit(BatchRequest(ops=ops)), _stored)


def _dbsize(response: Response) -> Reply:
    stats = decode_stats_body(_ok_or_raise(response).body)
    keys = stats.get("engine_keys", 0)
    return Integer(value=keys if isinstance(keys, int) else 0)


def cmd_dbsize(server: KeyspaceServer, client: object, args: list[bytes]) -> Reply | Deferred:
    """DBSIZE: how many keys the store holds."""
    return Deferred(_keyspace(server).submit(StatsRequest()), _dbsize)


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
    cut = min((i for i, byte in enumerate(pattern) if byte in _GLOB_CHARS), default=len(pattern))
    return pattern[:cut]


def glob_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """A matcher for Redis's glob: * ? [abc] [^abc] [a-z] and backslash escapes."""
    translated = bytearray()
    i = 0
    while i < len(pattern):
        byte = pattern[i : i + 1]
        if byte == b"\\" and i + 1 < len(pattern):
            translated += b"[" + pattern[i + 1 : i + 2] + b"]"
            i += 2
            continue
        if byte == b"[" and pattern[i + 1 : i + 2] == b"^":
            translated += b"[!"
            i += 2
            continue
        translated += byte
        i += 1
    text = bytes(translated).decode("latin-1")
    return lambda key: fnmatch.fnmatchcase(key.decode("latin-1"), text)


def _scan_options(args: list[bytes]) -> tuple[bytes | None, int]:
    pattern: bytes | None = None
    count = DEFAULT_SCAN_COUNT
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
            if value.lower() != b"string":  # the store holds strings only
                count = 0
        else:
            raise CommandError("syntax error")
        i += 2
    return pattern, count


def cmd_scan(server: KeyspaceServer, client: object, args: list[bytes]) -> Reply | Deferred:
    """SCAN cursor [MATCH pattern] [COUNT n] [TYPE string]: a page of keys and the next cursor.

    As in Redis, COUNT is how many keys to look at, so a page filtered by MATCH may be
    short or empty while the cursor is not 0.
    """
    keyspace = _keyspace(server)
    cursors = keyspace.cursors
    start = cursors.resolve(args[1])
    pattern, count = _scan_options(args)
    if count == 0:
        return Array(items=(bulk(b"0"), Array(items=())))
    prefix = literal_prefix(pattern) if pattern is not None else b""
    matches: Callable[[bytes], bool] | None = None
    if pattern is not None:
        # Without glob characters the pattern names one key; else filter the page.
        matches = pattern.__eq__ if prefix == pattern else glob_matcher(pattern)
    request = ScanRequest(prefix=prefix or None, start=start, limit=count)

    def page(response: Response) -> Reply:
        scanned = decode_scan_body(_ok_or_raise(response).body)
        keys = [key for key, _ in scanned.items if matches is None or matches(key)]
        return Array(
            items=(bulk(cursors.issue(next_start(scanned))), Array(items=tuple(map(bulk, keys))))
        )

    return Deferred(keyspace.submit(request), page)


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
    "Cursors",
    "Deferred",
    "Keyspace",
    "cmd_dbsize",
    "cmd_del",
    "cmd_exists",
    "cmd_get",
    "cmd_mget",
    "cmd_mset",
    "cmd_scan",
    "cmd_set",
    "glob_matcher",
    "literal_prefix",
    "parse_address",
    "settle",
]
