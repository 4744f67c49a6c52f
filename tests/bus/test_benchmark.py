"""The figures of `postoffice bus bench` (bus.benchmark): percentiles and the summary."""

from __future__ import annotations

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusUsageError
from postoffice.bus.benchmark import MIN_SIZE, percentile, run, summarize


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([5.0], 0.5, 5.0),
        ([5.0], 0.99, 5.0),
        ([1.0, 2.0], 0.5, 1.0),
        ([1.0, 2.0, 3.0], 0.5, 2.0),
        ([float(n) for n in range(1, 101)], 0.99, 99.0),
        ([float(n) for n in range(1, 101)], 1.0, 100.0),
        ([float(n) for n in range(1, 1001)], 0.99, 990.0),
        ([3.0, 4.0], 0.0, 3.0),
    ],
)
def test_percentile_is_the_nearest_rank(
    values: list[float], fraction: float, expected: float
) -> None:
    assert percentile(values, fraction) == expected


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(BusUsageError, match=r"^a percentile of no values$"):
        percentile([], 0.5)


def test_percentile_fraction_outside_0_to_1_is_refused() -> None:
    with pytest.raises(BusUsageError, match=r"^a percentile's fraction is 0\.\.1, got 1\.5$"):
        percentile([1.0], 1.5)


def test_summary_turns_raw_figures_into_rates() -> None:
    result = summarize(
        channel="c", size=1000, count=4, reliable=True, num_slots=8,
        latencies_ns=[4000, 1000, 3000, 2000], received=4, drops=0, elapsed_ns=2_000_000,
    )  # fmt: skip
    assert result.latency_median_us == 2.0
    assert result.latency_p99_us == 4.0
    assert (result.latency_min_us, result.latency_max_us) == (1.0, 4.0)
    assert result.elapsed_s == 0.002
    assert result.messages_per_s == 2000.0
    assert result.gb_per_s == pytest.approx(2e-3)


def test_summary_refuses_a_run_that_took_no_time() -> None:
    with pytest.raises(BusUsageError, match=r"^a run's elapsed time is positive, got 0 ns$"):
        summarize(
            channel="c", size=20, count=1, reliable=False, num_slots=1, latencies_ns=[1],
            received=1, drops=0, elapsed_ns=0,
        )  # fmt: skip


def test_a_message_too_small_for_the_header_is_refused_before_connecting() -> None:
    with pytest.raises(
        BusUsageError, match=rf"^a benchmark message is at least {MIN_SIZE} bytes, got 8$"
    ):
        run(None, size=8, count=1, reliable=False, num_slots=4)


def test_a_run_of_no_messages_is_refused() -> None:
    with pytest.raises(BusUsageError, match=r"^a benchmark sends at least 1 message, got 0$"):
        run(None, size=MIN_SIZE, count=0, reliable=False, num_slots=4)
