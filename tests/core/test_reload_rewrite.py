"""Tests for core.rewrite: settings written back into TOML and INI files (CONFIG REWRITE),
the file's other lines and comments kept, the replacement atomic."""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from postoffice.command.commands import cmd_config
from postoffice.command.config import CommandConfig
from postoffice.command.keyspace import Deferred, settle
from postoffice.command.server import CommandServer
from postoffice.core.config import load, setting
from postoffice.core.errors import ConfigError
from postoffice.core.resp import OK, Array, Error, bulk
from postoffice.core.rewrite import (
    NEW_FILE_MODE,
    file_keys,
    rewrite,
    rewrite_config,
    rewrite_values,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    port: int = setting(6380, help="Port.")
    max_connections: int = setting(100, help="Clients.", live=True)
    idle_timeout_s: float = setting(300.0, help="Idle.", live=True)
    metrics_port: int | None = setting(6381, help="Metrics.")
    password: str | None = setting(None, help="Password.", secret=True)
    data_dir: Path = setting(Path("var"), help="Data.")
    fsync: bool = setting(True, help="Fsync.")


TOML = """\
# Post Office settings
[command]
# how many clients at once
max_connections = 100  # raised for the launch
port = 6380
password = "old"

[store]
port = 7400  # the store keeps its own
"""

INI = """\
; Post Office settings
[command]
; how many clients at once
max_connections = 100
password = old
hosts = a,
    b

; the store keeps its own
[store]
port = 7400
"""


def test_rewrite_values_are_the_settings_off_their_defaults() -> None:
    config = DemoConfig(max_connections=200, metrics_port=None, data_dir=Path("/srv/po"))
    assert rewrite_values(config) == {
        "max_connections": 200,
        "metrics_port": "none",
        "data_dir": "/srv/po",
    }


def test_rewrite_values_keep_the_keys_the_file_has_even_at_their_default() -> None:
    values = rewrite_values(DemoConfig(), frozenset({"port", "password"}))
    assert values == {"port": 6380, "password": None}  # None: remove the key


def test_toml_keeps_comments_and_other_sections(tmp_path: Path) -> None:
    path = tmp_path / "po.toml"
    path.write_text(TOML)
    config = DemoConfig(max_connections=250, idle_timeout_s=5.5, fsync=False)
    rewrite_config(path, "command", config)
    text = path.read_text()
    assert text.startswith("# Post Office settings\n[command]\n# how many clients at once\n")
    assert "max_connections = 250" in text
    assert 'password = "old"' not in text  # unset now: removed
    assert "port = 7400  # the store keeps its own" in text
    assert load(DemoConfig, section="command", path=path, env={}) == config


def test_ini_keeps_comments_order_and_other_sections(tmp_path: Path) -> None:
    path = tmp_path / "po.ini"
    path.write_text(INI)
    rewrite(path, "command", {"max_connections": 250, "password": None, "hosts": None, "port": 1})
    assert path.read_text() == (
        "; Post Office settings\n"
        "[command]\n"
        "; how many clients at once\n"
        "max_connections = 250\n"
        "port = 1\n"
        "\n"
        "; the store keeps its own\n"
        "[store]\n"
        "port = 7400\n"
    )


def test_ini_round_trip_loads_the_same_settings(tmp_path: Path) -> None:
    path = tmp_path / "po.ini"
    path.write_text("[command]\nport = 6380\nmax_connections = 3\n")
    config = DemoConfig(
        max_connections=250, idle_timeout_s=0.25, metrics_port=None, password="p%w", fsync=False
    )
    rewrite_config(path, "command", config)
    assert load(DemoConfig, section="command", path=path, env={}) == config


def test_a_missing_section_is_added_after_the_others(tmp_path: Path) -> None:
    path = tmp_path / "po.ini"
    path.write_text("[store]\nport = 7400")
    rewrite(path, "command", {"port": 6390})
    assert path.read_text() == "[store]\nport = 7400\n\n[command]\nport = 6390\n"


def test_a_missing_file_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "po.toml"
    rewrite(path, "command", {"port": 6390})
    assert path.read_text() == "[command]\nport = 6390\n"
    assert stat.S_IMODE(path.stat().st_mode) == NEW_FILE_MODE


def test_the_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "po.toml"
    path.write_text("[command]\n")
    path.chmod(0o640)
    rewrite(path, "command", {"port": 6390})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_symbolic_link_is_followed_and_stays(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text("[command]\nport = 1\n")
    link = tmp_path / "po.toml"
    link.symlink_to(real)
    rewrite(link, "command", {"port": 2})
    assert link.is_symlink()
    assert real.read_text() == "[command]\nport = 2\n"


def test_a_file_that_does_not_parse_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "po.toml"
    path.write_text("[command\nport = 1\n")
    with pytest.raises(ConfigError, match=r"^config file .*po\.toml is not valid TOML: "):
        rewrite(path, "command", {"port": 2})
    assert path.read_text() == "[command\nport = 1\n"


def test_an_unknown_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has suffix '\.yaml', expected \.toml, \.ini"):
        rewrite(tmp_path / "po.yaml", "command", {"port": 2})


def test_a_failed_write_leaves_the_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "po.ini"
    path.write_text("[command]\nport = 1\n")

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ConfigError, match=r"^cannot rewrite config file .*No space left"):
        rewrite(path, "command", {"port": 2})
    assert path.read_text() == "[command]\nport = 1\n"
    assert sorted(os.listdir(tmp_path)) == ["po.ini"]


def test_file_keys_lists_what_the_section_sets(tmp_path: Path) -> None:
    toml, ini = tmp_path / "po.toml", tmp_path / "po.ini"
    toml.write_text(TOML)
    ini.write_text(INI)
    assert file_keys(toml, "command") == {"max_connections", "port", "password"}
    assert file_keys(ini, "command") == {"max_connections", "password", "hosts"}
    assert file_keys(ini, "ingest") == frozenset()
    assert file_keys(tmp_path / "none.toml", "command") == frozenset()


@pytest.mark.parametrize("suffix", [".toml", ".ini"])
def test_command_settings_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"command{suffix}"
    path.write_text("[command]\nport = 6390\n")
    config = CommandConfig(
        port=6390,
        metrics_port=None,
        max_connections=77,
        idle_timeout_s=12.5,
        rate_limit_per_s=1000.0,
        requirepass="s3cret",
        store="127.0.0.1:7400",
    )
    rewrite_config(path, "command", config)
    assert load(CommandConfig, section="command", path=path, env={}) == config


# -- CONFIG REWRITE on the command server (no sockets) ----------------------------------


class _Client:
    conn_id = 1
    name = lib_name = lib_ver = b""
    authenticated = True
    protocol = 2
    db = 0

    def describe(self) -> str:
        return "id=1"

    def close_when_done(self, reason: str, *, linger: bool = True) -> None:
        raise AssertionError("CONFIG never closes its client")


async def _config(server: CommandServer, *args: bytes) -> object:
    answer = cmd_config(server, _Client(), [b"CONFIG", *args])
    if isinstance(answer, Deferred):
        await asyncio.wait([answer.future], timeout=10)
        return settle(answer)
    return answer


async def test_config_rewrite_without_a_config_file_is_refused() -> None:
    server = CommandServer(CommandConfig(metrics_port=None))
    reply = await _config(server, b"REWRITE")
    assert reply == Error(code="ERR", message="The server is running without a config file")


async def test_config_rewrite_writes_what_config_set_changed(tmp_path: Path) -> None:
    path = tmp_path / "command.toml"
    path.write_text("# ours\n[command]\nmax_connections = 5\n")
    server = CommandServer(CommandConfig(metrics_port=None), config_file=path)
    server.pool.start()
    try:
        assert await _config(server, b"SET", b"maxclients", b"77", b"timeout", b"9") == OK
        assert await _config(server, b"REWRITE") == OK
    finally:
        server.pool.close()
    assert path.read_text().startswith("# ours\n[command]\nmax_connections = 77\n")
    assert load(CommandConfig, section="command", path=path, env={}) == server.config


async def test_config_rewrite_that_cannot_write_says_why(tmp_path: Path) -> None:
    path = tmp_path / "command.toml"
    path.write_text("[command\n")  # broken since the start: not overwritten
    server = CommandServer(CommandConfig(metrics_port=None), config_file=path)
    reply = await _config(server, b"REWRITE")
    assert isinstance(reply, Error)
    assert reply.message.startswith("Rewriting config file: config file ")
    assert path.read_text() == "[command\n"


async def test_config_help_lists_rewrite() -> None:
    reply = await _config(CommandServer(CommandConfig(metrics_port=None)), b"HELP")
    assert isinstance(reply, Array)
    assert reply.items is not None
    assert bulk("REWRITE -- write the running settings back to the --config file.") in reply.items
