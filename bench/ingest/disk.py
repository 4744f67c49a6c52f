"""The work dir's disk: its counters from /proc/diskstats, read around every timed run."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Final, final

_SECTOR_BYTES: Final = 512  # /proc/diskstats counts 512-byte sectors, whatever the device


@final
@dataclasses.dataclass(frozen=True, slots=True)
class DiskCounters:
    """Cumulative counters of one block device since boot."""

    written_bytes: int
    busy_ms: int  # time with at least one request in flight ("io_ticks")
    flushes: int  # cache flush requests completed (0 on kernels before 5.5)


def disk_of(path: Path) -> str | None:
    """The name in /proc/diskstats of the whole disk holding `path` (the disk, not its
    partition: flushes are counted on the disk), or None for a file system on no block
    device (tmpfs, overlay)."""
    st_dev = os.stat(path).st_dev
    try:
        node = Path(f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}").resolve(strict=True)
    except OSError:
        return None
    if (node / "partition").exists():
        node = node.parent
    return node.name


def read_counters(disk: str | None) -> DiskCounters | None:
    """The disk's counters now, or None when `disk` is None or not listed."""
    if disk is None:
        return None
    try:
        with open("/proc/diskstats") as stats:
            for line in stats:
                fields = line.split()
                if len(fields) >= 14 and fields[2] == disk:
                    return DiskCounters(
                        written_bytes=int(fields[9]) * _SECTOR_BYTES,
                        busy_ms=int(fields[12]),
                        flushes=int(fields[18]) if len(fields) >= 19 else 0,
                    )
    except OSError:
        return None
    return None
