"""Prometheus metrics with no hot-path cost: services count in plain ints, scrapes read them.

Core layer: `StatsCollector` and `LatencyHistogram` turn a service's own counters into
prometheus_client metric families only when `/metrics` is scraped.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Final, final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

#: Latency bucket upper bounds in seconds: 50 us (a loopback round trip) to 10 s (a
#: stalled disk), roughly 1-2.5-5 per decade so quantile estimates stay within 2.5x.
DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@final
class LatencyHistogram:
    """A fixed-bucket latency histogram costing one bisect and two additions per sample.

    Plain ints and no locks: it is observed and read from one event loop thread. Bucket
    `i` counts samples `<= buckets_s[i]` (and above the previous bound); one extra bucket
    counts samples above the last bound (`+Inf`). Raises ValueError when `buckets_s` is
    empty, not strictly increasing, or holds a bound that is not positive and finite.
    """

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, buckets_s: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(float(bound) for bound in buckets_s)
        if not bounds:
            raise ValueError("histogram buckets are empty, expected at least one bound")
        for bound in bounds:
            if not (bound > 0.0 and math.isfinite(bound)):
                raise ValueError(f"histogram bound {bound} is not a positive finite number")
        for lower, upper in pairwise(bounds):
            if upper <= lower:
                raise ValueError(f"histogram bounds {lower} then {upper} are not increasing")
        self._bounds: Final = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def __repr__(self) -> str:
        return f"<LatencyHistogram buckets={len(self._bounds)} count={self.count}>"

    def observe(self, seconds: float) -> None:
        """Record one sample of `seconds`."""
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    @property
    def buckets_s(self) -> tuple[float, ...]:
        """The finite bucket upper bounds, in seconds."""
        return self._bounds

    @property
    def count(self) -> int:
        """How many samples were observed."""
        # Summed on read rather than kept, to save the hot path one addition.
        return sum(self._counts)

    @property
    def sum(self) -> float:
        """The sum of every observed sample, in seconds."""
        return self._sum

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, samples at or below it) per bucket, ending with (inf, count)."""
        pairs: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            running += n
            pairs.append((bound, running))
        return pairs

    def quantile(self, q: float) -> float:
        """Estimate the `q` quantile (0 <= q <= 1) in seconds, as Prometheus would.

        Interpolates linearly inside the bucket holding the rank, taking 0 as the lower
        edge of the first bucket; a rank in the `+Inf` bucket reports the last finite
        bound. Returns 0.0 when nothing was observed. Raises ValueError when `q` is
        outside [0, 1].
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is outside [0, 1]")
        total = self.count
        if total == 0:
            return 0.0
        rank = q * total
        below = 0
        lower = 0.0
        for index, n in enumerate(self._counts):
            if n and below + n >= rank:
                if index == len(self._bounds):
                    return self._bounds[-1]
                upper = self._bounds[index]
                return lower + (upper - lower) * (rank - below) / n
            below += n
            if index < len(self._bounds):
                lower = self._bounds[index]
        return self._bounds[-1]  # unreachable: the last non-empty bucket reaches `total`

    def family(self, name: str, help: str) -> HistogramMetricFamily:
        """This histogram as a prometheus_client metric family named `name`.

        Raises ValueError (from prometheus_client) when `name` is not a valid metric name.
        """
        buckets = [(_le(bound), float(n)) for bound, n in self.cumulative()]
        return HistogramMetricFamily(name, help, buckets=buckets, sum_value=self._sum)


def _le(bound: float) -> str:
    """A bucket bound as a Prometheus `le` label value (`+Inf` for the overflow bucket)."""
    return "+Inf" if bound == math.inf else repr(bound)


@final
class StatsCollector:
    """A prometheus_client collector reading a service's plain counters at scrape time.

    `read()` returns the current values; each key becomes the metric `<prefix>_<key>`, a
    counter when the key is in `counters` (exposed with the `_total` suffix whether or
    not the key already ends in it) and a gauge otherwise. `histograms` (read at scrape
    time too, so a live dict works) become histogram metrics named the same way. `help`
    maps keys to help text; a key without one uses the key itself. Raises ValueError
    when `prefix` is not a valid metric name; a bad key raises ValueError on scrape.
    """

    def __init__(
        self,
        prefix: str,
        read: Callable[[], Mapping[str, float | int]],
        *,
        counters: Collection[str] = (),
        help: Mapping[str, str] | None = None,
        histograms: Mapping[str, LatencyHistogram] | None = None,
    ) -> None:
        if not _METRIC_NAME.fullmatch(prefix):
            raise ValueError(f"metric prefix {prefix!r} is not a valid prometheus name")
        self._prefix: Final = prefix
        self._read: Final = read
        self._counters: Final = frozenset(counters)
        self._help: Final[Mapping[str, str]] = dict(help or {})
        self._histograms: Final[Mapping[str, LatencyHistogram]] = (
            histograms if histograms is not None else {}
        )

    def __repr__(self) -> str:
        return (
            f"<StatsCollector prefix={self._prefix} counters={len(self._counters)} "
            f"histograms={len(self._histograms)}>"
        )

    def collect(self) -> Iterator[Metric]:
        """Yield one metric family per value `read()` returns, then one per histogram."""
        for key, value in self._read().items():
            name = f"{self._prefix}_{key}"
            text = self._help.get(key, key)
            if key in self._counters:
                yield CounterMetricFamily(name, text, value=float(value))
            else:
                yield GaugeMetricFamily(name, text, value=float(value))
        for key, histogram in self._histograms.items():
            yield histogram.family(f"{self._prefix}_{key}", self._help.get(key, key))


def new_registry() -> CollectorRegistry:
    """A fresh registry for one service, already holding the process metrics.

    Each service owns its registry (never prometheus_client's global one), so tests and
    several services in one process do not collide.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


def render(registry: Collector) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
