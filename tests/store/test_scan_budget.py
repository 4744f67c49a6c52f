"""A SCAN reads no more than the page it answers: the engine cuts the page by bytes
before it reads a value, and the server passes it the page budget."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from postoffice.store.engine import Store
from postoffice.store.wire import ScanRequest, Status, decode_scan_body, encode_request
from tests.store.test_backpressure import connect, replies, serve

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "store", durability="never")
    try:
        for i in range(20):
            store.put(b"k%02d" % i, bytes([65 + i]) * MIB)
        yield store
    finally:
        store.close()


def _peak(run: object) -> int:
    """The most memory Python allocated while `run()` ran, in bytes."""
    assert callable(run)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def test_a_scan_page_stops_before_the_value_that_would_pass_its_budget(engine: Store) -> None:
    page, more = engine.scan_page(limit=20, max_bytes=2 * MIB + 100, item_bytes=6)
    assert [key for key, _ in page] == [b"k00", b"k01"]
    assert page[1][1] == b"B" * MIB
    assert more


def test_a_scan_page_holds_its_first_item_whatever_its_size(engine: Store) -> None:
    page, more = engine.scan_page(start=b"k19", limit=5, max_bytes=1)
    assert [key for key, _ in page] == [b"k19"]
    assert not more


def test_a_scan_page_within_its_budget_says_whether_more_keys_follow(engine: Store) -> None:
    assert engine.scan_page(start=b"k18", limit=2, max_bytes=8 * MIB)[1] is False
    assert engine.scan_page(start=b"k17", limit=2, max_bytes=8 * MIB)[1] is True


def test_a_scan_page_reads_no_value_past_its_budget(engine: Store) -> None:
    def scan() -> None:
        engine.scan_page(limit=20, max_bytes=MIB + 100)

    assert _peak(scan) < 3 * MIB  # one value read (and its copy), not twenty


async def test_a_server_scan_over_big_values_reads_about_one_page(
    tmp_path: Path, engine: Store
) -> None:
    server, _ = serve(tmp_path, engine, max_scan_page_bytes=2 * MIB + 100)
    conn, transport = connect(server)
    wire = encode_request(ScanRequest(limit=20), 1)
    # The page (two values), its encoded body and the write: a few pages, never twenty
    # values.
    assert _peak(lambda: conn.data_received(wire)) < 9 * MIB
    (reply,) = replies(transport.written)
    assert reply.status is Status.OK
    page = decode_scan_body(reply.body)
    assert [key for key, _ in page.items] == [b"k00", b"k01"]
    assert page.more
