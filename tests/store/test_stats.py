"""The STATS keys: named for the protocol in one table, documented byte for byte, and
the same on /metrics."""

from __future__ import annotations

import re
from pathlib import Path

from postoffice.core.metrics import render
from postoffice.store.config import StoreConfig
from postoffice.store.engine import RecoveryReport, StoreStats
from postoffice.store.server import StoreServer
from postoffice.store.stats import STAT_KEYS, ServerStats
from postoffice.store.wire import RequestType

DOC = Path(__file__).parents[2] / "docs" / "protocols" / "store.md"
CONNECTIONS = {
    "connections_accepted": 3,
    "connections_active": 1,
    "connections_rejected": 0,
    "connections_timed_out": 1,
    "connections_closed": 2,
    "connections_request_timeout": 0,
    "connections_output_limited": 0,
    "connections_partial_refused": 0,
    "partial_request_bytes": 0,
}
ENGINE = StoreStats(
    keys=5,
    segments=1,
    log_bytes=4096,
    last_seq=9,
    durability="always",
    memory_entries=5,
    puts=6,
    deletes=1,
    batches=1,
    gets=2,
    fsyncs=7,
    compactions=0,
    recovery=RecoveryReport(),
)


def test_a_snapshot_holds_exactly_the_documented_keys_with_their_types() -> None:
    snapshot = ServerStats().snapshot(CONNECTIONS, ENGINE)
    assert list(snapshot) == [key.name for key in STAT_KEYS]
    for key in STAT_KEYS:
        assert type(snapshot[key.name]).__name__ == key.type, key.name


def test_without_an_open_engine_the_engine_keys_are_absent() -> None:
    snapshot = ServerStats().snapshot(CONNECTIONS, None)
    assert list(snapshot) == [key.name for key in STAT_KEYS if not key.name.startswith("engine_")]


def test_requests_are_counted_by_protocol_name_and_unknown_types_apart() -> None:
    stats = ServerStats()
    stats.by_type[RequestType.GET] += 3
    stats.by_type[RequestType.PUT] += 2
    stats.by_type[0x7F] += 1
    snapshot = stats.snapshot(CONNECTIONS, ENGINE)
    assert {k: v for k, v in snapshot.items() if k.startswith("requests")} == {
        "requests": 6,
        "requests_ping": 0,
        "requests_get": 3,
        "requests_put": 2,
        "requests_delete": 0,
        "requests_batch": 0,
        "requests_scan": 0,
        "requests_stats": 0,
        "requests_unknown": 1,
    }
    assert (snapshot["engine_keys"], snapshot["engine_fsyncs"]) == (5, 7)


def test_the_protocol_doc_lists_every_key_with_its_type_kind_and_meaning() -> None:
    text = DOC.read_text()
    section = text[text.index("### STATS body") : text.index("## Status codes")]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (\w+) \| (.+) \|$", section, re.MULTILINE)
    assert rows == [(key.name, key.type, key.kind, key.meaning) for key in STAT_KEYS]


def test_metrics_expose_every_key_counters_as_totals(tmp_path: Path) -> None:
    server = StoreServer(StoreConfig(port=0, metrics_port=None, data_dir=tmp_path))
    server.stats.by_type[RequestType.SCAN] += 4
    text = render(server.registry)[0].decode()
    for key in STAT_KEYS:
        if key.name.startswith("engine_"):
            continue  # the engine is not open: startup() was never called
        name = f"postoffice_store_{key.name}"
        if key.kind == "counter":
            assert f"# HELP {name}_total {key.meaning}\n# TYPE {name}_total counter\n" in text
        else:
            assert f"# HELP {name} {key.meaning}\n# TYPE {name} gauge\n" in text
    assert "\npostoffice_store_requests_scan_total 4.0\n" in text
    assert "\npostoffice_store_request_seconds_count 0.0\n" in text
