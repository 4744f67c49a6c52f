"""StorePool over fake store links: routing by key, barriers, a broken link replaced."""

from __future__ import annotations

import asyncio

import pytest

from postoffice.command.config import CommandConfig
from postoffice.command.pool import StoreLink, StorePool
from postoffice.core.errors import BrokenError, ConfigError
from postoffice.core.runtime import Backoff
from postoffice.store import (
    BatchRequest,
    DeleteRequest,
    PutRequest,
    Request,
    Response,
    StatsRequest,
    Status,
)


class FakeLink:
    """A store connection whose answers the test gives; it records what was sent."""

    def __init__(self, name: int, log: list[tuple[int, str, bytes]]) -> None:
        self.name = name
        self.is_open = True
        self.log = log
        self.futures: list[asyncio.Future[Response]] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _send(self, what: str, key: bytes) -> asyncio.Future[Response]:
        assert self.is_open, "sent on a closed link"
        self.log.append((self.name, what, key))
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def submit(self, request: Request) -> asyncio.Future[Response]:
        key = getattr(request, "key", b"")
        return self._send(type(request).__name__, key)

    def submit_get(self, key: bytes) -> asyncio.Future[Response]:
        return self._send("get", key)

    def submit_put(self, key: bytes, value: bytes) -> asyncio.Future[Response]:
        return self._send("put", key)

    def answer_all(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result(Response(request_id=1, status=Status.OK, body=b""))

    def break_(self) -> None:
        """The peer went away: what is in flight fails, `closed` resolves."""
        self.is_open = False
        for future in self.futures:
            if not future.done():
                future.set_exception(BrokenError("the store closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def close(self) -> None:
        self.break_()


class Links:
    """The connect function of a pool: each call makes a new FakeLink."""

    def __init__(self) -> None:
        self.made: list[FakeLink] = []
        self.log: list[tuple[int, str, bytes]] = []
        self.refuse = 0  # how many of the next connects fail

    async def connect(self, host: str, port: int) -> StoreLink:
        if self.refuse:
            self.refuse -= 1
            raise BrokenError(f"cannot connect to the store at {host}:{port}: refused")
        link = FakeLink(len(self.made), self.log)
        self.made.append(link)
        return link


async def _open_pool(size: int, links: Links) -> StorePool:
    pool = StorePool(
        "127.0.0.1", 1, size, connect=links.connect, backoff=lambda: Backoff(initial_s=0.0)
    )
    await pool.start()
    assert await pool.wait_open(5.0)
    return pool


def _keys_on_distinct_slots(pool: StorePool) -> tuple[bytes, bytes]:
    first = b"key-0"
    for n in range(1, 1000):
        other = b"key-%d" % n
        if pool.slot_of(other) != pool.slot_of(first):
            return first, other
    raise AssertionError("no two keys on distinct slots")


async def test_one_key_always_goes_to_one_link_and_keys_spread_over_all() -> None:
    links = Links()
    pool = await _open_pool(4, links)
    try:
        for n in range(200):
            pool.submit_get(b"k%d" % n)
            pool.submit_put(b"k%d" % n, b"v")
        by_key: dict[bytes, set[int]] = {}
        for name, _, key in links.log:
            by_key.setdefault(key, set()).add(name)
        assert all(len(names) == 1 for names in by_key.values())
        assert {name for name, _, _ in links.log} == {0, 1, 2, 3}
        assert pool.stats()["store_connections_open"] == 4
    finally:
        await pool.close()


async def test_a_broken_link_fails_its_keys_at_once_while_the_others_serve_and_heals() -> None:
    links = Links()
    pool = await _open_pool(2, links)
    try:
        near, far = _keys_on_distinct_slots(pool)
        dead = links.made[pool.slot_of(near)]
        in_flight = pool.submit_get(near)
        links.refuse = 2  # the first reconnects fail: the slot stays down for a while
        dead.break_()
        with pytest.raises(BrokenError, match="the store closed the connection"):
            await in_flight
        with pytest.raises(BrokenError, match=r"^store connection \d of 2 down: "):
            pool.submit_get(near)
        served = pool.submit_get(far)  # the other link keeps serving
        assert all(name != dead.name for name, _, key in links.log if key == far)
        assert await pool.wait_open(5.0)
        healed = pool.submit_get(near)
        assert links.log[-1] == (len(links.made) - 1, "get", near)  # on the new link
        links.made[-1].answer_all()
        assert (await healed).status is Status.OK
        links.made[pool.slot_of(far)].answer_all()
        assert (await served).status is Status.OK
        assert pool.stats()["store_reconnects"] == 1
        sent_on_dead = [entry for entry in links.log if entry[0] == dead.name]
        assert sent_on_dead == [(dead.name, "get", near)]  # nothing after it broke
    finally:
        await pool.close()


async def test_a_batch_spanning_links_waits_for_earlier_requests_and_holds_later_ones() -> None:
    links = Links()
    pool = await _open_pool(2, links)
    try:
        a, b = _keys_on_distinct_slots(pool)
        earlier = pool.submit_get(b)  # in flight on b's link
        batch = pool.submit(
            BatchRequest(ops=(PutRequest(key=a, value=b"1"), PutRequest(key=b, value=b"2")))
        )
        later = pool.submit_get(b)
        assert [what for _, what, _ in links.log] == ["get"]  # the batch waits
        for link in links.made:
            link.answer_all()
        await earlier
        await asyncio.sleep(0)
        assert [what for _, what, _ in links.log] == ["get", "BatchRequest"]  # alone
        for link in links.made:
            link.answer_all()
        assert (await batch).status is Status.OK
        for _ in range(3):
            await asyncio.sleep(0)
        assert [what for _, what, _ in links.log] == ["get", "BatchRequest", "get"]
        for link in links.made:
            link.answer_all()
        await later
        assert pool.stats()["store_barriers"] == 1
    finally:
        await pool.close()


async def test_a_keyless_request_waits_for_the_writes_sent_before_it() -> None:
    links = Links()
    pool = await _open_pool(3, links)
    try:
        write = pool.submit(DeleteRequest(key=b"gone"))
        stats = pool.submit(StatsRequest())
        assert [what for _, what, _ in links.log] == ["DeleteRequest"]
        for link in links.made:
            link.answer_all()
        await write
        await asyncio.sleep(0)
        assert [what for _, what, _ in links.log] == ["DeleteRequest", "StatsRequest"]
        for link in links.made:
            link.answer_all()
        assert (await stats).status is Status.OK
    finally:
        await pool.close()


async def test_a_batch_on_one_link_is_no_barrier() -> None:
    links = Links()
    pool = await _open_pool(4, links)
    try:
        batch = pool.submit(BatchRequest(ops=(PutRequest(key=b"same", value=b"1"),)))
        pool.submit_get(b"same")
        assert [what for _, what, _ in links.log] == ["BatchRequest", "get"]
        assert pool.stats()["store_barriers"] == 0
        for link in links.made:
            link.answer_all()
        await batch
    finally:
        await pool.close()


async def test_closing_the_pool_fails_what_is_held_behind_a_barrier() -> None:
    links = Links()
    pool = await _open_pool(2, links)
    earlier = pool.submit_get(b"x")
    stats = pool.submit(StatsRequest())
    await pool.close()
    with pytest.raises(BrokenError, match="the store closed the connection"):
        await earlier
    with pytest.raises(BrokenError, match="store pool closed"):
        await stats


def test_a_pool_size_outside_the_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^store connections 0 outside 1\.\.64$"):
        StorePool("127.0.0.1", 1, 0)


def test_store_connections_setting_is_checked() -> None:
    assert CommandConfig(store="127.0.0.1:7400", store_connections=4).store_connections == 4
    with pytest.raises(ConfigError, match="store_connections"):
        CommandConfig(store="127.0.0.1:7400", store_connections=0)
