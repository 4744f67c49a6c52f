"""Part "client": our AsyncClient against redis-py's asyncio client, C connections, P in flight."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, final

import redis
import redis.asyncio as aioredis
from benchkit import (
    LOOPBACK,
    BenchError,
    Server,
)
from common import LOOPS, RUN_GRACE_S, VALUE, Run, Scenario
from servers import CpuWindow

from postoffice.core.errors import PostOfficeError
from postoffice.store import AsyncClient, Client
from postoffice.store.wire import Status


class Conn(Protocol):
    """One client connection, as the load loop sees it."""

    async def get(self, keys: Sequence[bytes]) -> int:
        """GET every key (pipelined when several); return how many were missing."""
        ...

    async def put(self, keys: Sequence[bytes]) -> None:
        """Set every key to VALUE (pipelined when several)."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...


@final
class OursConn:
    """Our AsyncClient. Several requests in flight are a pipeline: submitted together
    (`submit_get` / `submit_put`, which return futures), then awaited together, as
    redis-py's pipeline collects its commands and reads all the replies."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @classmethod
    async def open(cls, port: int) -> OursConn:
        """Connect and check the server answers."""
        client = await AsyncClient.connect(LOOPBACK, port)
        await client.stats()
        return cls(client)

    async def get(self, keys: Sequence[bytes]) -> int:
        client = self._client
        if len(keys) == 1:
            return int(await client.get(keys[0]) is None)
        replies = await asyncio.gather(*[client.submit_get(key) for key in keys])
        for reply in replies:
            if reply.status is not Status.OK and reply.status is not Status.NOT_FOUND:
                raise BenchError(f"our GET failed: {reply.status.name} {reply.body[:200]!r}")
        return sum(reply.status is Status.NOT_FOUND for reply in replies)

    async def put(self, keys: Sequence[bytes]) -> None:
        client = self._client
        if len(keys) == 1:
            await client.put(keys[0], VALUE)
            return
        replies = await asyncio.gather(*[client.submit_put(key, VALUE) for key in keys])
        for reply in replies:
            if reply.status is not Status.OK:
                raise BenchError(f"our PUT failed: {reply.status.name} {reply.body[:200]!r}")

    async def close(self) -> None:
        await self._client.close()


@final
class RedisConn:
    """redis-py's asyncio client on one connection; several requests are a pipeline.

    A pipeline takes its connection from the client's own pool, so each RedisConn uses one
    connection in a scenario either way.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    @classmethod
    async def open(cls, port: int, pipeline: int) -> RedisConn:
        """Connect (the connection the scenario will use) and check the server answers."""
        client = aioredis.Redis(host=LOOPBACK, port=port, single_connection_client=True)
        if pipeline == 1:
            await client.ping()
        else:
            pipe = client.pipeline(transaction=False)
            pipe.ping()
            await pipe.execute()
        return cls(client)

    async def get(self, keys: Sequence[bytes]) -> int:
        if len(keys) == 1:
            return int(await self._client.get(keys[0]) is None)
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values = await pipe.execute()
        return sum(value is None for value in values)

    async def put(self, keys: Sequence[bytes]) -> None:
        if len(keys) == 1:
            await self._client.set(keys[0], VALUE)
            return
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, VALUE)
        await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """What one timed client run produced, before any CPU bookkeeping."""

    ops: int
    misses: int
    seconds: float
    latencies_s: list[float]


async def _worker(
    conn: Conn,
    op: str,
    keys: Sequence[bytes],
    rng: random.Random,
    pipeline: int,
    deadline: float,
    latencies: list[float],
) -> tuple[int, int]:
    """Requests back to back (P at a time) until the deadline; returns (ops, misses)."""
    perf = time.perf_counter
    count = len(keys)
    done = misses = 0
    while perf() < deadline:
        batch = [keys[rng.randrange(count)] for _ in range(pipeline)]
        began = perf()
        if op == "get":
            misses += await conn.get(batch)
        else:
            await conn.put(batch)
        latencies.append(perf() - began)
        done += pipeline
    return done, misses


