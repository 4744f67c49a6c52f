"""Under `--durability always`, a read pipelined behind a write still waiting for its fsync
never shows that write unless the fsync succeeds: when it fails, the read is answered as
the store is without the undone writes, in request order.

In-process over a fake transport, on a real engine whose fsync fails on demand.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postoffice.core.clock import FakeClock
from postoffice.store.config import StoreConfig
from postoffice.store.engine import GroupCommit, Store
from postoffice.store.server import StoreConnection, StoreServer
from postoffice.store.wire import (
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    Response,
    ScanRequest,
    Status,
    decode_scan_body,
    encode_request,
)
from tests.store.test_backpressure import connect, replies

pytestmark = pytest.mark.timeout(30)


@dataclass
class Durable:
    server: StoreServer
    store: Store
    fsync_failures: list[int]  # fail this many fsyncs from now (one item: the count)


@pytest.fixture
async def durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Durable]:
    failures = [0]
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = Store.open(tmp_path / "store", durability="always")
    store.put(b"k", b"old")
    store.write_behind = True
    config = StoreConfig(port=0, metrics_port=None, data_dir=tmp_path, durability="always")
    server = StoreServer(config, clock=FakeClock())
    server.store = store
    server.commit = GroupCommit(store, asyncio.get_running_loop())
    server.commit.start()
    try:
        yield Durable(server, store, failures)
    finally:
        await server.commit.stop()
        store.close()


def pipeline(*requests: Request) -> bytes:
    return b"".join(encode_request(r, i) for i, r in enumerate(requests, 1))


async def answered(conn: StoreConnection, count: int) -> list[Response]:
    """The replies written to `conn`'s fake transport once there are `count` of them."""
    transport = conn.transport
    got: list[Response] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            got = replies(transport.written)  # type: ignore[union-attr]  # a FakeTransport
            await asyncio.sleep(0)  # the committer thread answers through the loop
    return got


async def test_a_get_behind_a_put_whose_fsync_fails_reads_the_value_before_it(
    durable: Durable,
) -> None:
    conn, _ = connect(durable.server)
    durable.fsync_failures[0] = 1
    conn.data_received(
        pipeline(
            PutRequest(key=b"k", value=b"new"),
            GetRequest(key=b"k"),
            ScanRequest(limit=10),
            GetRequest(key=b"k"),
        )
    )
    put, get, scan, again = await answered(conn, 4)
    assert [r.request_id for r in (put, get, scan, again)] == [1, 2, 3, 4]
    assert put.status is Status.STORAGE
    assert (get.status, get.body) == (Status.OK, b"old")
    assert decode_scan_body(scan.body).items == ((b"k", b"old"),)
    assert again.body == b"old"
    assert durable.store.get(b"k") == b"old"


async def test_a_get_behind_a_put_whose_fsync_succeeds_reads_the_new_value(
    durable: Durable,
) -> None:
    conn, _ = connect(durable.server)
    conn.data_received(pipeline(PutRequest(key=b"k", value=b"new"), GetRequest(key=b"k")))
    put, get = await answered(conn, 2)
    assert put.status is Status.OK
    assert get.body == b"new"


async def test_writes_behind_a_held_read_wait_for_it_and_keep_its_answer(
    durable: Durable,
) -> None:
    """A write behind the read is not run before the read's answer is settled, so the
    read never shows a write sent after it, even when the one before it failed."""
    conn, _ = connect(durable.server)
    durable.fsync_failures[0] = 1
    conn.data_received(
        pipeline(
            PutRequest(key=b"k", value=b"failed"),
            GetRequest(key=b"k"),
            PutRequest(key=b"k", value=b"later"),
            PingRequest(),
            GetRequest(key=b"k"),
            DeleteRequest(key=b"k"),
            GetRequest(key=b"k"),
        )
    )
    got = await answered(conn, 7)
    assert [(r.request_id, r.status, r.body) for r in got] == [
        (1, Status.STORAGE, got[0].body),
        (2, Status.OK, b"old"),
        (3, Status.OK, b""),
        (4, Status.OK, b""),
        (5, Status.OK, b"later"),
        (6, Status.OK, b"\x01"),
        (7, Status.NOT_FOUND, b"no such key"),
    ]
    assert durable.store.get(b"k") is None
