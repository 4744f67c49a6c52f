"""Tests for core.reload: the diff of two settings, the plan of a reload, and SIGHUP's work
(read, apply the live changes, log the rest) against a fake server."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from postoffice.command.config import CommandConfig
from postoffice.command.server import CONFIG_NAMES, changed_config
from postoffice.core.config import check_settings, declared, load, setting
from postoffice.core.connections import ClientLimitSettings
from postoffice.core.errors import ConfigError, PostOfficeError
from postoffice.core.reload import Change, Reloads, apply_log_level, diff, plan, setting_name
from postoffice.ingest.config import IngestConfig
from postoffice.store.config import StoreConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    """Live and restart-only settings, a secret, a plain field and a check across fields."""

    port: int = setting(6380, help="Port.", low=0, high=65535)
    max_connections: int = setting(100, help="Clients.", low=1, high=1000, live=True)
    idle_timeout_s: float = setting(300.0, help="Idle.", unit="seconds", low=0, live=True)
    max_bytes: int = setting(16 << 20, help="Bytes.", unit="bytes", flag="--max-size", live=True)
    password: str | None = setting(None, help="Password.", live=True, secret=True)
    floor: int = 1
    backlog: int = 10

    def __post_init__(self) -> None:
        check_settings(self)
        if self.max_connections < self.floor:
            raise ConfigError(f"max_connections {self.max_connections} below floor {self.floor}")


class FakeServer:
    """The Reconfigurable seam: records what it was asked to run with."""

    def __init__(self, config: DemoConfig, *, fail: bool = False) -> None:
        self.config = config
        self.applied: list[DemoConfig] = []
        self.fail = fail

    async def reconfigure(self, new: DemoConfig) -> None:
        if self.fail:
            raise PostOfficeError("cannot bind data port 7104: address in use")
        self.applied.append(new)
        self.config = new


def test_setting_name_is_the_flag_without_dashes_or_the_field_name() -> None:
    fields = {f.name: f for f in dataclasses.fields(DemoConfig)}
    assert setting_name(fields["max_connections"]) == "max-connections"
    assert setting_name(fields["idle_timeout_s"]) == "idle-timeout"
    assert setting_name(fields["max_bytes"]) == "max-size"
    assert setting_name(fields["backlog"]) == "backlog"


def test_diff_names_each_changed_setting_in_declaration_order_with_shown_values() -> None:
    old = DemoConfig()
    new = DemoConfig(port=7000, max_connections=200, max_bytes=32 << 20, backlog=20)
    assert diff(old, new) == (
        Change(field="port", name="port", old="6380", new="7000", live=False),
        Change(field="max_connections", name="max-connections", old="100", new="200", live=True),
        Change(field="max_bytes", name="max-size", old="16 MiB", new="32 MiB", live=True),
        Change(field="backlog", name="backlog", old="10", new="20", live=False),
    )


def test_diff_of_equal_settings_is_empty() -> None:
    assert diff(DemoConfig(), DemoConfig()) == ()


def test_diff_hides_a_secret_value() -> None:
    (change,) = diff(DemoConfig(), DemoConfig(password="hunter2"))
    assert change.describe() == "password (hidden) -> (hidden)"


def test_diff_refuses_two_different_classes() -> None:
    with pytest.raises(TypeError, match=r"^cannot compare DemoConfig with StoreConfig$"):
        diff(DemoConfig(), StoreConfig())


def test_change_describes_itself_as_the_log_says_it() -> None:
    change = Change(
        field="max_connections", name="max-connections", old="100", new="200", live=True
    )
    assert change.describe() == "max-connections 100 -> 200"


def test_plan_applies_live_changes_and_keeps_restart_only_values() -> None:
    running = DemoConfig()
    step = plan(running, DemoConfig(port=7000, max_connections=200, idle_timeout_s=5.0))
    assert step.config == DemoConfig(max_connections=200, idle_timeout_s=5.0)
    assert [c.field for c in step.applied] == ["max_connections", "idle_timeout_s"]
    assert [c.field for c in step.restart] == ["port"]


def test_plan_without_live_changes_keeps_the_running_settings() -> None:
    running = DemoConfig()
    step = plan(running, DemoConfig(port=1))
    assert step.config is running
    assert step.applied == ()


def test_plan_refuses_live_values_the_kept_settings_reject() -> None:
    running = DemoConfig(floor=50, max_connections=60)
    # The file lowers both; the floor needs a restart, so the kept floor rejects 10.
    with pytest.raises(ConfigError, match=r"^max_connections 10 below floor 50$"):
        plan(running, DemoConfig(floor=5, max_connections=10))


@pytest.mark.parametrize("cls", [CommandConfig, StoreConfig, IngestConfig])
def test_every_service_has_live_and_restart_only_settings(cls: type) -> None:
    live = {f.name for f in dataclasses.fields(cls) if (s := declared(f)) and s.live}
    assert "output_hard_limit_bytes" in live
    assert "host" not in live


def test_every_live_command_setting_has_a_config_set_name() -> None:
    """The primary pushes a reload to its workers as CONFIG SET pairs."""
    live = {f.name for f in dataclasses.fields(CommandConfig) if (s := declared(f)) and s.live}
    assert live <= set(CONFIG_NAMES.values())


def test_restart_only_command_settings_are_the_ones_fixed_at_start() -> None:
    restart = {
        f.name
        for f in dataclasses.fields(CommandConfig)
        if (s := declared(f)) is not None and not s.live
    }
    assert {"port", "host", "tls_cert", "workers", "store_dir"} <= restart


def _live_names(cls: type) -> list[str]:
    shared = {f.name for f in dataclasses.fields(ClientLimitSettings)}
    return [
        setting_name(f)
        for f in dataclasses.fields(cls)
        if (s := declared(f)) is not None
        and s.live
        and (cls is ClientLimitSettings or f.name not in shared)
    ]


def test_the_readme_lists_exactly_the_live_settings_of_each_service() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = {
        "every one": ClientLimitSettings,
        "command": CommandConfig,
        "store": StoreConfig,
        "ingest": IngestConfig,
    }
    for label, cls in rows.items():
        names = ", ".join(f"`{name}`" for name in _live_names(cls))
        assert f"| {label} | {names} |" in readme, label


def test_a_no_flag_setting_goes_by_its_field_name() -> None:
    (fsync,) = [f for f in dataclasses.fields(IngestConfig) if f.name == "fsync"]
    assert setting_name(fsync) == "fsync"


class TestReloads:
    async def test_applies_live_changes_and_logs_each(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        server = FakeServer(DemoConfig())
        reloads: Reloads[DemoConfig] = Reloads()
        reloads.attach(server)
        reloads.bind(lambda: DemoConfig(max_connections=200, port=7000))
        with caplog.at_level(logging.INFO, logger="postoffice.core.reload"):
            step = await reloads.reload()
        assert step is not None
        assert server.config == DemoConfig(max_connections=200)
        assert server.applied == [DemoConfig(max_connections=200)]
        assert "config reloaded: max-connections 100 -> 200" in caplog.messages
        assert "config reload: port 6380 -> 7000 needs a restart, not applied" in caplog.messages

    async def test_a_source_that_does_not_load_changes_nothing(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        server = FakeServer(DemoConfig())

        def bad() -> DemoConfig:
            raise ConfigError("unknown setting 'max_clientz' in [demo] of demo.toml")

        reloads: Reloads[DemoConfig] = Reloads()
        reloads.attach(server)
        reloads.bind(bad)
        with caplog.at_level(logging.INFO, logger="postoffice.core.reload"):
            assert await reloads.reload() is None
        assert server.applied == []
        assert (
            "config not reloaded, nothing changed: unknown setting 'max_clientz' in [demo] of "
            "demo.toml" in caplog.messages
        )

    async def test_a_change_the_server_refuses_is_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        server = FakeServer(DemoConfig(), fail=True)
        reloads: Reloads[DemoConfig] = Reloads()
        reloads.attach(server)
        reloads.bind(lambda: DemoConfig(max_connections=5))
        with caplog.at_level(logging.INFO, logger="postoffice.core.reload"):
            assert await reloads.reload() is None
        assert server.config == DemoConfig()
        assert "config not reloaded: cannot bind data port 7104: address in use" in caplog.messages

    async def test_nothing_changed_is_said(self, caplog: pytest.LogCaptureFixture) -> None:
        reloads: Reloads[DemoConfig] = Reloads()
        reloads.attach(FakeServer(DemoConfig()))
        reloads.bind(DemoConfig)
        with caplog.at_level(logging.INFO, logger="postoffice.core.reload"):
            step = await reloads.reload()
        assert step is not None
        assert step.applied == step.restart == ()
        assert "config reloaded: nothing changed" in caplog.messages

    async def test_before_the_server_runs_nothing_is_read(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        reads: list[int] = []
        reloads: Reloads[DemoConfig] = Reloads()
        reloads.bind(lambda: reads.append(1) or DemoConfig())  # type: ignore[func-returns-value]  # counts the calls
        assert await reloads.reload() is None
        assert reads == []

    async def test_reads_the_file_as_it_is_now_with_the_start_flags_winning(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "demo.toml"
        path.write_text("[demo]\nmax_connections = 100\nidle_timeout_s = 30\n")
        flags = {"idle_timeout_s": 7.0}

        def read() -> DemoConfig:
            return load(DemoConfig, section="demo", path=path, env={}, overrides=flags)

        server = FakeServer(read())
        reloads: Reloads[DemoConfig] = Reloads()
        reloads.attach(server)
        reloads.bind(read)
        path.write_text("[demo]\nmax_connections = 300\nidle_timeout_s = 60\n")
        await reloads.reload()
        assert (server.config.max_connections, server.config.idle_timeout_s) == (300, 7.0)
        path.write_text("[demo]\nmax_connections = 5000\n")  # out of range: nothing changes
        assert await reloads.reload() is None
        assert server.config.max_connections == 300


def test_log_level_is_a_live_setting_config_set_takes_in_any_case() -> None:
    config = changed_config(CommandConfig(), [("loglevel", "debug")])
    assert config.log_level == "DEBUG"
    with pytest.raises(ConfigError, match=r"^setting 'log_level' must be one of 'CRITICAL'"):
        changed_config(CommandConfig(), [("loglevel", "loud")])


def test_apply_log_level_sets_the_root_level() -> None:
    root = logging.getLogger()
    before = root.level
    try:
        apply_log_level("warning")
        assert root.level == logging.WARNING
    finally:
        root.setLevel(before)
