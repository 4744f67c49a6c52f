"""One-shot snapshot of the machine: CPUs, caches, RAM, disk and limits.

Core layer: best-effort probes; a reading that cannot be taken is None, shown as "n/a".
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import resource
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import psutil

from postoffice.core import config

__all__ = [
    "UNLIMITED",
    "CacheInfo",
    "CpuInfo",
    "FilesystemInfo",
    "HugePagesInfo",
    "LimitsInfo",
    "MemoryInfo",
    "RuntimeInfo",
    "Snapshot",
    "as_dict",
    "human_size",
    "print_snapshot",
    "snapshot",
]

UNLIMITED: Final = -1
"""The value a resource limit has when the kernel enforces none (RLIM_INFINITY)."""

NOT_AVAILABLE: Final = "n/a"

_SIZE_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_SUFFIX_SHIFT: Final[Mapping[str, int]] = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheInfo:
    """One CPU cache seen by cpu0: level 1-3, type (Data, Instruction, Unified), size."""

    level: int | None
    type: str | None
    size_bytes: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuInfo:
    """CPU counts, model name and the caches of cpu0."""

    logical: int | None
    physical: int | None
    model: str | None
    caches: tuple[CacheInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryInfo:
    """RAM and swap, in bytes."""

    total_bytes: int | None
    available_bytes: int | None
    swap_total_bytes: int | None
    swap_free_bytes: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HugePagesInfo:
    """Explicit huge pages (counts and page size) and the transparent hugepage mode."""

    total: int | None
    free: int | None
    page_size_bytes: int | None
    transparent: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FilesystemInfo:
    """The filesystem holding `path` (or its nearest existing parent)."""

    path: str
    mount_point: str | None
    fs_type: str | None
    total_bytes: int | None
    free_bytes: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsInfo:
    """Process limits (soft, hard; UNLIMITED means no limit) and the listen backlog cap."""

    nofile_soft: int | None
    nofile_hard: int | None
    nproc_soft: int | None
    nproc_hard: int | None
    somaxconn: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeInfo:
    """Operating system, kernel release and the Python running us."""

    system: str | None
    kernel: str | None
    python_version: str
    python_implementation: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything `snapshot` reads, grouped as the table prints it."""

    cpu: CpuInfo
    memory: MemoryInfo
    huge_pages: HugePagesInfo
    filesystem: FilesystemInfo
    limits: LimitsInfo
    runtime: RuntimeInfo


def snapshot(
    data_dir: str | os.PathLike[str] | None = None, *, root: str | os.PathLike[str] = "/"
) -> Snapshot:
    """Read the machine now; `data_dir` None means `config.data_dir()`.

    `root` prefixes the procfs and sysfs files read directly (tests point it at a fake
    tree); psutil, resource and platform readings ignore it. Raises nothing: every reading
    that fails is None.
    """
    base = pathlib.Path(root)
    meminfo = _read_meminfo(base / "proc/meminfo")
    target = config.data_dir() if data_dir is None else pathlib.Path(data_dir)
    return Snapshot(
        cpu=_cpu(base),
        memory=_memory(),
        huge_pages=HugePagesInfo(
            total=meminfo.get("HugePages_Total"),
            free=meminfo.get("HugePages_Free"),
            page_size_bytes=meminfo.get("Hugepagesize"),
            transparent=_thp_mode(base / "sys/kernel/mm/transparent_hugepage/enabled"),
        ),
        filesystem=_filesystem(target),
        limits=_limits(base),
        runtime=RuntimeInfo(
            system=platform.system() or None,
            kernel=platform.release() or None,
            python_version=platform.python_version(),
            python_implementation=platform.python_implementation(),
        ),
    )


def as_dict(snap: Snapshot) -> dict[str, object]:
    """Return `snap` as nested dicts and lists of str, int and None, ready for json.dumps."""
    result: dict[str, object] = {}
    for field in dataclasses.fields(snap):
        result[field.name] = _jsonable(getattr(snap, field.name))
    return result


