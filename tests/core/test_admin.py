"""core.admin: live settings checked as the config checks them, and /clients entries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from postoffice.core.admin import changed_settings, connection_entry, settings_of
from postoffice.core.config import check_range
from postoffice.core.httpapi import Response
from postoffice.core.transport import ConnState


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """A config as the services declare theirs."""

    port: int = 1
    limit: int = 10
    timeout_s: float = 1.5
    path: Path = Path("var")

    def __post_init__(self) -> None:
        check_range("limit", self.limit, 1, 100)


LIVE = ("limit", "timeout_s")


def test_live_settings_are_converted_and_applied() -> None:
    new = changed_settings(Settings(), {"limit": "20", "timeout_s": "2.5"}, LIVE)
    assert new == Settings(limit=20, timeout_s=2.5)


@pytest.mark.parametrize(
    ("settings", "status", "message"),
    [
        ({"nope": "1"}, 400, "unknown setting 'nope'"),
        ({"port": "2"}, 403, "setting 'port' cannot change while running, only at start"),
        ({"limit": "many"}, 400, "setting 'limit' must be an integer, got 'many'"),
        ({"timeout_s": "x"}, 400, "setting 'timeout_s' must be a number, got 'x'"),
        ({"limit": "1000"}, 400, "setting 'limit' must be between 1 and 100, got 1000"),
    ],
)
def test_refusals_name_the_setting(settings: dict[str, str], status: int, message: str) -> None:
    refused = changed_settings(Settings(), settings, LIVE)
    assert isinstance(refused, Response)
    assert refused.status == status
    assert json.loads(refused.body)["message"] == message


def test_settings_are_json_values() -> None:
    assert settings_of(Settings()) == {"port": 1, "limit": 10, "timeout_s": 1.5, "path": "var"}


@dataclass
class Conn:
    """What a BaseProtocol connection shows the manager, and what /clients reads."""

    conn_id: int = 7
    peer: str = "127.0.0.1:5000"
    created: float = 100.0
    last_active: float = 140.0
    state: ConnState = ConnState.READING_HEADER
    bytes_in: int = 10
    bytes_out: int = 20
    requests: int = 3

    def can_idle_close(self) -> bool:
        return True

    def on_idle_timeout(self) -> None:
        pass

    def shutdown_requested(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        pass

    def check_deadlines(self, now: float) -> None:
        pass


def test_a_connection_entry_has_what_client_list_has() -> None:
    assert connection_entry(Conn(), 150.0) == {
        "id": 7,
        "addr": "127.0.0.1:5000",
        "age": 50,
        "idle": 10,
        "state": "READING_HEADER",
        "bytes_in": 10,
        "bytes_out": 20,
        "requests": 3,
    }
