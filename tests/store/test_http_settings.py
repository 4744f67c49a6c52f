"""The store's metrics port keeps limits set by its own settings (`--http-*` flags,
`[store]` keys, POSTOFFICE_STORE_HTTP_* variables), built by core.http's hook."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from postoffice.cli import main
from postoffice.core.config import load
from postoffice.core.errors import ConfigError
from postoffice.core.http import HTTP_LIMITS, http_limits
from postoffice.store.config import StoreConfig


def test_the_http_limits_default_to_nginx_like_values() -> None:
    assert StoreConfig().http_limits() == HTTP_LIMITS
    assert (
        HTTP_LIMITS.max_connections,
        HTTP_LIMITS.idle_timeout_s,
        HTTP_LIMITS.request_timeout_s,
    ) == (512, 60.0, 10.0)


def test_the_http_settings_make_the_metrics_ports_limits() -> None:
    config = StoreConfig(
        http_max_connections=4, http_idle_timeout_s=5.0, http_request_timeout_s=0.0
    )
    assert config.http_limits() == http_limits(
        max_connections=4, idle_timeout_s=5.0, request_timeout_s=0.0
    )


def test_the_http_settings_come_from_the_environment_and_files(tmp_path: Path) -> None:
    path = tmp_path / "po.toml"
    path.write_text("[store]\nhttp_idle_timeout_s = 7.5\n")
    config = load(
        StoreConfig,
        section="store",
        path=path,
        env={"POSTOFFICE_STORE_HTTP_MAX_CONNECTIONS": "9"},
    )
    limits = config.http_limits()
    assert (limits.max_connections, limits.idle_timeout_s) == (9, 7.5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "http_max_connections",
            0,
            r"^setting 'http_max_connections' must be between 1 and 100000, got 0$",
        ),
        (
            "http_idle_timeout_s",
            -1.0,
            r"^setting 'http_idle_timeout_s' must be between 0 and 86400, got -1\.0$",
        ),
        (
            "http_request_timeout_s",
            1e9,
            r"^setting 'http_request_timeout_s' must be between 0 and 86400, got 1000000000\.0$",
        ),
    ],
)
def test_an_http_setting_out_of_range_names_itself(field: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StoreConfig(**{field: value})  # type: ignore[arg-type]  # int or float per field


def test_store_serve_has_a_flag_for_each_http_limit() -> None:
    result = CliRunner().invoke(main, ["store", "serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for flag in ("--http-max-connections", "--http-idle-timeout", "--http-request-timeout"):
        assert flag in result.output
