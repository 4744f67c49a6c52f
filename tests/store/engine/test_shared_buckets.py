"""Keys that share their first 448 bytes share one LMDB bucket: a flush reads and writes
each bucket once, however many of its keys changed, and they all read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from postoffice.store.engine import Store
from postoffice.store.engine import index as index_module

PREFIX = b"p" * index_module.BUCKET_KEY_BYTES


def key(i: int) -> bytes:
    return PREFIX + b"%06d" % i + b"x" * 100


def test_a_flush_decodes_a_shared_bucket_once_however_many_keys_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path, durability="never") as s:
        for i in range(0, 2000, 2):
            s.put(key(i), b"first")
    # closed, so flushed: the bucket holds 1000 keys
    decoded: list[int] = []
    real = index_module._decode_bucket

    def counting(raw: bytes) -> list[tuple[bytes, index_module.Location]]:
        decoded.append(len(raw))
        return real(raw)

    with Store.open(tmp_path, durability="never") as s:
        for i in range(1, 2000, 2):
            s.put(key(i), b"second")
        for i in range(0, 200, 2):
            s.delete(key(i))
        monkeypatch.setattr(index_module, "_decode_bucket", counting)
        with s._lock:  # the flush that close() and a full memory layer make
            s._flush()
        monkeypatch.undo()
        # Before: one decode of the whole bucket per key written (1100 here, quadratic).
        assert len(decoded) <= 1
    with Store.open(tmp_path) as s:
        assert len(s) == 1900
        assert s.get(key(0)) is None
        assert s.get(key(1)) == b"second"
        assert s.get(key(1998)) == b"first"
        assert [k for k, _ in s.scan(start=key(195), limit=4)] == [
            key(195),
            key(197),
            key(199),
            key(200),
        ]