async def drive(
    opener: Callable[[], Awaitable[Conn]],
    op: str,
    scenario: Scenario,
    keys: Sequence[bytes],
    seconds: float,
    seed: int,
    measure: Callable[[], None],
) -> Load:
    """Open the scenario's connections, then run the load for `seconds`.

    `measure` is called right before and right after the timed window (CPU readings).
    """
    conns = [await opener() for _ in range(scenario.clients)]
    try:
        latencies: list[float] = []
        measure()
        began = time.perf_counter()
        deadline = began + seconds
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *[
                    _worker(conn, op, keys, random.Random(seed * 1000 + i), scenario.pipeline,
                            deadline, latencies)
                    for i, conn in enumerate(conns)
                ]
            ),
            timeout=seconds + RUN_GRACE_S,
        )  # fmt: skip
        elapsed = time.perf_counter() - began
        measure()
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()
    return Load(
        ops=sum(ops for ops, _ in outcomes),
        misses=sum(misses for _, misses in outcomes),
        seconds=elapsed,
        latencies_s=latencies,
    )


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        raise BenchError("a client run finished no request")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def store_fsyncs(port: int) -> int:
    """The fsyncs our store server's engine has made so far (STATS `engine_fsyncs`).

    Raises BenchError when the server does not say.
    """
    try:
        with Client(LOOPBACK, port) as client:
            value = client.stats().get("engine_fsyncs")
    except PostOfficeError as exc:
        raise BenchError(f"cannot read STATS from the store: {exc}") from exc
    if not isinstance(value, int):
        raise BenchError(f"the store's STATS has engine_fsyncs={value!r}, not a count")
    return value


def client_run(
    *,
    contender: str,
    server: Server,
    phase: str,
    op: str,
    scenario: Scenario,
    keys: Sequence[bytes],
    seconds: float,
    round_no: int,
    loop: str,
) -> Run:
    """One timed run of `op` against one server, on a fresh event loop of kind `loop`."""
    server.check_alive()
    window = CpuWindow([server.pid])
    port, pipeline = server.port, scenario.pipeline

    async def open_ours() -> Conn:
        return await OursConn.open(port)

    async def open_redis() -> Conn:
        return await RedisConn.open(port, pipeline)

    opener = open_ours if contender == "ours" else open_redis
    fsyncs_before = store_fsyncs(port) if contender == "ours" else None
    try:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            load = runner.run(drive(opener, op, scenario, keys, seconds, round_no, window))
    except TimeoutError as exc:
        raise BenchError(f"{contender} {op} {scenario.name} ran past {RUN_GRACE_S} s") from exc
    except (OSError, redis.RedisError, PostOfficeError) as exc:
        raise BenchError(f"{contender} {op} {scenario.name}: {exc!r}") from exc
    server.check_alive()
    fsyncs = None if fsyncs_before is None else store_fsyncs(port) - fsyncs_before
    server_cpu, client_cpu, busy = window.deltas()
    if op == "get" and load.misses:
        raise BenchError(f"{contender}: {load.misses} of {load.ops} GETs missed a prefilled key")
    latencies = sorted(load.latencies_s)
    return Run(
        part="client",
        phase=phase,
        test=op.upper(),
        scenario=scenario.name,
        round=round_no,
        contender=contender,
        ops=load.ops,
        seconds=round(load.seconds, 3),
        ops_s=round(load.ops / load.seconds, 1),
        p50_ms=round(_quantile(latencies, 0.50) * 1e3, 3),
        p99_ms=round(_quantile(latencies, 0.99) * 1e3, 3),
        server_cpu_us_per_op=round(server_cpu * 1e6 / load.ops, 2),
        client_cpu_us_per_op=round(client_cpu * 1e6 / load.ops, 2),
        other_cpu_s=round(max(0.0, busy - server_cpu - client_cpu), 2),
        misses=load.misses,
        fsyncs=fsyncs,
    )
