"""The ingest server as a real process on a disk that fills up (a small tmpfs, mounted
when the tests run as root; skipped otherwise)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from postoffice.ingest.errors import ErrorCode
from postoffice.ingest.messages import Ack, ErrorReply, FileId, Query, Status, UploadState
from postoffice.ingest.protocol import encode
from tests.integration.conftest import ServerProcess
from tests.integration.test_ingest import Ingest, exchange, raw_chunk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Serve = Callable[..., ServerProcess]

DISK_BYTES = 4 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES, unmounted when the test ends (after its servers stop)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mountpoint)],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], timeout=10, check=False)


def used_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def test_a_one_chunk_upload_that_does_not_fit_is_refused_and_leaves_nothing(
    small_disk: Path, serve: Serve, tmp_path: Path
) -> None:
    """Its output does not fit the disk: the chunk is answered STORAGE (not an ACK that
    says published), nothing of it stays on the disk, and a file that fits is published."""
    ingest = Ingest(tmp_path, x=1)
    ingest.data_dir = small_disk
    ingest.files = small_disk / "files"
    serve("ingest", *ingest.args())
    before = used_bytes(small_disk)
    content = os.urandom(64 * 1024) * 96  # 6 MiB: more than the disk, 64 KiB compressed
    data = zstandard.ZstdCompressor(level=1).compress(content)
    assert len(data) < 256 * 1024
    big_id = FileId(os.urandom(16))
    replies = exchange(
        ingest.data_base,
        raw_chunk(big_id, 0, 1, data, name="big.bin", request_id=1)
        + encode(Query(file_id=big_id), 2),
        2,
    )
    assert len(replies) == 2
    by_id = dict(replies)
    refused = by_id[1]
    assert isinstance(refused, ErrorReply), refused
    assert refused.code is ErrorCode.STORAGE
    assert "No space left on device" in refused.message
    status = by_id[2]
    assert isinstance(status, Status)
    assert status.state is UploadState.UNKNOWN  # neither published nor stored
    assert sorted(p.name for p in ingest.files.iterdir()) == []
    assert used_bytes(small_disk) - before < 64 * 1024  # the partial output is gone

    small = zstandard.ZstdCompressor().compress(b"it fits\n" * 1000)
    replies = exchange(
        ingest.data_base, raw_chunk(os.urandom(16), 0, 1, small, name="small.txt"), 1
    )
    ack = replies[0][1]
    assert isinstance(ack, Ack)
    assert ack.complete
    assert (ingest.files / "small.txt").read_bytes() == b"it fits\n" * 1000
