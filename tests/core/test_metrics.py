"""Tests for core.metrics: scrape-time collectors, the latency histogram, registries."""

from __future__ import annotations

import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from postoffice.core.metrics import (
    DEFAULT_BUCKETS,
    LatencyHistogram,
    StatsCollector,
    new_registry,
    render,
)


def _scrape(*collectors: StatsCollector) -> list[str]:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry).decode().splitlines()


class _Stats:
    """A service's own counters: plain ints it bumps on its hot path."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    def snapshot(self) -> dict[str, int]:
        return {"connections": self.connections, "requests": self.requests}


class TestStatsCollector:
    def test_gauges_and_counters_with_help(self) -> None:
        collector = StatsCollector(
            "command",
            lambda: {"connections": 3, "requests_total": 10, "errors": 2, "load": 0.5},
            counters=("requests_total", "errors"),
            help={"connections": "open client connections"},
        )
        lines = _scrape(collector)
        assert lines == [
            "# HELP command_connections open client connections",
            "# TYPE command_connections gauge",
            "command_connections 3.0",
            "# HELP command_requests_total requests_total",
            "# TYPE command_requests_total counter",
            "command_requests_total 10.0",
            "# HELP command_errors_total errors",
            "# TYPE command_errors_total counter",
            "command_errors_total 2.0",
            "# HELP command_load load",
            "# TYPE command_load gauge",
            "command_load 0.5",
        ]

    def test_values_are_read_at_scrape_time(self) -> None:
        stats = _Stats()
        registry = CollectorRegistry()
        registry.register(StatsCollector("ingest", stats.snapshot, counters={"requests"}))
        stats.connections = 2
        stats.requests += 7
        text = generate_latest(registry).decode()
        assert "ingest_connections 2.0\n" in text
        assert "ingest_requests_total 7.0\n" in text
        stats.requests += 1
        assert "ingest_requests_total 8.0\n" in generate_latest(registry).decode()

    def test_histograms_are_exported(self) -> None:
        latency = LatencyHistogram((0.001, 0.01))
        latency.observe(0.0005)
        latency.observe(0.005)
        latency.observe(1.0)
        collector = StatsCollector(
            "store",
            dict,
            histograms={"get_seconds": latency},
            help={"get_seconds": "GET latency"},
        )
        assert _scrape(collector) == [
            "# HELP store_get_seconds GET latency",
            "# TYPE store_get_seconds histogram",
            'store_get_seconds_bucket{le="0.001"} 1.0',
            'store_get_seconds_bucket{le="0.01"} 2.0',
            'store_get_seconds_bucket{le="+Inf"} 3.0',
            "store_get_seconds_count 3.0",
            "store_get_seconds_sum 1.0055",
        ]

    def test_invalid_prefix_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"^metric prefix 'bad-name' is not a valid "):
            StatsCollector("bad-name", dict)

    def test_repr_shows_prefix(self) -> None:
        collector = StatsCollector("bus", dict, counters=("a", "b"))
        assert repr(collector) == "<StatsCollector prefix=bus counters=2 histograms=0>"


class TestLatencyHistogram:
    def test_bucket_counts_use_le_semantics(self) -> None:
        hist = LatencyHistogram((1.0, 2.0, 4.0))
        for sample in (0.5, 1.0, 1.5, 2.0, 3.0, 9.0):
            hist.observe(sample)
        assert hist.cumulative() == [(1.0, 2), (2.0, 4), (4.0, 5), (float("inf"), 6)]
        assert hist.count == 6
        assert hist.sum == pytest.approx(17.0)

    def test_quantiles_interpolate_inside_buckets(self) -> None:
        hist = LatencyHistogram((1.0, 2.0, 4.0))
        for sample in (0.5, 1.5, 1.5, 3.0):
            hist.observe(sample)
        assert hist.quantile(0.25) == pytest.approx(1.0)
        assert hist.quantile(0.5) == pytest.approx(1.5)
        assert hist.quantile(0.75) == pytest.approx(2.0)
        assert hist.quantile(1.0) == pytest.approx(4.0)
        assert hist.quantile(0.0) == pytest.approx(0.0)

    def test_rank_in_overflow_bucket_reports_last_bound(self) -> None:
        hist = LatencyHistogram((1.0, 2.0))
        hist.observe(0.5)
        hist.observe(30.0)
        assert hist.quantile(0.99) == 2.0

    def test_empty_histogram_estimates_zero(self) -> None:
        hist = LatencyHistogram()
        assert hist.count == 0
        assert hist.quantile(0.99) == 0.0
        assert hist.buckets_s == DEFAULT_BUCKETS

    def test_quantile_outside_unit_interval_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"^quantile 1\.5 is outside \[0, 1\]$"):
            LatencyHistogram().quantile(1.5)

    @pytest.mark.parametrize(
        ("buckets", "message"),
        [
            ((), r"^histogram buckets are empty, expected at least one bound$"),
            ((1.0, 1.0), r"^histogram bounds 1\.0 then 1\.0 are not increasing$"),
            ((2.0, 1.0), r"^histogram bounds 2\.0 then 1\.0 are not increasing$"),
            ((0.0, 1.0), r"^histogram bound 0\.0 is not a positive finite number$"),
            ((1.0, float("inf")), r"^histogram bound inf is not a positive finite number$"),
        ],
    )
    def test_bad_buckets_are_refused(self, buckets: tuple[float, ...], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            LatencyHistogram(buckets)

    @given(
        st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=1, max_size=200),
        st.floats(min_value=0.0, max_value=1.0),
    )
    def test_quantile_lands_in_the_bucket_holding_the_true_value(
        self, samples: list[float], q: float
    ) -> None:
        """The estimate is within the bounds of the bucket the exact quantile falls in."""
        bounds = (0.001, 0.01, 0.1, 1.0, 10.0)
        hist = LatencyHistogram(bounds)
        for sample in samples:
            hist.observe(sample)
        estimate = hist.quantile(q)
        assert hist.count == len(samples)
        assert 0.0 <= estimate <= bounds[-1]
        assert hist.quantile(0.0) <= estimate <= hist.quantile(1.0)
        # The sample at rank ceil(q * n), 1-based, as Prometheus ranks them.
        exact = sorted(samples)[max(1, math.ceil(q * len(samples))) - 1]
        lower = max([0.0, *(b for b in bounds if b < exact)])
        upper = min([bounds[-1], *(b for b in bounds if b >= exact)])
        assert lower - 1e-12 <= estimate <= upper + 1e-12

    def test_family_matches_cumulative_counts(self) -> None:
        hist = LatencyHistogram((0.5,))
        hist.observe(0.25)
        family = hist.family("x_seconds", "help")
        assert [(s.name, s.labels, s.value) for s in family.samples] == [
            ("x_seconds_bucket", {"le": "0.5"}, 1.0),
            ("x_seconds_bucket", {"le": "+Inf"}, 1.0),
            ("x_seconds_count", {}, 1.0),
            ("x_seconds_sum", {}, 0.25),
        ]

    def test_repr_shows_count(self) -> None:
        hist = LatencyHistogram((1.0,))
        hist.observe(0.1)
        assert repr(hist) == "<LatencyHistogram buckets=1 count=1>"


class TestRegistry:
    def test_registries_are_independent(self) -> None:
        first, second = new_registry(), new_registry()
        first.register(StatsCollector("only_first", lambda: {"x": 1}))
        assert b"only_first_x 1.0" in render(first)[0]
        assert b"only_first_x" not in render(second)[0]

    def test_render_returns_body_and_content_type(self) -> None:
        registry = new_registry()
        registry.register(StatsCollector("svc", lambda: {"up": 1}))
        body, content_type = render(registry)
        assert content_type == CONTENT_TYPE_LATEST
        assert b"\nsvc_up 1.0\n" in body

    @pytest.mark.skipif(sys.platform != "linux", reason="process metrics read /proc")
    def test_new_registry_has_process_metrics(self) -> None:
        body, _ = render(new_registry())
        assert b"\nprocess_resident_memory_bytes " in body
        assert b"\nprocess_cpu_seconds_total " in body
