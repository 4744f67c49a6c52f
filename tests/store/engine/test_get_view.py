"""Store.get_view: a large value in a sealed, durable segment read without a copy."""

from __future__ import annotations

import mmap
from pathlib import Path

from postoffice.store import Store

BIG = bytes(range(256)) * 4096  # 1 MiB
SEGMENT = 256 * 1024


def _sealed(path: Path) -> Store:
    """A store whose first segment holds BIG and is no longer written to."""
    store = Store.open(path, durability="always", segment_bytes=SEGMENT)
    store.put(b"big", BIG)
    for n in range(8):  # past the segment's size: new segments, each fsynced
        store.put(b"filler%d" % n, b"f" * (SEGMENT // 2))
    return store


def test_a_large_value_of_a_sealed_segment_is_a_view_of_its_map(tmp_path: Path) -> None:
    with _sealed(tmp_path) as store:
        value = store.get_view(b"big")
        assert isinstance(value, memoryview)
        assert isinstance(value.obj, mmap.mmap)
        assert value.readonly
        assert value == BIG
        assert store.get(b"big") == BIG  # get still copies


def test_small_and_unsealed_values_come_as_bytes(tmp_path: Path) -> None:
    with _sealed(tmp_path) as store:
        store.put(b"small", b"s" * 100)
        store.put(b"late", BIG)  # in the segment written now
        assert type(store.get_view(b"late")) is bytes
        assert store.get_view(b"late") == BIG
        assert store.get_view(b"small") == b"s" * 100
        assert store.get_view(b"missing") is None


def test_closing_the_store_leaves_a_view_in_use_readable(tmp_path: Path) -> None:
    """A view still being sent keeps its map: closing the segment does not fail."""
    store = _sealed(tmp_path)
    value = store.get_view(b"big")
    assert isinstance(value, memoryview)
    store.close()
    assert value == BIG
    value.release()
