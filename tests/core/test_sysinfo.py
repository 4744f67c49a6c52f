"""Tests for core.sysinfo: live readings, parsing of a fake /proc and /sys, output and CLI."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
from click.testing import CliRunner

from postoffice.cli import main
from postoffice.core.sysinfo import (
    UNLIMITED,
    CacheInfo,
    Snapshot,
    as_dict,
    human_size,
    snapshot,
)

SNAPSHOT_KEYS = {"cpu", "memory", "huge_pages", "filesystem", "limits", "runtime"}


@pytest.fixture(scope="module")
def live() -> Snapshot:
    return snapshot(Path.cwd())


class TestLiveSnapshot:
    def test_cpu_counts(self, live: Snapshot) -> None:
        assert live.cpu.logical is not None
        assert live.cpu.logical >= 1
        assert live.cpu.logical == os.cpu_count()
        if live.cpu.physical is not None:
            assert 1 <= live.cpu.physical <= live.cpu.logical

    def test_memory(self, live: Snapshot) -> None:
        assert live.memory.total_bytes is not None
        assert live.memory.total_bytes > 0
        assert live.memory.available_bytes is not None
        assert 0 <= live.memory.available_bytes <= live.memory.total_bytes

    def test_nofile_soft_at_most_hard(self, live: Snapshot) -> None:
        soft, hard = live.limits.nofile_soft, live.limits.nofile_hard
        assert soft is not None
        assert hard is not None
        assert soft >= 1
        assert hard == UNLIMITED or (soft != UNLIMITED and soft <= hard)

    def test_runtime(self, live: Snapshot) -> None:
        assert live.runtime.python_version.count(".") == 2
        assert live.runtime.python_implementation

    def test_filesystem_of_tmp_path(self, tmp_path: Path) -> None:
        fs = snapshot(tmp_path).filesystem
        assert fs.path == str(tmp_path)
        assert fs.total_bytes is not None
        assert fs.total_bytes > 0
        assert fs.free_bytes is not None
        assert 0 <= fs.free_bytes <= fs.total_bytes
        assert fs.mount_point is not None
        assert Path(os.path.realpath(tmp_path)).is_relative_to(fs.mount_point)

    def test_filesystem_of_missing_dir_uses_nearest_parent(self, tmp_path: Path) -> None:
        missing = tmp_path / "not" / "yet"
        fs = snapshot(missing).filesystem
        assert fs.path == str(missing)
        assert fs.total_bytes == snapshot(tmp_path).filesystem.total_bytes
        assert not missing.exists()

    def test_default_data_dir_comes_from_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("POSTOFFICE_DATA_DIR", str(tmp_path / "data"))
        assert snapshot().filesystem.path == str(tmp_path / "data")

    def test_as_dict_is_json_serialisable(self, live: Snapshot) -> None:
        data = json.loads(json.dumps(as_dict(live)))
        assert set(data) == SNAPSHOT_KEYS
        assert data["cpu"]["logical"] == live.cpu.logical
        assert isinstance(data["cpu"]["caches"], list)


def _fake_root(root: Path) -> None:
    files = {
        "proc/meminfo": (
            "MemTotal:       24684436 kB\n"
            "HugePages_Total:      8\n"
            "HugePages_Free:       3\n"
            "Hugepagesize:       2048 kB\n"
            "garbage line\n"
        ),
        "proc/cpuinfo": "processor\t: 0\nmodel name\t: Test CPU 9000\n\nprocessor\t: 1\n",
        "proc/sys/net/core/somaxconn": "4096\n",
        "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n",
        "sys/devices/system/cpu/cpu0/cache/index0/level": "1\n",
        "sys/devices/system/cpu/cpu0/cache/index0/type": "Data\n",
        "sys/devices/system/cpu/cpu0/cache/index0/size": "32K\n",
        "sys/devices/system/cpu/cpu0/cache/index2/level": "2\n",
        "sys/devices/system/cpu/cpu0/cache/index2/type": "Unified\n",
        "sys/devices/system/cpu/cpu0/cache/index2/size": "1024K\n",
        "sys/devices/system/cpu/cpu0/cache/index10/level": "3\n",
        "sys/devices/system/cpu/cpu0/cache/index10/type": "Unified\n",
        "sys/devices/system/cpu/cpu0/cache/index10/size": "8M\n",
        "sys/devices/system/cpu/cpu0/cache/index3/level": "x\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


class TestFakeTree:
    def test_readings_parsed_from_files(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        _fake_root(root)
        snap = snapshot(tmp_path, root=root)
        assert snap.cpu.model == "Test CPU 9000"
        assert snap.cpu.caches == (
            CacheInfo(level=1, type="Data", size_bytes=32 * 1024),
            CacheInfo(level=2, type="Unified", size_bytes=1024 * 1024),
            CacheInfo(level=None, type=None, size_bytes=None),
            CacheInfo(level=3, type="Unified", size_bytes=8 * 1024 * 1024),
        )
        assert snap.huge_pages.total == 8
        assert snap.huge_pages.free == 3
        assert snap.huge_pages.page_size_bytes == 2 * 1024 * 1024
        assert snap.huge_pages.transparent == "madvise"
        assert snap.limits.somaxconn == 4096

    def test_missing_files_give_none(self, tmp_path: Path) -> None:
        snap = snapshot(tmp_path, root=tmp_path / "empty")
        assert snap.cpu.caches == ()
        assert snap.huge_pages.total is None
        assert snap.huge_pages.free is None
        assert snap.huge_pages.page_size_bytes is None
        assert snap.huge_pages.transparent is None
        assert snap.limits.somaxconn is None
        # readings that do not come from the tree are still taken
        assert snap.limits.nofile_soft is not None

    def test_unlimited_rlimit_is_reported_as_unlimited(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def fake_getrlimit(which: int) -> tuple[int, int]:
            return (1024, resource.RLIM_INFINITY)

        monkeypatch.setattr(resource, "getrlimit", fake_getrlimit)
        snap = snapshot(tmp_path)
        assert (snap.limits.nproc_soft, snap.limits.nproc_hard) == (1024, UNLIMITED)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "n/a"),
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (32 * 1024, "32 KiB"),
        (1024 * 1024 - 1, "1 MiB"),
        (8 * 1024**2, "8 MiB"),
        (int(23.4 * 1024**3), "23.4 GiB"),
        (3 * 1024**4, "3 TiB"),
        (2 * 1024**7, "2048 EiB"),
    ],
)
def test_human_size(n: int | None, text: str) -> None:
    assert human_size(n) == text


class TestCli:
    def test_table(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(main, ["sysinfo", "--data-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        for word in ("cpu", "ram total", "huge pages", "filesystem", "open files", "python"):
            assert word in result.output
        assert "iB" in result.output

    def test_json(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(main, ["sysinfo", "--data-dir", str(tmp_path), "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert set(data) == SNAPSHOT_KEYS
        assert set(data["cpu"]) == {"logical", "physical", "model", "caches"}
        assert set(data["filesystem"]) == {
            "path",
            "mount_point",
            "fs_type",
            "total_bytes",
            "free_bytes",
        }
        assert set(data["limits"]) == {
            "nofile_soft",
            "nofile_hard",
            "nproc_soft",
            "nproc_hard",
            "somaxconn",
        }
        assert data["filesystem"]["path"] == str(tmp_path)
        assert data["memory"]["total_bytes"] > 0
