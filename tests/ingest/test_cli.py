"""`postoffice ingest send`'s progress bar, rendered without a server."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from postoffice.ingest.cli import compressed_text, progress_bar, track_upload


def _render(size: int, *reports: tuple[int, int]) -> str:
    """The bar's one line after the client reported `(done, total)` compressed bytes."""
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False, color_system=None)
    bar = progress_bar(console)
    advance = track_upload(bar, "big.txt", size)
    for done, total in reports:
        advance(done, total)
    console.print(bar.make_tasks_table(bar.tasks))
    return out.getvalue()


def test_finished_bar_shows_the_file_bytes_and_the_compressed_beside() -> None:
    """A 50 MB text file that compresses to 4.9 kB shows 50 MB, not 4.9 kB, as its size."""
    line = _render(50_000_000, (0, 4_900), (4_900, 4_900))
    assert "50.0/50.0 MB" in line
    assert "(compressed 4.9/4.9 kB)" in line
    assert "4.9/4.9 kB " not in line.replace("(compressed 4.9/4.9 kB)", "")


def test_bar_midway_counts_file_bytes_in_the_compressed_proportion() -> None:
    line = _render(50_000_000, (1_225, 4_900))
    assert "12.5/50.0 MB" in line
    assert "(compressed 1.2/4.9 kB)" in line


def test_bar_before_any_report_shows_the_file_size() -> None:
    line = _render(2_000_000)
    assert "0.0/2.0 MB" in line


def test_empty_file_is_complete_when_its_payload_is() -> None:
    line = _render(0, (13, 13))
    assert "0/0 bytes" in line
    assert "(compressed 13/13 bytes)" in line


@pytest.mark.parametrize(
    ("sent", "payload", "text"),
    [
        (0, 999, "(compressed 0/999 bytes)"),
        (500, 1_000, "(compressed 0.5/1.0 kB)"),
        (3_000_000, 7_500_000, "(compressed 3.0/7.5 MB)"),
    ],
)
def test_compressed_text_uses_the_units_of_the_file_bytes(
    sent: int, payload: int, text: str
) -> None:
    assert compressed_text(sent, payload) == text
