"""Patch directories read back after a crash (patches.recover), driven through ChunkStore
on real files: what a crash leaves in one directory is repaired."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.ingest.test_storage import (
    FID,
    HEX,
    chunk_data,
    ids_lines,
    new_store,
    payload_dir,
    put,
)


class TestRecover:
    def test_patch_without_an_ids_line_is_deleted(self, tmp_path: Path) -> None:
        """A crash between the patch's rename and the ids.list append."""
        store = new_store(tmp_path)
        put(store, 0)
        (payload_dir(tmp_path) / "patch_1.bin").write_bytes(chunk_data(1))
        again = new_store(tmp_path)
        info = again.info(FID)
        assert info is not None
        assert info.committed == frozenset({0})
        assert not (payload_dir(tmp_path) / "patch_1.bin").exists()
        assert not put(again, 1).duplicate

    def test_torn_last_line_is_dropped_and_the_file_repaired(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = new_store(tmp_path)
        put(store, 0)
        put(store, 1)
        ids = payload_dir(tmp_path) / "ids.list"
        whole = ids.read_bytes()
        ids.write_bytes(whole[: len(whole) - 10])  # the second line lost its tail
        with caplog.at_level(logging.WARNING, logger="postoffice.ingest.patches"):
            again = new_store(tmp_path)
        assert f"file_id={HEX}" in caplog.text
        assert "torn last line" in caplog.text
        info = again.info(FID)
        assert info is not None
        assert info.committed == frozenset({0})
        assert not (payload_dir(tmp_path) / "patch_1.bin").exists()
        put(again, 1)
        put(again, 2)
        assert [line.split()[0] for line in ids_lines(tmp_path)] == ["0", "1", "2"]
        assert ids.read_bytes().endswith(b"\n")

    def test_ids_line_without_its_patch_is_dropped(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = new_store(tmp_path)
        for index in range(3):
            put(store, index)
        (payload_dir(tmp_path) / "patch_1.bin").unlink()
        with caplog.at_level(logging.WARNING, logger="postoffice.ingest.patches"):
            again = new_store(tmp_path)
        assert f"file_id={HEX}" in caplog.text
        assert "patch_1.bin is missing" in caplog.text
        info = again.info(FID)
        assert info is not None
        assert info.committed == frozenset({0, 2})
        assert [line.split()[0] for line in ids_lines(tmp_path)] == ["0", "2"]
        assert not put(again, 1).duplicate

    def test_garbage_and_repeated_lines_are_dropped(self, tmp_path: Path) -> None:
        store = new_store(tmp_path)
        put(store, 0)
        ids = payload_dir(tmp_path) / "ids.list"
        first = ids.read_bytes()
        ids.write_bytes(first + b"not a line\n" + first + b"99 " + b"0" * 64 + b"\n")
        again = new_store(tmp_path)
        info = again.info(FID)
        assert info is not None
        assert info.committed == frozenset({0})
        assert ids.read_bytes() == first

    def test_directory_with_only_tmp_files_is_removed(self, tmp_path: Path) -> None:
        """A crash before the first meta.json was durable."""
        folder = payload_dir(tmp_path)
        folder.mkdir(parents=True)
        (folder / "meta.json.0123456789ab.tmp").write_bytes(b"{")
        store = new_store(tmp_path)
        assert store.payloads() == []
        assert not folder.exists()
