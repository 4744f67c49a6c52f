"""SIGHUP's reload: live keys handed to the handle and logged, the others logged as
needing a restart, a bad file changing nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from postoffice.office.runcontrol import Reloader
from postoffice.office.simconfig import load_config, shipped_config
from tests.office.fakes import FakeHandle

TEXT = shipped_config("timeout").read_text()


def _reloader(tmp_path: Path) -> tuple[Reloader, FakeHandle, Path]:
    path = tmp_path / "office.ini"
    path.write_text(TEXT)
    handle = FakeHandle()
    reloader = Reloader(
        path,
        handle=handle,
        config=load_config(path, env={}),
        load=lambda p: load_config(p, env={}),
    )
    return reloader, handle, path


def test_live_keys_are_applied_and_the_rest_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader, handle, path = _reloader(tmp_path)
    path.write_text(
        TEXT.replace("N_NANO_SECS = 2500000", "N_NANO_SECS = 1000")
        .replace("EXPLODE_THRESHOLD = 100", "EXPLODE_THRESHOLD = 3")
        .replace("NOF_WORKERS = 10", "NOF_WORKERS = 4")
    )
    with caplog.at_level(logging.INFO):
        reloader.reload()
    assert handle.calls == ["apply_config"]
    assert (reloader.config.n_nano_secs, reloader.config.explode_threshold) == (1000, 3)
    assert reloader.config.nof_workers == 10
    messages = [r.getMessage() for r in caplog.records]
    assert "config key applied key=N_NANO_SECS old=2500000 new=1000" in messages
    assert "config key applied key=EXPLODE_THRESHOLD old=100 new=3" in messages
    assert "config key needs a restart, not applied key=NOF_WORKERS old=10 new=4" in messages


def test_a_bad_file_changes_nothing_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader, handle, path = _reloader(tmp_path)
    before = reloader.config
    path.write_text(TEXT.replace("N_NANO_SECS = 2500000", "N_NANO_SECS = 2500000\nN_NANO_SECS = 1"))
    with caplog.at_level(logging.INFO):
        reloader.reload()
    assert handle.calls == []
    assert reloader.config == before
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "config not reloaded, nothing changed" in record.getMessage()
    assert "duplicate key N_NANO_SECS" in record.getMessage()


def test_an_unchanged_file_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader, handle, _ = _reloader(tmp_path)
    with caplog.at_level(logging.INFO):
        reloader.reload()
    assert handle.calls == []
    assert [r.getMessage() for r in caplog.records] == [
        f"config reloaded, no key changed path={reloader.path}"
    ]
