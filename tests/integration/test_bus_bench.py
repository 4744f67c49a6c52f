"""`postoffice bus bench` against a real server: the JSON it prints, its errors."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from tests.integration.conftest import POSTOFFICE, env_without_postoffice
from tests.integration.test_bus_server import Bus, served_bus, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FIELDS = {
    "channel", "size", "count", "reliable", "num_slots", "latency_median_us", "latency_p99_us",
    "latency_min_us", "latency_max_us", "received", "drops", "elapsed_s", "messages_per_s",
    "gb_per_s",
}  # fmt: skip


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    yield from served_bus(tmp_path)


def bench(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*POSTOFFICE, "bus", "bench", "--socket", str(socket_path), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env_without_postoffice(),
    )


@pytest.mark.parametrize("reliable", [False, True])
def test_bench_prints_sane_figures_as_json(bus: Bus, reliable: bool) -> None:
    args = ["--size", "256", "--count", "300", "--slots", "16", "--json"]
    done = bench(bus.socket, *args, *(["--reliable"] if reliable else []))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == FIELDS
    assert (result["size"], result["count"], result["num_slots"]) == (256, 300, 16)
    assert result["reliable"] is reliable
    assert 0 < result["latency_min_us"] <= result["latency_median_us"]
    assert result["latency_median_us"] <= result["latency_p99_us"] <= result["latency_max_us"]
    assert result["elapsed_s"] > 0
    assert result["messages_per_s"] > 0
    assert result["gb_per_s"] == pytest.approx(result["messages_per_s"] * 256 / 1e9, rel=1e-9)
    # Every message of the throughput phase was read or counted as dropped (the last is
    # always read); a reliable run drops none.
    assert 0 < result["received"] <= 300
    assert result["received"] + result["drops"] == 300
    if reliable:
        assert result["drops"] == 0
    until(lambda: len(bus.files()) == 8, "the bench channels removed")


def test_bench_prints_a_table_by_default(bus: Bus) -> None:
    done = bench(bus.socket, "--size", "64", "--count", "50")
    assert done.returncode == 0, done.stderr
    assert "bus bench: 50 x 64 bytes, unreliable, 64 slots" in done.stdout
    for row in ("one-way latency, median", "one-way latency, p99", "messages/s", "GB/s"):
        assert row in done.stdout


def test_bench_refuses_a_message_smaller_than_its_header(bus: Bus) -> None:
    done = bench(bus.socket, "--size", "8")
    assert done.returncode == 2
    assert "Invalid value for '--size': 8 is not in the range 20<=x<=1073741824." in done.stderr


def test_bench_refused_by_the_server_exits_1(bus: Bus) -> None:
    """A channel larger than the server's --max-buffer-size is refused, not a crash."""
    done = bench(bus.socket, "--size", str(1 << 30), "--slots", "65536", "--count", "1")
    assert done.returncode == 1, done.stderr
    assert "exceeds the limit" in done.stderr


def test_bench_without_a_server_exits_3(tmp_path: Path) -> None:
    done = bench(tmp_path / "none.sock", "--count", "1")
    assert done.returncode == 3
    assert "cannot reach the bus server" in done.stderr
