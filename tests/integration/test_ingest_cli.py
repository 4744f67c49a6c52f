"""`postoffice ingest send` as a user runs it, against a real ingest server."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import POSTOFFICE, ServerProcess, env_without_postoffice
from tests.integration.test_ingest import Ingest

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]


def test_send_progress_shows_the_file_bytes_and_the_compressed(
    serve: Serve, tmp_path: Path
) -> None:
    """A 5 MB file of one repeated line compresses to some hundred bytes; the bar shows 5 MB."""
    ingest = Ingest(tmp_path, x=1)
    serve("ingest", *ingest.args())
    source = tmp_path / "repeated.txt"
    source.write_bytes(b"the same line, over and over again\n" * (5_000_000 // 35 + 1))
    source.write_bytes(source.read_bytes()[:5_000_000])
    (tmp_path / "work").mkdir()
    done = subprocess.run(
        [*POSTOFFICE, "ingest", "send", str(source), "--sys-base", str(ingest.sys_base)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_without_postoffice() | {"COLUMNS": "200", "TMPDIR": str(tmp_path / "work")},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "published as repeated.txt (5000000 bytes" in done.stdout
    assert "5.0/5.0 MB (compressed " in done.stderr
    compressed = re.search(r"\(compressed (\d+)/(\d+) bytes\)", done.stderr)
    assert compressed is not None, done.stderr
    assert compressed.group(1) == compressed.group(2)
    assert 0 < int(compressed.group(2)) < 5_000
    assert (ingest.files / "repeated.txt").read_bytes() == source.read_bytes()
