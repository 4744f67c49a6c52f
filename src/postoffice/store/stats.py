"""The store server's statistics: `STAT_KEYS` names every key of a STATS reply and of
/metrics, with its type and meaning; `ServerStats` holds the server's own counters."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, final

from postoffice.core.metrics import LatencyHistogram
from postoffice.store.engine import StoreStats
from postoffice.store.wire import RequestType

#: Where a frame type's request count is kept: one list slot per possible type byte, so
#: the hot path adds to `by_type[type]` without a lookup.
_FRAME_TYPES: Final = 256


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StatKey:
    """One key of the STATS reply, exposed on /metrics as `postoffice_store_<name>`.

    A counter only grows from 0 at the server's start (Prometheus adds `_total`); a gauge
    is a current value.
    """

    name: str
    kind: Literal["counter", "gauge"]
    type: Literal["int", "float"]
    meaning: str


def _counter(name: str, meaning: str) -> StatKey:
    return StatKey(name=name, kind="counter", type="int", meaning=meaning)


def _gauge(name: str, meaning: str, type: Literal["int", "float"] = "int") -> StatKey:
    return StatKey(name=name, kind="gauge", type=type, meaning=meaning)


#: Every key a STATS reply holds, in the order docs/protocols/store.md lists them (the
#: reply itself sorts its keys). The `engine_` keys are absent while the engine is not
#: open (during start-up and shutdown).
STAT_KEYS: Final[tuple[StatKey, ...]] = (
    _counter("connections_accepted", "connections admitted"),
    _gauge("connections_active", "connections open now (a STATS reply counts its own)"),
    _counter(
        "connections_rejected",
        "connections refused with BUSY (over --max-connections, or draining)",
    ),
    _counter("connections_timed_out", "connections closed by the idle timeout"),
    _counter("connections_closed", "connections closed, for any reason"),
    _counter(
        "connections_request_timeout",
        "connections refused with BUSY: a request not whole within --request-timeout",
    ),
    _counter(
        "connections_output_limited",
        "connections closed with their replies unsent: over an output limit",
    ),
    _counter(
        "connections_partial_refused",
        "connections refused with BUSY: partial requests over --max-partial-size",
    ),
    _gauge("partial_request_bytes", "bytes the partly received requests hold now"),
    _counter("requests", "request frames received whole, of every type"),
    _counter("requests_ping", "PING frames received"),
    _counter("requests_get", "GET frames received, malformed ones included"),
    _counter("requests_put", "PUT frames received, malformed ones included"),
    _counter("requests_delete", "DELETE frames received, malformed ones included"),
    _counter("requests_batch", "BATCH frames received, malformed ones included"),
    _counter("requests_scan", "SCAN frames received, malformed ones included"),
    _counter("requests_stats", "STATS frames received"),
    _counter("requests_unknown", "frames of any other type (answered BAD_REQUEST)"),
    _counter(
        "errors",
        "replies with status BAD_REQUEST, TOO_LARGE, STORAGE or INTERNAL, and broken frames",
    ),
    _gauge(
        "latency_p50_s",
        "median seconds from reading a request to writing its reply, from the histogram",
        "float",
    ),
    _gauge("latency_p99_s", "99th percentile of the same", "float"),
    _gauge("engine_keys", "keys stored"),
    _gauge("engine_segments", "log segment files"),
    _gauge("engine_log_bytes", "bytes in the log segment files"),
    _gauge("engine_last_seq", "sequence number of the newest log record"),
    _gauge("engine_memory_entries", "index entries not yet written to LMDB"),
    _counter("engine_puts", "puts applied outside a batch"),
    _counter("engine_deletes", "deletes of a key that was there, outside a batch"),
    _counter("engine_batches", "batches applied"),
    _counter("engine_gets", "gets served, found or not"),
    _counter("engine_fsyncs", "fsyncs of the log"),
    _counter("engine_compactions", "compactions finished"),
)


@final
@dataclass(slots=True, kw_only=True, eq=False)
class ServerStats:
    """The store server's own counters, plain ints its event loop adds to; `snapshot`
    turns them (with the connection manager's and the engine's) into the STATS keys."""

    #: Requests received by frame type, the type byte as the index.
    by_type: list[int] = field(default_factory=lambda: [0] * _FRAME_TYPES)
    errors: int = 0
    #: Seconds from reading a request to writing its reply (the `latency_` keys).
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def requests(self) -> int:
        """Request frames received, of every type."""
        return sum(self.by_type)

    def snapshot(
        self, connections: Mapping[str, int], engine: StoreStats | None
    ) -> dict[str, int | float]:
        """The value of every key of STAT_KEYS: `connections` as the connection manager
        counts them, `engine` None while the engine is not open (no `engine_` keys)."""
        by_type = self.by_type
        total = sum(by_type)
        values: dict[str, int | float] = {
            **connections,
            "requests": total,
            "errors": self.errors,
            "latency_p50_s": round(self.latency.quantile(0.5), 6),
            "latency_p99_s": round(self.latency.quantile(0.99), 6),
        }
        known = 0
        for kind in RequestType:
            values[f"requests_{kind.name.lower()}"] = by_type[kind]
            known += by_type[kind]
        values["requests_unknown"] = total - known
        if engine is not None:
            for name, value in dataclasses.asdict(engine).items():
                values[f"engine_{name}"] = value
        return {key.name: values[key.name] for key in STAT_KEYS if key.name in values}


#: The STATS keys /metrics exposes as counters, and the help text of every key.
COUNTER_KEYS: Final = frozenset(key.name for key in STAT_KEYS if key.kind == "counter")
HELP: Final = {key.name: key.meaning for key in STAT_KEYS}

__all__ = ["COUNTER_KEYS", "HELP", "STAT_KEYS", "ServerStats", "StatKey"]
