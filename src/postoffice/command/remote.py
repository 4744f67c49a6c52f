"""The remote keyspace: the command server's keys on a store server (`--store HOST:PORT`).

Every command is forwarded over pipelined store connections (`command.pool.StorePool`,
one by default, `--store-connections N`), which keep each key's requests in the order
they were sent: that is what makes a pipelined SET then GET see its own write. A method
here does not wait: it returns a `Deferred` (the store's future and how to turn its
response into a reply) and the connection writes the reply when it is done, in request
order.

While the store is unreachable, the commands fail at once with `-TRYAGAIN` and a
background task reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, final

from postoffice.command.errors import CommandError, StoreUnavailableError
from postoffice.command.keyspace import (
    REPLY_ITEM_BYTES,
    SWEEP_INTERVAL_S,
    SWEEP_ROUNDS,
    SWEEP_SAMPLE,
    Answer,
    Cursors,
    Deferred,
    KeysMaker,
    PageMaker,
    reply_too_large,
    wall_clock_ms,
)
from postoffice.command.layout import (
    DATABASES,
    EXPIRY_PREFIX,
    STRING,
    TYPE_PREFIX,
    base_kind,
    db_ranges,
    decode_deadline,
    decode_key,
    decode_kind,
    encode_deadline,
    encode_key,
    expiry_key,
    is_string,
    type_key,
)
from postoffice.command.ops import (
    KEEP,
    Drop,
    Entry,
    Op,
    Outcome,
    SetExpiry,
    SetValue,
    Write,
    counter,
    deleter,
    plain_value,
    setter,
    writer,
)
from postoffice.command.pool import StorePool
from postoffice.core.errors import BrokenError, PostOfficeError
from postoffice.core.framing import FrameError
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, Reply, bulk
from postoffice.core.runtime import Backoff
from postoffice.store import (
    MAX_BATCH_OPS,
    MAX_BOUND_BYTES,
    MAX_SCAN_LIMIT,
    MAX_VALUE_BYTES,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PutRequest,
    Request,
    Response,
    ScanRequest,
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
    """The keys on a store server, over a pool of pipelined connections kept open by
    reconnect loops."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connections: int = 1,
        backoff: Backoff | None = None,
        now_ms: Callable[[], int] = wall_clock_ms,
        sole_writer: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.requests = 0
        self.unavailable = 0
        self._cursors = Cursors()
        self._pool = StorePool(
            host,
            port,
            connections,
            backoff=lambda: backoff or Backoff(initial_s=0.05, max_s=2.0),
            on_open=self._on_open,
            on_lost=self._on_lost,
        )
        self._now_ms = now_ms
        self._gate = _Gate()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep_from: bytes | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.expired = 0  # keys the active sweep found expired
        # The expiries of the store, read once every connection is open and kept by this
        # server's writes (and what its reads and sweeps see). Trusted once loaded
        # (`_known`), and only when this process is the store's one writer (`sole_writer`;
        # not with --workers N): then
        # a GET of a key not expired by it is one store GET instead of two, and a SET of a
        # key without an expiry one PUT instead of a BATCH that also deletes the expiry key.
        self._expiries: dict[bytes, int] = {}
        self._kinds: dict[bytes, int] = {}  # the type tags, kept as `_expiries` is
        self._known = False
        self.sole_writer = sole_writer
        self._loader: asyncio.Task[None] | None = None

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
        """Whether requests can be sent now (every store connection is open)."""
        return self._pool.is_open

    @property
    def pool(self) -> StorePool:
        """The store connections."""
        return self._pool

    async def start(self) -> None:
        """Start the connect/reconnect loops and the sweep (on the running loop); does not
        wait for them."""
        await self._pool.start()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected, at most `timeout_s`; whether it is."""
        return await self._pool.wait_open(timeout_s)

    async def close(self) -> None:
        """Stop reconnecting and close the connections (requests in flight fail)."""
        for task in (self._sweeper, self._loader, *self._tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweeper = None
        self._loader = None
        await self._pool.close()

    def info(self) -> dict[str, object]:
        """The INFO keyspace section."""
        return {
            "store": self.address,
            "store_connected": int(self.connected),
            "store_requests": self.requests,
            "store_unavailable": self.unavailable,
            "expired_keys": self.expired,
            "store_expiries_known": int(self._known),
            "store_expiries": len(self._expiries),
            **self._pool.stats(),
        }

    def _on_open(self) -> None:
        """Every store connection is open: read the expiries, if this server may trust them."""
        if self.sole_writer and self._loader is None:
            self._loader = asyncio.get_running_loop().create_task(self._load_deadlines())

    def _on_lost(self) -> None:
        """A store connection was lost: another server may write meanwhile, so read again."""
        self._known = False
        if self._loader is not None:
            self._loader.cancel()
            self._loader = None

    async def _load_deadlines(self) -> None:
        """Read every expiry of the store into `_expiries`, then trust it."""
        loaded: dict[bytes, int] = {}
        kinds: dict[bytes, int] = {}
        try:
            for prefix in (EXPIRY_PREFIX, TYPE_PREFIX):
                cursor: bytes | None = prefix
                while cursor is not None:
                    response = await self.submit(
                        ScanRequest(prefix=prefix, start=cursor, limit=MAX_SCAN_LIMIT)
                    )
                    scanned = decode_scan_body(_ok_or_raise(response).body)
                    for key, raw in scanned.items:
                        if prefix == TYPE_PREFIX:
                            kinds[key[len(prefix) :]] = decode_kind(raw)
                        elif (at := decode_deadline(raw)) is not None:
                            loaded[key[len(prefix) :]] = at
                    cursor = next_start(scanned)
        except PostOfficeError as exc:
            log.warning("store expiries not read error=%s; every GET reads its expiry", exc)
            return
        # Writes made while they were read went into the dicts already and are newer.
        loaded.update(self._expiries)
        kinds.update(self._kinds)
        self._expiries = loaded
        self._kinds = {k: v for k, v in kinds.items() if v != STRING}
        self._known = True
        log.info("store expiries read store=%s keys=%d", self.address, len(loaded))

    def _note(self, writes: Sequence[Write]) -> None:
        """Keep `_expiries` as `writes` leave the store (they are being sent now)."""
        deadlines = self._expiries
        for write in writes:
            stored = encode_key(write.db, write.key)
            if isinstance(write, SetValue) and write.kind != STRING:
                self._kinds[stored] = write.kind
            elif not isinstance(write, SetExpiry):
                self._kinds.pop(stored, None)
            at = None if isinstance(write, Drop) else write.expire_at
            if at is None:
                deadlines.pop(stored, None)
            elif at != KEEP:
                deadlines[stored] = at

    # -- sending -------------------------------------------------------------------------

    def _open_client(self) -> StorePool:
        """The store connections, counting the request; StoreUnavailableError if none is
        open (the pool raises BrokenError, nothing sent, when the key's one is down)."""
        pool = self._pool
        if pool.open_count == 0:
            self.unavailable += 1
            raise StoreUnavailableError(f"store at {self.address} unavailable: {pool.last_error}")
        self.requests += 1
        return pool

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

    def get(self, key: bytes, db: int = 0) -> Answer:
        """GET: a Deferred of the value or nil.

        The hot path is one store GET: when no command on the key is under way and the
        key has no expiry that has passed (as this server knows the expiries). Otherwise
        the value and its expiry are read in the key's turn, and an expired key dropped.
        """
        stored = encode_key(db, key, "get key")  # worded as the embedded keyspace words it
        if self._known and not self._gate.holds(stored) and stored not in self._kinds:
            at = self._expiries.get(stored)
            if at is None or at > self._now_ms():
                client = self._open_client()
                try:
                    return Deferred(client.submit_get(stored), _value)
                except (StoreProtocolError, FrameError, BrokenError) as exc:
                    raise self._refusal(exc) from None
        return self.run(Op(reads=((db, key),), compute=plain_value))

    def set(self, key: bytes, value: bytes, db: int = 0) -> Answer:
        """SET: a Deferred of OK, once the store has it (durably under `always`).

        Sent at once when no command on the key is under way (else in the key's turn): one
        store PUT when the key is known to have no expiry, else one BATCH of the value and
        the deletion of its expiry key.
        """
        stored = encode_key(db, key, "put key")  # checked and worded as the embedded keyspace
        if len(value) > MAX_VALUE_BYTES:
            raise CommandError(f"put value of {len(value)} bytes exceeds limit {MAX_VALUE_BYTES}")
        if self._gate.holds(stored):
            return self.run(Op(reads=(), writes_to=((db, key),), compute=setter(db, key, value)))
        client = self._open_client()
        try:
            if self._known and stored not in self._expiries and stored not in self._kinds:
                return Deferred(client.submit_put(stored, value), _stored)
            self._expiries.pop(stored, None)
            self._kinds.pop(stored, None)
            ops = (
                PutRequest(key=stored, value=value),
                DeleteRequest(key=expiry_key(stored)),
                DeleteRequest(key=type_key(stored)),
            )
            return Deferred(client.submit(BatchRequest(ops=ops)), _stored)
        except (StoreProtocolError, FrameError, BrokenError) as exc:
            raise self._refusal(exc) from None

    def delete(self, keys: Sequence[bytes], db: int = 0) -> Answer:
        """DEL: a Deferred of how many existed."""
        return self.run(
            Op(reads=tuple((db, key) for key in keys), compute=deleter(db, keys), any_kind=True)
        )

    def exists(self, keys: Sequence[bytes], db: int = 0) -> Answer:
        """EXISTS: a Deferred of how many exist."""
        return self.run(Op(reads=tuple((db, key) for key in keys), compute=counter, any_kind=True))

    def mget(self, keys: Sequence[bytes], max_bytes: int, db: int = 0) -> Answer:
        """MGET: a Deferred of the values, or of ReplyTooLargeError once they would pass
        `max_bytes`.

        Every GET is sent at once (the values', then their expiries'), so the MGET keeps its
        place among the client's store commands, and each value is taken as its answer
        arrives, so no future holds it: past `max_bytes` the values are dropped as they
        come, and the memory they hold stays about `max_bytes` however large they are.
        """
        stored = [encode_key(db, key, "get key") for key in keys]
        if not self._gate.idle:
            reads = tuple((db, key) for key in keys)
            return self.run(Op(reads=reads, compute=_listed, any_kind=True))
        client = self._open_client()
        # The type tags are read too unless every key is known to be a string.
        typed = not self._known or any(s in self._kinds for s in stored)
        gathered = _Gathered(len(keys), max_bytes, self._now_ms(), typed=typed)
        try:
            for skey in stored:
                client.submit_get(skey).add_done_callback(gathered.slot())
            for i, skey in enumerate(stored):
                client.submit_get(expiry_key(skey)).add_done_callback(gathered.deadline(i))
            if typed:
                for i, skey in enumerate(stored):
                    client.submit_get(type_key(skey)).add_done_callback(gathered.deadline(i))
        except (StoreProtocolError, FrameError, BrokenError) as exc:
            raise self._refusal(exc) from None
        return Deferred(gathered.done, _values)

    def mset(self, pairs: Sequence[tuple[bytes, bytes]], db: int = 0) -> Answer:
        """MSET: a Deferred of OK. One BATCH up to MAX_BATCH_OPS store operations (two a
        pair), else several sent together: the gate keeps this server's readers of the keys
        waiting until all are written, but the store applies each on its own."""
        for i, (key, value) in enumerate(pairs):  # worded as the embedded keyspace
            encode_key(db, key, f"batch op {i} key")
            if len(value) > MAX_VALUE_BYTES:
                raise CommandError(
                    f"batch op {i} value of {len(value)} bytes exceeds limit {MAX_VALUE_BYTES}"
                )
        writes = [SetValue(db=db, key=key, value=value) for key, value in pairs]
        return self.run(
            Op(reads=(), writes_to=tuple((db, k) for k, _ in pairs), compute=writer(writes))
        )

    def dbsize(self, db: int = 0) -> Answer:
        """DBSIZE: the database's key count (expired keys not yet removed included)."""
        return self._wide(self._dbsize(db))

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
        """SCAN: store SCANs of up to `limit` keys of `db`; a Deferred of `page`'s reply
        (only keys of `kind` shown when it is given: their type keys are read)."""
        if prefix is not None and len(prefix) > MAX_BOUND_BYTES - 2:  # room for the db prefix
            raise CommandError(
                f"scan prefix of {len(prefix)} bytes exceeds limit {MAX_BOUND_BYTES - 2}"
            )
        return self._wide(self._scan(prefix or b"", start, limit, page, db, kind))

    # -- read-modify-write ------------------------------------------------------------------

    def run(self, op: Op) -> Answer:
        """Run `op`: its keys' earlier commands first (the gate), then its reads, sent
        together; its compute once they are in; then its writes as one BATCH.

        The command server orders the commands on a key so (not the store): one command
        server is the only writer of its keys that this can serve atomically. Several
        command servers on one store each keep their own order, and an INCR on one may
        then interleave with an INCR on another (docs/compatibility.md).
        """
        client = self._open_client()
        stored = [encode_key(db, key) for db, key in op.reads]
        names = stored + [encode_key(db, key) for db, key in op.writes_to]
        done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        turn = self._gate.enter(names)

        def begin() -> None:
            try:
                reads = [client.submit_get(skey) for skey in stored]
                reads += [client.submit_get(expiry_key(skey)) for skey in stored]
                reads += [client.submit_get(type_key(skey)) for skey in stored]
            except (StoreProtocolError, FrameError, BrokenError) as exc:
                self._finish(done, turn, self._refusal(exc))
                return
            if not reads:
                self._decide(op, [], done, turn)
                return
            asyncio.gather(*reads).add_done_callback(
                lambda answered: self._decided(op, answered, done, turn)
            )

        self._gate.when_clear(turn, begin)
        return Deferred(done, _reply)

    def _decided(
        self,
        op: Op,
        answered: asyncio.Future[list[Response]],
        done: asyncio.Future[Reply],
        turn: _Turn,
    ) -> None:
        if answered.cancelled():
            self._finish(done, turn, CommandError("request cancelled"))
            return
        exc = answered.exception()
        if exc is not None:
            self._finish(done, turn, exc)
            return
        self._decide(op, answered.result(), done, turn)

    def _decide(
        self, op: Op, responses: list[Response], done: asyncio.Future[Reply], turn: _Turn
    ) -> None:
        now = self._now_ms()
        third = len(responses) // 3
        entries: list[Entry | None] = []
        writes: list[Write] = []
        try:
            for (db, key), value_r, expiry_r, type_r in zip(
                op.reads,
                responses[:third],
                responses[third : 2 * third],
                responses[2 * third :],
                strict=True,
            ):
                if _ok_or_raise(value_r).status is not Status.OK:
                    entries.append(None)
                    continue
                at = None
                if _ok_or_raise(expiry_r).status is Status.OK:
                    at = decode_deadline(expiry_r.body)
                    if at is not None:  # perhaps another server's: known from now on
                        self._expiries[encode_key(db, key)] = at
                if at is not None and at <= now:
                    entries.append(None)
                    writes.append(Drop(db=db, key=key))  # lazily, as Redis on access
                    continue
                kind = STRING
                if _ok_or_raise(type_r).status is Status.OK:
                    kind = decode_kind(type_r.body)
                    if kind != STRING:
                        self._kinds[encode_key(db, key)] = kind
                entries.append(Entry(value=value_r.body, expire_at=at, kind=kind))
            outcome = op.decide(entries, now)
            writes.extend(outcome.writes)
            if not writes:
                self._finish(done, turn, outcome.reply)
                return
            self._note(writes)
            batches = [
                self.submit(BatchRequest(ops=tuple(ops[i : i + MAX_BATCH_OPS])))
                for ops in (_batch_ops(writes),)
                for i in range(0, len(ops), MAX_BATCH_OPS)
            ]
        except PostOfficeError as exc:
            self._finish(done, turn, exc)
            return
        reply = outcome.reply

        def written(stored: asyncio.Future[list[Response]]) -> None:
            if stored.cancelled():
                self._finish(done, turn, CommandError("request cancelled"))
            elif (error := stored.exception()) is not None:
                self._finish(done, turn, error)
            else:
                try:
                    for response in stored.result():
                        _stored(response)
                except PostOfficeError as err:
                    self._finish(done, turn, err)
                    return
                self._finish(done, turn, reply)

        asyncio.gather(*batches).add_done_callback(written)

    def _finish(
        self, done: asyncio.Future[Reply], turn: _Turn, result: Reply | BaseException
    ) -> None:
        self._gate.leave(turn)
        if done.done():
            return
        if isinstance(result, BaseException):
            done.set_exception(result)
        else:
            done.set_result(result)

    # -- whole databases: coroutines that hold the gate for every key ----------------------

    def _wide(self, work: Coroutine[Any, Any, Reply]) -> Answer:
        self._open_client()
        turn = self._gate.enter(None)
        done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            await self._gate.wait(turn)
            try:
                result: Reply | BaseException = await work
            except PostOfficeError as exc:
                result = exc
            self._finish(done, turn, result)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Deferred(done, _reply)

    async def _stored_keys(
        self, start: bytes, prefix: bytes | None, end: bytes | None = None
    ) -> list[bytes]:
        keys: list[bytes] = []
        cursor: bytes | None = start
        while cursor is not None:
            response = await self.submit(
                ScanRequest(prefix=prefix, start=cursor, end=end, limit=MAX_SCAN_LIMIT)
            )
            scanned = decode_scan_body(_ok_or_raise(response).body)
            keys.extend(key for key, _ in scanned.items)
            cursor = next_start(scanned)
        return keys

    async def _db_keys(self, db: int, prefix: bytes = b"") -> list[bytes]:
        keys: list[bytes] = []
        for stored_prefix, first in db_ranges(db, prefix):
            keys += await self._stored_keys(max(first or b"", stored_prefix), stored_prefix or None)
        return keys

    async def _deadlines(self, stored: Sequence[bytes]) -> list[int | None]:
        responses = await asyncio.gather(
            *(self.submit(GetRequest(key=expiry_key(skey))) for skey in stored)
        )
        return [
            decode_deadline(r.body) if _ok_or_raise(r).status is Status.OK else None
            for r in responses
        ]

    async def _live(self, stored: list[bytes]) -> list[bytes]:
        now = self._now_ms()
        deadlines = await self._deadlines(stored)
        return [s for s, at in zip(stored, deadlines, strict=True) if at is None or at > now]

    async def _dbsize(self, db: int) -> Reply:
        return Integer(value=len(await self._db_keys(db)))

    async def _scan(
        self,
        prefix: bytes,
        start: bytes | None,
        limit: int,
        page: PageMaker,
        db: int,
        kind: int | None = None,
    ) -> Reply:
        keys: list[bytes] = []
        resume: bytes | None = None
        for stored_prefix, first in db_ranges(db, prefix):
            lo = max(first or b"", stored_prefix)
            if start is not None:
                if start < lo:
                    pass
                elif stored_prefix and not start.startswith(stored_prefix):
                    continue
                else:
                    lo = start
            response = await self.submit(
                ScanRequest(prefix=stored_prefix or None, start=lo, limit=limit + 1 - len(keys))
            )
            keys += [key for key, _ in decode_scan_body(_ok_or_raise(response).body).items]
            if len(keys) > limit:
                break
        if len(keys) > limit:
            del keys[limit:]
            resume = keys[-1] + b"\0"
        live = await self._live(keys)
        if kind is not None:
            tags = await asyncio.gather(*(self.submit(GetRequest(key=type_key(s))) for s in live))
            live = [
                s
                for s, tag in zip(live, tags, strict=True)
                if base_kind(decode_kind(tag.body) if _ok_or_raise(tag).status is _OK else STRING)
                == kind
            ]
        shown = []
        for skey in live:
            decoded = decode_key(skey)
            if decoded is not None and decoded[0] == db:
                shown.append(decoded[1])
        return page(shown, resume)

    def keys(self, db: int, prefix: bytes, finish: KeysMaker) -> Answer:
        """The live keys of `db` beginning with `prefix`: a Deferred of `finish(keys)`."""

        async def work() -> Reply:
            live = await self._live(await self._db_keys(db, prefix))
            return finish([d[1] for d in map(decode_key, live) if d is not None])

        return self._wide(work())

    def flush(self, db: int | None) -> Answer:
        """FLUSHDB / FLUSHALL: every key of `db` (None: all) and its expiry deleted."""

        async def work() -> Reply:
            dbs = range(DATABASES) if db is None else (db,)
            writes: list[Write] = []
            for each in dbs:
                for skey in await self._db_keys(each):
                    decoded = decode_key(skey)
                    if decoded is not None:
                        writes.append(Drop(db=each, key=decoded[1]))
            await self._write(writes)
            return OK

        return self._wide(work())

    def swap(self, first: int, second: int) -> Answer:
        """SWAPDB: both databases read, dropped and written back swapped."""

        async def work() -> Reply:
            writes: list[Write] = []
            moves: list[Write] = []
            for source, target in ((first, second), (second, first)):
                stored = await self._db_keys(source)
                deadlines = await self._deadlines(stored)
                values = await asyncio.gather(*(self.submit(GetRequest(key=s)) for s in stored))
                tags = await asyncio.gather(
                    *(self.submit(GetRequest(key=type_key(s))) for s in stored)
                )
                for skey, at, response, tag in zip(stored, deadlines, values, tags, strict=True):
                    decoded = decode_key(skey)
                    if decoded is None or _ok_or_raise(response).status is not Status.OK:
                        continue
                    writes.append(Drop(db=source, key=decoded[1]))
                    moves.append(
                        SetValue(
                            db=target,
                            key=decoded[1],
                            value=response.body,
                            expire_at=at,
                            kind=decode_kind(_ok_or_raise(tag).body)
                            if tag.status is _OK
                            else STRING,
                        )
                    )
            await self._write(writes + moves)
            return OK

        return self._wide(work())

    async def _write(self, writes: Sequence[Write]) -> None:
        self._note(writes)
        ops = _batch_ops(writes)
        responses = await asyncio.gather(
            *(
                self.submit(BatchRequest(ops=tuple(ops[i : i + MAX_BATCH_OPS])))
                for i in range(0, len(ops), MAX_BATCH_OPS)
            )
        )
        for response in responses:
            _stored(response)

    # -- the active expiry ------------------------------------------------------------------

    async def sweep(self) -> int:
        """One active-expiry cycle over the store's expiry keys, SWEEP_SAMPLE at a time
        from where the last one stopped; each expired key is dropped through `run` (so in
        its turn among the commands on it). Returns how many were found expired."""
        removed = 0
        for _ in range(SWEEP_ROUNDS):
            response = await self.submit(
                ScanRequest(
                    prefix=EXPIRY_PREFIX,
                    start=self._sweep_from or EXPIRY_PREFIX,
                    limit=SWEEP_SAMPLE,
                )
            )
            scanned = decode_scan_body(_ok_or_raise(response).body)
            self._sweep_from = next_start(scanned)
            now = self._now_ms()
            dead = 0
            for key, raw in scanned.items:
                at = decode_deadline(raw)
                decoded = decode_key(key[len(EXPIRY_PREFIX) :])
                if at is not None:  # another server's expiries become known so too
                    self._expiries[key[len(EXPIRY_PREFIX) :]] = at
                if at is None or at > now or decoded is None:
                    continue
                dead += 1
                answer = self.run(Op(reads=(decoded,), compute=_touch, any_kind=True))
                if isinstance(answer, Deferred):
                    await answer.future
            removed += dead
            if self._sweep_from is None or dead * 4 <= len(scanned.items):
                break
        self.expired += removed
        return removed

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            if not self.connected:
                continue
            try:
                await self.sweep()
            except PostOfficeError as exc:
                log.debug("expiry sweep failed error=%s", exc)


def _touch(entries: Sequence[Entry | None], now: int) -> Outcome:
    return Outcome(reply=OK)  # the read alone drops an expired key


def _listed(entries: Sequence[Entry | None], now: int) -> Outcome:
    """MGET's answer: nil for a missing key and for one that is not a string, as Redis's."""
    items = [NIL if e is None or not is_string(e.kind) else Bulk(e.value) for e in entries]
    return Outcome(reply=Array(items=items))


def _reply(reply: Reply) -> Reply:
    return reply


def _batch_ops(writes: Sequence[Write]) -> list[PutRequest | DeleteRequest]:
    """The store operations of `writes`: each key's value and its expiry key, in order."""
    ops: list[PutRequest | DeleteRequest] = []
    for write in writes:
        stored = encode_key(write.db, write.key)
        if isinstance(write, SetValue) and write.kind != STRING:
            ops.append(PutRequest(key=type_key(stored), value=bytes((write.kind,))))
        elif not isinstance(write, SetExpiry):  # another server may have typed it: no guess
            ops.append(DeleteRequest(key=type_key(stored)))
        if isinstance(write, SetValue):
            ops.append(PutRequest(key=stored, value=write.value))
            if write.expire_at is None:
                ops.append(DeleteRequest(key=expiry_key(stored)))
            elif write.expire_at != KEEP:
                ops.append(
                    PutRequest(key=expiry_key(stored), value=encode_deadline(write.expire_at))
                )
        elif isinstance(write, Drop):
            ops.append(DeleteRequest(key=stored))
            ops.append(DeleteRequest(key=expiry_key(stored)))
        elif write.expire_at is None:
            ops.append(DeleteRequest(key=expiry_key(stored)))
        else:
            ops.append(PutRequest(key=expiry_key(stored), value=encode_deadline(write.expire_at)))
    return ops


@final
class _Turn:
    """One command's place in the gate: what it waits for, and what waits for it."""

    __slots__ = ("keys", "passed", "waits")

    def __init__(self, keys: list[bytes] | None, waits: list[asyncio.Future[None]]) -> None:
        self.keys = keys  # None: every key (a whole-database command)
        self.waits = waits
        self.passed: asyncio.Future[None] = asyncio.get_running_loop().create_future()


@final
class _Gate:
    """The order of the commands on each key: a command waits for the earlier ones on any
    key it names; a whole-database command waits for all and holds every later one."""

    def __init__(self) -> None:
        self._tails: dict[bytes, asyncio.Future[None]] = {}
        self._wide: asyncio.Future[None] | None = None

    @property
    def idle(self) -> bool:
        """Whether no command is under way."""
        return not self._tails and self._wide is None

    def holds(self, key: bytes) -> bool:
        """Whether a command on `key` (or on every key) is under way."""
        return self._wide is not None or key in self._tails

    def enter(self, keys: list[bytes] | None) -> _Turn:
        """Take a turn on `keys` (None: on all)."""
        waits: list[asyncio.Future[None]] = []
        if self._wide is not None:
            waits.append(self._wide)
        if keys is None:
            waits.extend(set(self._tails.values()))
            turn = _Turn(None, waits)
            self._tails.clear()
            self._wide = turn.passed
            return turn
        waits.extend({self._tails[k] for k in keys if k in self._tails})
        turn = _Turn(keys, waits)
        for key in keys:
            self._tails[key] = turn.passed
        return turn

    def when_clear(self, turn: _Turn, then: Callable[[], None]) -> None:
        """Call `then` once every command `turn` waits for is done (now, if none is)."""
        pending = [w for w in turn.waits if not w.done()]
        if not pending:
            then()
            return
        asyncio.gather(*pending).add_done_callback(lambda _: then())

    async def wait(self, turn: _Turn) -> None:
        """Return once every command `turn` waits for is done."""
        for waited in turn.waits:
            await waited

    def leave(self, turn: _Turn) -> None:
        """`turn` is done: the commands behind it go on."""
        if turn.passed.done():
            return
        if turn.keys is None:
            if self._wide is turn.passed:
                self._wide = None
        else:
            for key in turn.keys:
                if self._tails.get(key) is turn.passed:
                    del self._tails[key]
        turn.passed.set_result(None)


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
    """MGET's answers as they arrive: each value kept, until they would pass `max_bytes`;
    then each key's expiry, and an expired one's value turned to nil."""

    def __init__(self, count: int, max_bytes: int, now: int, *, typed: bool = False) -> None:
        self.now = now
        self._deadlines = 0
        self._meta = count * (2 if typed else 1)  # expiries, and type tags when `typed`
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
        self._maybe_done()

    def deadline(self, index: int) -> Callable[[asyncio.Future[Response]], None]:
        """The done callback of the GET of key `index`'s expiry or type tag."""
        return lambda future: self._expiry(index, future)

    def _expiry(self, index: int, future: asyncio.Future[Response]) -> None:
        self._deadlines += 1
        if future.cancelled() or future.exception() is not None:
            self._error = self._error or CommandError("request cancelled")
        else:
            response = future.result()
            if response.status is Status.OK and self.replies:
                # a type tag (one byte) of a kind that is not a string, or an expiry
                # (eight bytes) that has passed
                body = response.body
                at = decode_deadline(body)
                tagged = len(body) == 1 and not is_string(decode_kind(body))
                if tagged or (at is not None and at <= self.now):
                    self.replies[index] = NIL
        self._maybe_done()

    def _maybe_done(self) -> None:
        done = self._answered == self._count and self._deadlines == self._meta
        if done and not self.done.done():
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