def human_size(n: int | None) -> str:
    """Format a byte count with binary units: 512 -> "512 B", 32768 -> "32 KiB", None -> "n/a"."""
    if n is None:
        return NOT_AVAILABLE
    value = float(n)
    unit = 0
    while abs(value) >= 1024 and unit < len(_SIZE_UNITS) - 1:
        value /= 1024
        unit += 1
    # 1023.96 KiB rounds to "1024.0 KiB"; promote so it reads "1 MiB".
    if abs(round(value, 1)) >= 1024 and unit < len(_SIZE_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{n} B"
    text = f"{value:.1f}".removesuffix(".0")
    return f"{text} {_SIZE_UNITS[unit]}"


def print_snapshot(*, data_dir: str | None, as_json: bool) -> None:
    """Print a snapshot to stdout: one indented JSON object, or a rich table."""
    snap = snapshot(data_dir)
    if as_json:
        print(json.dumps(as_dict(snap), indent=2))
        return
    # Imported here so `postoffice sysinfo --json` and library users do not pay for rich.
    from rich.console import Console
    from rich.table import Table

    table = Table(title="postoffice sysinfo")
    table.add_column("group", style="bold")
    table.add_column("reading")
    table.add_column("value", overflow="fold")
    for group, rows in _table_rows(snap):
        for i, (reading, value) in enumerate(rows):
            table.add_row(group if i == 0 else "", reading, value)
        table.add_section()
    Console().print(table)


def _table_rows(snap: Snapshot) -> list[tuple[str, list[tuple[str, str]]]]:
    """Group the snapshot into (group, [(reading, shown value)]) for the table."""
    cpu, mem, huge, fs, lim, rt = (
        snap.cpu,
        snap.memory,
        snap.huge_pages,
        snap.filesystem,
        snap.limits,
        snap.runtime,
    )
    cache_rows = [
        (f"L{_show(c.level)} {(c.type or NOT_AVAILABLE).lower()} cache", human_size(c.size_bytes))
        for c in cpu.caches
    ]
    return [
        (
            "cpu",
            [
                ("model", _show(cpu.model)),
                ("logical cpus", _show(cpu.logical)),
                ("physical cores", _show(cpu.physical)),
                *cache_rows,
            ],
        ),
        (
            "memory",
            [
                ("ram total", human_size(mem.total_bytes)),
                ("ram available", human_size(mem.available_bytes)),
                ("swap total", human_size(mem.swap_total_bytes)),
                ("swap free", human_size(mem.swap_free_bytes)),
            ],
        ),
        (
            "huge pages",
            [
                ("total", _show(huge.total)),
                ("free", _show(huge.free)),
                ("page size", human_size(huge.page_size_bytes)),
                ("transparent", _show(huge.transparent)),
            ],
        ),
        (
            "filesystem",
            [
                ("data dir", fs.path),
                ("mount point", _show(fs.mount_point)),
                ("type", _show(fs.fs_type)),
                ("total", human_size(fs.total_bytes)),
                ("free", human_size(fs.free_bytes)),
            ],
        ),
        (
            "limits",
            [
                ("open files", f"{_limit(lim.nofile_soft)} / {_limit(lim.nofile_hard)}"),
                ("processes", f"{_limit(lim.nproc_soft)} / {_limit(lim.nproc_hard)}"),
                ("somaxconn", _show(lim.somaxconn)),
            ],
        ),
        (
            "runtime",
            [
                ("system", _show(rt.system)),
                ("kernel", _show(rt.kernel)),
                ("python", f"{rt.python_implementation} {rt.python_version}"),
            ],
        ),
    ]


def _show(value: object) -> str:
    return NOT_AVAILABLE if value is None else str(value)


def _limit(value: int | None) -> str:
    return "unlimited" if value == UNLIMITED else _show(value)


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _read_text(path: pathlib.Path) -> str | None:
    """Return the stripped text of `path`, or None if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _parse_size(text: str | None) -> int | None:
    """Parse a sysfs cache size such as "32K", "32768K" or "8M" into bytes."""
    if not text:
        return None
    text = text.strip().upper().removesuffix("B")
    suffix = text[-1:] if text[-1:].isalpha() else ""
    number = _parse_int(text.removesuffix(suffix) if suffix else text)
    if number is None or suffix not in _SUFFIX_SHIFT:
        return None
    return number << _SUFFIX_SHIFT[suffix]


def _read_meminfo(path: pathlib.Path) -> dict[str, int]:
    """Parse /proc/meminfo into name -> value; values with a "kB" unit become bytes."""
    text = _read_text(path)
    result: dict[str, int] = {}
    for line in (text or "").splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts:
            continue
        number = _parse_int(parts[0])
        if number is None:
            continue
        unit = parts[1].lower() if len(parts) > 1 else ""
        result[name.strip()] = number * 1024 if unit == "kb" else number
    return result


def _thp_mode(path: pathlib.Path) -> str | None:
    """Return the bracketed choice of "always [madvise] never", or None."""
    text = _read_text(path)
    if text is None:
        return None
    start, end = text.find("["), text.find("]")
    if 0 <= start < end:
        return text[start + 1 : end]
    return text or None


def _cpu(base: pathlib.Path) -> CpuInfo:
    try:
        physical = psutil.cpu_count(logical=False)
    except (OSError, psutil.Error):
        physical = None
    return CpuInfo(
        logical=os.cpu_count(),
        physical=physical,
        model=_cpu_model(base / "proc/cpuinfo"),
        caches=_caches(base / "sys/devices/system/cpu/cpu0/cache"),
    )


def _cpu_model(path: pathlib.Path) -> str | None:
    """Return the first "model name" (x86, most arm64) or "Processor"/"cpu" line in cpuinfo."""
    text = _read_text(path)
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), value.strip())
    # Case matters: x86 also has "processor : 0", which is an index, not a name.
    for key in ("model name", "Processor", "cpu model", "cpu"):
        if key in fields:
            return fields[key]
    return platform.processor() or None


def _caches(cache_dir: pathlib.Path) -> tuple[CacheInfo, ...]:
    try:
        entries = [p for p in cache_dir.iterdir() if p.name.startswith("index")]
    except OSError:
        return ()
    entries.sort(key=lambda p: _parse_int(p.name.removeprefix("index")) or 0)
    return tuple(
        CacheInfo(
            level=_parse_int(_read_text(p / "level")),
            type=_read_text(p / "type") or None,
            size_bytes=_parse_size(_read_text(p / "size")),
        )
        for p in entries
    )


def _memory() -> MemoryInfo:
    total: int | None
    available: int | None
    swap_total: int | None
    swap_free: int | None
    try:
        vm = psutil.virtual_memory()
        total, available = int(vm.total), int(vm.available)
    except (OSError, psutil.Error):
        total = available = None
    try:
        sw = psutil.swap_memory()
        swap_total, swap_free = int(sw.total), int(sw.free)
    except (OSError, psutil.Error):
        swap_total = swap_free = None
    return MemoryInfo(
        total_bytes=total,
        available_bytes=available,
        swap_total_bytes=swap_total,
        swap_free_bytes=swap_free,
    )


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
    """Walk up from `path` (made absolute) to the first directory that exists."""
    current = pathlib.Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _filesystem(data_dir: pathlib.Path) -> FilesystemInfo:
    existing = pathlib.Path(os.path.realpath(_nearest_existing(data_dir)))
    mount_point: str | None = None
    fs_type: str | None = None
    try:
        partitions = psutil.disk_partitions(all=True)
    except (OSError, psutil.Error):
        partitions = []
    for part in partitions:
        mount = pathlib.Path(part.mountpoint)
        # `>=`: when mounts are stacked on one point, the last listed is the visible one.
        if existing.is_relative_to(mount) and (
            mount_point is None or len(part.mountpoint) >= len(mount_point)
        ):
            mount_point, fs_type = part.mountpoint, part.fstype or None
    total: int | None
    free: int | None
    try:
        usage = shutil.disk_usage(existing)
        total, free = int(usage.total), int(usage.free)
    except OSError:
        total = free = None
    return FilesystemInfo(
        path=os.path.abspath(data_dir),
        mount_point=mount_point,
        fs_type=fs_type,
        total_bytes=total,
        free_bytes=free,
    )


def _rlimit(which: int) -> tuple[int | None, int | None]:
    try:
        soft, hard = resource.getrlimit(which)
    except (OSError, ValueError):
        return None, None
    return (
        UNLIMITED if soft == resource.RLIM_INFINITY else soft,
        UNLIMITED if hard == resource.RLIM_INFINITY else hard,
    )


def _limits(base: pathlib.Path) -> LimitsInfo:
    nofile_soft, nofile_hard = _rlimit(resource.RLIMIT_NOFILE)
    nproc_soft, nproc_hard = _rlimit(resource.RLIMIT_NPROC)
    return LimitsInfo(
        nofile_soft=nofile_soft,
        nofile_hard=nofile_hard,
        nproc_soft=nproc_soft,
        nproc_hard=nproc_hard,
        somaxconn=_parse_int(_read_text(base / "proc/sys/net/core/somaxconn")),
    )
