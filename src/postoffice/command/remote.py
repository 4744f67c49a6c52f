"""The remote keyspace: the command server's keys on a store server (`--store HOST:PORT`).

Every command is forwarded over one pipelined connection (`store.client.AsyncClient`),
which keeps every client's requests in the order they were sent: that is what makes a
pipelined SET then GET see its own write. A method here does not wait: it returns a
`Deferred` (the store's future and how to turn its response into a reply) and the
connection writes the reply when it is done, in request order.

While the store is unreachable, the commands fail at once with `-TRYAGAIN` and a
background task reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Final, final

from postoffice.command.errors import CommandError, StoreUnavailableError
from postoffice.command.keyspace import (
    REPLY_ITEM_BYTES,
    Answer,
    Cursors,
    Deferred,
    PageMaker,
    reply_too_large,
)
from postoffice.core.errors import BrokenError, PostOfficeError
from postoffice.core.framing import FrameError
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, Reply, bulk
from postoffice.core.runtime import Backoff
from postoffice.store import (
    AsyncClient,
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

_OK: Final = Status.OK
_NOT_FOUND: Final = Status.NOT_FOUND


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') to a pair; ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@final
class RemoteKeyspace:
    """One pipelined connection to a store server, kept open by a reconnect loop."""

    def __init__(self, host: str, port: int, *, backoff: Backoff | None = None) -> None:
        self.host = host
        self.port = port
        self.requests = 0
        self.unavailable = 0
        self.reconnects = 0
        self._cursors = Cursors()
        self._client: AsyncClient | None = None
        self._backoff = backoff or Backoff(initial_s=0.05, max_s=2.0)
        self._last_error = "not connected yet"
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def __repr__(self) -> str:
        state = "up" if self.connected else "down"
        return f"<RemoteKeyspace store={self.host}:{self.port} {state}>"

    @property
    def cursors(self) -> Cursors:
        """The SCAN cursors handed out."""
        return self._cursors

    @property
    def address(self) -> str:
        """HOST:PORT of the store."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """Whether requests can be sent now."""
        return self._client is not None and self._client.is_open

    async def start(self) -> None:
        """Start the connect/reconnect loop (on the running loop); does not wait for it."""
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

    def info(self) -> dict[str, object]:
        """The INFO keyspace section."""
        return {
            "store": self.address,
            "store_connected": int(self.connected),
            "store_requests": self.requests,
            "store_unavailable": self.unavailable,
            "store_reconnects": self.reconnects,
        }

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

    # -- sending -------------------------------------------------------------------------

    def _open_client(self) -> AsyncClient:
        """The live store connection, counting the request; StoreUnavailableError if none."""
        client = self._client
        if client is None or not client.is_open:
            self.unavailable += 1
            raise StoreUnavailableError(f"store at {self.address} unavailable: {self._last_error}")
        self.requests += 1
        return client

    def _refusal(self, exc: StoreProtocolError | FrameError | BrokenError) -> CommandError:
        """What a failed submit means to the client: a bad request, or the store gone.

        A FrameError is a request too large for one frame (a value near the limit, whose
        key and length prefix push the frame over it): nothing was sent.
        """
        if isinstance(exc, StoreProtocolError | FrameError):
            return CommandError(str(exc))
        self.unavailable += 1
        return StoreUnavailableError(f"store at {self.address} unavailable: {exc}")

    def submit(self, request: Request) -> asyncio.Future[Response]:
        """Send `request`; StoreUnavailableError when there is no connection."""
        client = self._open_client()
        try:
            return client.submit(request)
        except (StoreProtocolError, FrameError, BrokenError) as exc:
            raise self._refusal(exc) from None

    def submit_all(self, requests: Sequence[Request]) -> asyncio.Future[list[Response]]:
        """Send several requests; one future for all their responses, in order."""
        futures = [self.submit(request) for request in requests]
        return asyncio.gather(*futures)

    # -- the Keyspace methods ---------------------------------------------------------------

    def get(self, key: bytes) -> Answer:
        """GET: a Deferred of the value or nil (the hot path: no request object)."""
        client = self._open_client()
        try:
            return Deferred(client.submit_get(key), _value)
        except (StoreProtocolError, FrameError, BrokenError) as exc:
            raise self._refusal(exc) from None

    def set(self, key: bytes, value: bytes) -> Answer:
        """SET: a Deferred of OK, once the store has it (durably under `always`)."""
        client = self._open_client()
        try:
            return Deferred(client.submit_put(key, value), _stored)
        except (StoreProtocolError, FrameError, BrokenError) as exc:
            raise self._refusal(exc) from None

    def delete(self, keys: Sequence[bytes]) -> Answer:
        """DEL: a Deferred of how many existed."""
        return Deferred(self.submit_all([DeleteRequest(key=key) for key in keys]), _count_deleted)

    def exists(self, keys: Sequence[bytes]) -> Answer:
        """EXISTS: a Deferred of how many exist."""
        return Deferred(self.submit_all([GetRequest(key=key) for key in keys]), _count_found)

    def mget(self, keys: Sequence[bytes], max_bytes: int) -> Answer:
        """MGET: a Deferred of the values, or of ReplyTooLargeError once they would pass
        `max_bytes`.

        Every GET is sent at once (so the MGET keeps its place among the client's store
        commands), and each value is taken as its answer arrives, so no future holds it:
        past `max_bytes` the values are dropped as they come, and the memory they hold
        stays about `max_bytes` however large the values are.
        """
        client = self._open_client()
        gathered = _Gathered(len(keys), max_bytes)
        try:
            for key in keys:
                client.submit_get(key).add_done_callback(gathered.slot())
        except (StoreProtocolError, FrameError, BrokenError) as exc:
            raise self._refusal(exc) from None
        return Deferred(gathered.done, _values)

    def mset(self, pairs: Sequence[tuple[bytes, bytes]]) -> Answer:
        """MSET: one atomic BATCH; a Deferred of OK."""
        ops = tuple(PutRequest(key=key, value=value) for key, value in pairs)
        return Deferred(self.submit(BatchRequest(ops=ops)), _stored)

    def dbsize(self) -> Answer:
        """DBSIZE: the store's key count, from its STATS."""
        return Deferred(self.submit(StatsRequest()), _dbsize)

    def scan(
        self, prefix: bytes | None, start: bytes | None, limit: int, page: PageMaker
    ) -> Answer:
        """SCAN: one store SCAN of `limit` keys; a Deferred of `page`'s reply."""

        def finish(response: Response) -> Reply:
            scanned = decode_scan_body(_ok_or_raise(response).body)
            return page([key for key, _ in scanned.items], next_start(scanned))

        return Deferred(self.submit(ScanRequest(prefix=prefix, start=start, limit=limit)), finish)


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


