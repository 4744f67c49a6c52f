"""The real-process harness itself (tests/integration/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import conftest
from tests.integration.conftest import start_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_server_that_cannot_start_is_reported_with_its_reason(tmp_path: Path) -> None:
    """A server that fails after parsing its flags writes why into its ready file."""
    with pytest.raises(
        AssertionError,
        match=r"^server failed to start: setting 'port' must be between 0 and 65535, got 70000",
    ):
        start_server(tmp_path, "store", "--port", "70000", "--data-dir", str(tmp_path / "data"))


def test_the_default_ports_are_those_of_the_configs() -> None:
    assert {6380, 6381, 7400, 7401} <= conftest.DEFAULT_PORTS
    assert 0 not in conftest.DEFAULT_PORTS


def test_a_server_on_a_default_port_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test server must take port 0: a default port may be a parallel test's. (Every port
    counts as a default here, so no test binds a real default port.)"""
    monkeypatch.setattr(conftest, "DEFAULT_PORTS", frozenset(range(1, 65536)))
    with pytest.raises(AssertionError, match=r"^store listens on its default ports \{'store': \d+"):
        start_server(
            tmp_path, "store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path)
        )
