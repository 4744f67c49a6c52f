"""Index scans: the memory layers merged with LMDB in key order, and what a scan reads."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.store.engine.index import Index, Location, Meta
from postoffice.store.engine.logstore import Position

_META = Meta(position=Position(1, 0), last_seq=0, live_keys=0)
_BOUNDS = st.binary(min_size=0, max_size=3).map(lambda b: bytes(97 + x % 3 for x in b))
_KEYS = _BOUNDS.filter(bool)  # LMDB takes no empty key, nor does the store
# An operation on the index: ("set", key, loc or None), ("flush",), ("freeze",), ("thaw",).
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _KEYS, st.one_of(st.none(), st.integers(1, 9))),
        st.tuples(st.just("flush")),
        st.tuples(st.just("freeze")),
        st.tuples(st.just("thaw")),
        st.tuples(
            st.just("scan"), _BOUNDS, st.one_of(st.none(), _BOUNDS), _BOUNDS, st.integers(0, 6)
        ),
    ),
    max_size=60,
)


def _loc(n: int) -> Location:
    return (1, n * 100, 30, n)


def _expected(
    model: dict[bytes, Location | None], lo: bytes, hi: bytes | None, prefix: bytes, limit: int
) -> list[tuple[bytes, Location]]:
    found = [
        (k, loc)
        for k, loc in sorted(model.items())
        if loc is not None and k >= lo and (hi is None or k < hi) and k.startswith(prefix)
    ]
    return found[: max(limit, 0)]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_scan_matches_a_sorted_model_across_flushes_and_freezes(
    ops: list[tuple[object, ...]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        index = Index(Path(tmp), map_bytes=1 << 22)
        model: dict[bytes, Location | None] = {}
        try:
            for op in ops:
                match op:
                    case ("set", bytes() as key, None):
                        index.set(key, None)
                        model[key] = None
                    case ("set", bytes() as key, int() as n):
                        index.set(key, _loc(n))
                        model[key] = _loc(n)
                    case ("flush",):
                        index.flush(_META)
                    case ("freeze",):
                        if index.frozen is None:
                            index.freeze()
                    case ("thaw",):
                        if index.frozen is not None:
                            snapshot = index.frozen
                            index.thaw(snapshot, written=index.write_frozen(snapshot, _META))
                    case ("scan", bytes() as lo, hi, bytes() as prefix, int() as limit):
                        assert hi is None or isinstance(hi, bytes)
                        got = index.scan(lo, hi, prefix, limit)
                        assert got == _expected(model, lo, hi, prefix, limit), (lo, hi, prefix)
                    case _:
                        raise AssertionError(op)
            assert index.scan(b"", None, b"", 1000) == _expected(model, b"", None, b"", 1000)
        finally:
            index.close()


class _CountingLayer(dict[bytes, Location | None]):
    """A memory layer that counts the entries read from it."""

    reads = 0

    def __getitem__(self, key: bytes) -> Location | None:
        _CountingLayer.reads += 1
        return super().__getitem__(key)


def test_a_scan_reads_only_the_memory_entries_its_limit_reaches(tmp_path: Path) -> None:
    index = Index(tmp_path, map_bytes=1 << 22)
    layer = _CountingLayer()
    for i in range(5000):
        layer[b"k%05d" % i] = _loc(i)
    index.memory = layer
    for start in (b"k00100", b"k04000", b"k01000"):
        _CountingLayer.reads = 0
        got = index.scan(start, None, b"", 3)
        first = int(start[1:])
        assert got == [(b"k%05d" % i, _loc(i)) for i in range(first, first + 3)]
        assert _CountingLayer.reads <= 4
    layer[b"j"] = _loc(1)  # a key added between scans is found
    assert index.scan(b"", None, b"j", 3) == [(b"j", _loc(1))]
    index.close()