def _count_deleted(responses: list[Response]) -> Reply:
    return Integer(value=sum(decode_delete_body(_ok_or_raise(r).body) for r in responses))


def _count_found(responses: list[Response]) -> Reply:
    return Integer(value=sum(_ok_or_raise(r).status is Status.OK for r in responses))


class _Gathered:
    """MGET's answers as they arrive: each value kept, until they would pass `max_bytes`."""

    def __init__(self, count: int, max_bytes: int) -> None:
        self.done: asyncio.Future[list[Reply]] = asyncio.get_running_loop().create_future()
        self.max_bytes = max_bytes
        self.size = REPLY_ITEM_BYTES
        self.replies: list[Reply] = []
        self._count = count
        self._answered = 0
        self._error: BaseException | None = None

    def slot(self) -> Callable[[asyncio.Future[Response]], None]:
        """The done callback of the next GET, in order."""
        index = len(self.replies)
        self.replies.append(NIL)
        return lambda future: self._answer(index, future)

    def _answer(self, index: int, future: asyncio.Future[Response]) -> None:
        self._answered += 1
        if future.cancelled():
            self._error = self._error or CommandError("request cancelled")
        elif (exc := future.exception()) is not None:
            self._error = self._error or exc
        else:
            response = future.result()
            self.size += len(response.body) + REPLY_ITEM_BYTES
            if self.size > self.max_bytes:
                self.replies.clear()  # whatever else comes is only counted
            elif self.replies:
                try:
                    self.replies[index] = _value(response)
                except PostOfficeError as err:
                    self._error = self._error or err
        if self._answered == self._count and not self.done.done():
            if self._error is not None:
                self.done.set_exception(self._error)
            elif self.size > self.max_bytes:
                self.done.set_exception(reply_too_large(self.size, self.max_bytes))
            else:
                self.done.set_result(self.replies)


def _values(replies: list[Reply]) -> Reply:
    return Array(items=replies)


def _dbsize(response: Response) -> Reply:
    stats = decode_stats_body(_ok_or_raise(response).body)
    keys = stats.get("engine_keys", 0)
    return Integer(value=keys if isinstance(keys, int) else 0)


__all__ = ["RemoteKeyspace", "parse_address"]
