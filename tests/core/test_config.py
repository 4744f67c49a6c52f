"""Tests for core.config: source precedence, type conversion, errors and validation helpers."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from postoffice.core.config import (
    Unit,
    bind_retry,
    check_choice,
    check_port,
    check_range,
    check_settings,
    data_dir,
    flag_fields,
    load,
    setting,
    shown_default,
    shown_range,
    shown_value,
)
from postoffice.core.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    """A settings class using every supported field type."""

    host: str = "127.0.0.1"
    port: int = 6380
    idle_timeout_s: float = 30.0
    verbose: bool = False
    files_dir: Path = Path("var/files")
    max_clients: int | None = None
    label: str | None = "main"
    tags: tuple[str, ...] = ()
    weights: tuple[int, ...] = (1,)
    mode: str = "fast"

    def __post_init__(self) -> None:
        check_port("port", self.port)
        check_range("idle_timeout_s", self.idle_timeout_s, 0, None)
        check_choice("mode", self.mode, ("fast", "safe"))


@dataclass(frozen=True, slots=True, kw_only=True)
class RequiredConfig:
    """A settings class with a setting that has no default."""

    name: str
    size: int = 1


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


class TestSources:
    def test_defaults_when_no_source(self) -> None:
        assert load(DemoConfig, section="demo", env={}) == DemoConfig()

    def test_toml_file(self, tmp_path: Path) -> None:
        path = _write(
            tmp_path,
            "po.toml",
            '[demo]\nhost = "0.0.0.0"\nport = 7000\nidle_timeout_s = 5\nverbose = true\n'
            'files_dir = "/srv/files"\nmax_clients = 10\ntags = ["a", "b"]\n'
            "[other]\nunrelated = 1\n",
        )
        cfg = load(DemoConfig, section="demo", path=path, env={})
        assert cfg == DemoConfig(
            host="0.0.0.0",
            port=7000,
            idle_timeout_s=5.0,
            verbose=True,
            files_dir=Path("/srv/files"),
            max_clients=10,
            tags=("a", "b"),
        )
        assert isinstance(cfg.idle_timeout_s, float)

    def test_toml_dotted_section(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.toml", "[office.users]\nport = 7001\n")
        assert load(DemoConfig, section="office.users", path=path, env={}).port == 7001

    def test_toml_file_without_the_section_gives_defaults(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.toml", "[other]\nport = 1\n")
        assert load(DemoConfig, section="demo", path=path, env={}) == DemoConfig()

    @pytest.mark.parametrize("suffix", [".ini", ".cfg", ".conf"])
    def test_ini_file(self, tmp_path: Path, suffix: str) -> None:
        path = _write(
            tmp_path,
            f"po{suffix}",
            "[demo]\nhost = 0.0.0.0\nport = 7000\nverbose = yes\ntags = a, b\n"
            "max_clients = none\nlabel = 100%\n",
        )
        cfg = load(DemoConfig, section="demo", path=path, env={})
        assert cfg == DemoConfig(
            host="0.0.0.0", port=7000, verbose=True, tags=("a", "b"), label="100%"
        )

    def test_ini_default_section_does_not_leak(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.ini", "[DEFAULT]\nother_service_key = 1\n[demo]\nport = 1\n")
        assert load(DemoConfig, section="demo", path=path, env={}).port == 1

    def test_env_overrides_file(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.toml", "[demo]\nport = 7000\nhost = 'h'\n")
        env = {"POSTOFFICE_DEMO_PORT": "7001", "POSTOFFICE_OTHER_PORT": "x", "HOME": "/root"}
        cfg = load(DemoConfig, section="demo", path=path, env=env)
        assert (cfg.port, cfg.host) == (7001, "h")

    def test_overrides_override_env(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.ini", "[demo]\nport = 7000\n")
        env = {"POSTOFFICE_DEMO_PORT": "7001", "POSTOFFICE_DEMO_HOST": "e"}
        cfg = load(DemoConfig, section="demo", path=path, env=env, overrides={"port": 7002})
        assert (cfg.port, cfg.host) == (7002, "e")

    def test_none_overrides_are_ignored(self) -> None:
        env = {"POSTOFFICE_DEMO_PORT": "7001"}
        cfg = load(DemoConfig, section="demo", env=env, overrides={"port": None, "host": None})
        assert (cfg.port, cfg.host) == (7001, "127.0.0.1")

    def test_string_overrides_are_converted(self) -> None:
        cfg = load(DemoConfig, section="demo", env={}, overrides={"port": "7003", "tags": "x,y"})
        assert (cfg.port, cfg.tags) == (7003, ("x", "y"))

    def test_shared_env_sits_between_file_and_section_env(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "c.toml", '[demo]\nhost = "file"\nlabel = "file"\n')
        shared = {"host": "SHARED_HOST", "label": "SHARED_LABEL"}
        env = {"SHARED_HOST": "shared", "SHARED_LABEL": "shared", "POSTOFFICE_DEMO_LABEL": "own"}
        config = load(DemoConfig, section="demo", path=path, env=env, shared_env=shared)
        assert (config.host, config.label) == ("shared", "own")

    def test_empty_shared_env_is_unset(self) -> None:
        config = load(DemoConfig, section="demo", env={"X": ""}, shared_env={"host": "X"})
        assert config.host == "127.0.0.1"

    def test_shared_env_for_no_field_is_a_bug(self) -> None:
        with pytest.raises(TypeError, match=r"^DemoConfig has no field 'nope' for X$"):
            load(DemoConfig, section="demo", env={}, shared_env={"nope": "X"})

    def test_env_section_name_with_punctuation(self) -> None:
        env = {"POSTOFFICE_OFFICE_USERS_PORT": "9"}
        assert load(DemoConfig, section="office.users", env=env).port == 9

    def test_env_none_reads_os_environ(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(os, "environ", {"POSTOFFICE_DEMO_PORT": "7004"})
        assert load(DemoConfig, section="demo").port == 7004


def _from_env(field: str, value: str) -> DemoConfig:
    return load(DemoConfig, section="demo", env={f"POSTOFFICE_DEMO_{field.upper()}": value})


class TestConversion:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("1", True),
            ("0", False),
            ("true", True),
            ("FALSE", False),
            ("Yes", True),
            ("no", False),
            ("on", True),
            ("OFF", False),
            (" true ", True),
        ],
    )
    def test_bool_spellings(self, text: str, expected: bool) -> None:
        assert _from_env("verbose", text).verbose is expected

    @pytest.mark.parametrize(
        ("field", "text", "expected"),
        [
            ("port", "6390", 6390),
            ("port", " 6390 ", 6390),
            ("idle_timeout_s", "2.5", 2.5),
            ("idle_timeout_s", "3", 3.0),
            ("host", "example.org", "example.org"),
            ("host", "", ""),
            ("files_dir", "/data/files", Path("/data/files")),
            ("max_clients", "12", 12),
            ("max_clients", "", None),
            ("max_clients", "none", None),
            ("max_clients", "None", None),
            ("label", "", None),
            ("label", "NONE", None),
            ("label", "x", "x"),
            ("tags", "a,b,c", ("a", "b", "c")),
            ("tags", " a , b ,", ("a", "b")),
            ("tags", "", ()),
            ("tags", "solo", ("solo",)),
            ("weights", "1, 2,3", (1, 2, 3)),
        ],
    )
    def test_string_conversion(self, field: str, text: str, expected: object) -> None:
        assert getattr(_from_env(field, text), field) == expected

    def test_toml_string_for_tuple_is_split(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.toml", "[demo]\ntags = 'a,b'\nport = '7'\n")
        cfg = load(DemoConfig, section="demo", path=path, env={})
        assert (cfg.tags, cfg.port) == (("a", "b"), 7)

    def test_native_values_from_overrides(self) -> None:
        cfg = load(
            DemoConfig,
            section="demo",
            env={},
            overrides={
                "idle_timeout_s": 4,
                "files_dir": Path("/p"),
                "tags": ["x"],
                "weights": (2, 3),
                "verbose": True,
            },
        )
        assert cfg.idle_timeout_s == 4.0
        assert cfg.files_dir == Path("/p")
        assert cfg.tags == ("x",)
        assert cfg.weights == (2, 3)
        assert cfg.verbose is True


class TestErrors:
    def test_unknown_key_in_toml(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.toml", "[demo]\nprot = 1\n")
        message = f"unknown setting 'prot' in [demo] of {path}"
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            load(DemoConfig, section="demo", path=path, env={})

    def test_unknown_key_in_ini(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.ini", "[demo]\nprot = 1\n")
        message = f"unknown setting 'prot' in [demo] of {path}"
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            load(DemoConfig, section="demo", path=path, env={})

    def test_unknown_key_in_env(self) -> None:
        with pytest.raises(
            ConfigError,
            match=r"^unknown setting 'prot' in environment POSTOFFICE_DEMO_PROT$",
        ):
            load(DemoConfig, section="demo", env={"POSTOFFICE_DEMO_PROT": "1"})

    def test_unknown_key_in_overrides(self) -> None:
        with pytest.raises(ConfigError, match=r"^unknown setting 'prot' in overrides$"):
            load(DemoConfig, section="demo", env={}, overrides={"prot": 1})

    @pytest.mark.parametrize(
        ("field", "text", "expected"),
        [
            ("port", "abc", "an integer"),
            ("port", "1.5", "an integer"),
            ("port", "", "an integer"),
            ("idle_timeout_s", "fast", "a number"),
            ("verbose", "maybe", "a boolean (1/0/true/false/yes/no/on/off)"),
            ("verbose", "", "a boolean (1/0/true/false/yes/no/on/off)"),
            ("files_dir", "", "a path"),
            ("max_clients", "many", "an integer or none"),
            ("weights", "1,x", "a comma-separated list of integers"),
        ],
    )
    def test_bad_value_in_env(self, field: str, text: str, expected: str) -> None:
        var = f"POSTOFFICE_DEMO_{field.upper()}"
        message = f"setting '{field}' from environment {var}: expected {expected}, got '{text}'"
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            _from_env(field, text)

    def test_bad_value_in_ini(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.ini", "[demo]\nport = abc\n")
        message = f"setting 'port' from [demo] of {path}: expected an integer, got 'abc'"
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            load(DemoConfig, section="demo", path=path, env={})

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            ("port = true", "setting 'port' from {src}: expected an integer, got True"),
            ("port = 1.0", "setting 'port' from {src}: expected an integer, got 1.0"),
            ("host = 5", "setting 'host' from {src}: expected a string, got 5"),
            ("verbose = 1", "setting 'verbose' from {src}: expected a boolean"),
            ("tags = 3", "setting 'tags' from {src}: expected a comma-separated list"),
        ],
    )
    def test_bad_native_value_in_toml(self, tmp_path: Path, line: str, message: str) -> None:
        path = _write(tmp_path, "po.toml", f"[demo]\n{line}\n")
        expected = message.format(src=f"[demo] of {path}")
        with pytest.raises(ConfigError, match=rf"^{re.escape(expected)}"):
            load(DemoConfig, section="demo", path=path, env={})

    def test_bad_value_in_overrides(self) -> None:
        with pytest.raises(
            ConfigError, match=r"^setting 'port' from overrides: expected an integer, got 'x'$"
        ):
            load(DemoConfig, section="demo", env={}, overrides={"port": "x"})

    def test_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.toml"
        message = f"config file {path} does not exist"
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            load(DemoConfig, section="demo", path=path, env={})

    def test_unknown_suffix(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.yaml", "port: 1\n")
        message = f"config file {path} has suffix '.yaml', expected .toml, .ini, .cfg or .conf"
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            load(DemoConfig, section="demo", path=path, env={})

    def test_invalid_toml(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.toml", "[demo\n")
        message = f"config file {path} is not valid TOML: "
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}.+$"):
            load(DemoConfig, section="demo", path=path, env={})

    def test_invalid_ini(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.ini", "port = 1\n")
        message = f"config file {path} is not valid INI: "
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}"):
            load(DemoConfig, section="demo", path=path, env={})

    def test_toml_section_not_a_table(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "po.toml", "demo = 5\n")
        message = f"[demo] of {path} must be a table, got 5"
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            load(DemoConfig, section="demo", path=path, env={})

    def test_missing_required_setting(self) -> None:
        with pytest.raises(ConfigError, match=r"^missing setting 'name' in \[req\]$"):
            load(RequiredConfig, section="req", env={})
        assert load(RequiredConfig, section="req", env={"POSTOFFICE_REQ_NAME": "n"}).name == "n"

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"port": 70000}, "setting 'port' must be between 0 and 65535, got 70000"),
            ({"idle_timeout_s": -1}, "setting 'idle_timeout_s' must be at least 0, got -1.0"),
            ({"mode": "slow"}, "setting 'mode' must be one of 'fast', 'safe', got 'slow'"),
        ],
    )
    def test_post_init_errors_propagate(self, overrides: dict[str, object], message: str) -> None:
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            load(DemoConfig, section="demo", env={}, overrides=overrides)

    def test_not_a_dataclass(self) -> None:
        with pytest.raises(TypeError, match=r"^load expects a dataclass type, got <class 'int'>$"):
            load(int, section="demo", env={})

    def test_unsupported_field_type(self) -> None:
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Bad:
            ratio: complex = 1j

        with pytest.raises(TypeError, match=r"^Bad\.ratio has unsupported type"):
            load(Bad, section="bad", env={})


class TestHelpers:
    @pytest.mark.parametrize(
        ("value", "low", "high"),
        [(0, 0, 10), (10, 0, 10), (5, None, None), (-3, None, 0), (1e9, 1, None)],
    )
    def test_check_range_accepts(self, value: float, low: float | None, high: float | None) -> None:
        check_range("n", value, low, high)

    @pytest.mark.parametrize(
        ("value", "low", "high", "message"),
        [
            (11, 0, 10, "setting 'n' must be between 0 and 10, got 11"),
            (-1, 0, 10, "setting 'n' must be between 0 and 10, got -1"),
            (0, 1, None, "setting 'n' must be at least 1, got 0"),
            (2.5, None, 2, "setting 'n' must be at most 2, got 2.5"),
            (float("nan"), 0, None, "setting 'n' must be at least 0, got nan"),
        ],
    )
    def test_check_range_rejects(
        self, value: float, low: float | None, high: float | None, message: str
    ) -> None:
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            check_range("n", value, low, high)

    @pytest.mark.parametrize("port", [0, 1, 6380, 65535])
    def test_check_port_accepts(self, port: int) -> None:
        check_port("port", port)

    @pytest.mark.parametrize("port", [-1, 65536, 70000])
    def test_check_port_rejects(self, port: int) -> None:
        message = f"setting 'port' must be between 0 and 65535, got {port}"
        with pytest.raises(ConfigError, match=rf"^{re.escape(message)}$"):
            check_port("port", port)

    def test_check_choice(self) -> None:
        check_choice("mode", "b", {"a", "b"})
        with pytest.raises(ConfigError, match=r"^setting 'mode' must be one of 'a', 'b', got 'c'$"):
            check_choice("mode", "c", frozenset({"b", "a"}))

    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ({}, Path("var")),
            ({"POSTOFFICE_DATA_DIR": ""}, Path("var")),
            ({"POSTOFFICE_DATA_DIR": "/srv/po"}, Path("/srv/po")),
        ],
    )
    def test_data_dir(self, env: dict[str, str], expected: Path) -> None:
        assert data_dir(env) == expected

    def test_data_dir_reads_os_environ(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(os, "environ", {"POSTOFFICE_DATA_DIR": "/x"})
        assert data_dir() == Path("/x")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeclaredConfig:
    """Settings declared with `setting()`: a flag, help, unit and range each."""

    host: str = setting("127.0.0.1", help="Address.")
    max_bytes: int = setting(2 << 20, help="Largest.", unit="bytes", low=1024, high=16 << 20)
    wait_s: float = setting(0.5, help="Wait.", unit="seconds", low=0.01)
    depth: int | None = setting(None, help="Depth.", high=9)
    mode: str = setting("fast", help="Mode.", choices=("fast", "safe"))
    durable: bool = setting(True, help="Skip it.", flag="--no-sync")
    secret_bytes: int = setting(64, help="Not on the command line.", flag=None, low=1)
    plain: int = 3

    def __post_init__(self) -> None:
        check_settings(self)


class TestDeclaredSettings:
    def test_defaults_are_the_declared_ones(self) -> None:
        config = DeclaredConfig()
        assert (config.max_bytes, config.wait_s, config.depth, config.durable) == (
            2 << 20,
            0.5,
            None,
            True,
        )

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            (
                {"max_bytes": 1023},
                "setting 'max_bytes' must be between 1024 and 16777216, got 1023",
            ),
            ({"wait_s": 0.0}, "setting 'wait_s' must be at least 0.01, got 0.0"),
            ({"depth": 10}, "setting 'depth' must be at most 9, got 10"),
            ({"mode": "slow"}, "setting 'mode' must be one of 'fast', 'safe', got 'slow'"),
            ({"secret_bytes": 0}, "setting 'secret_bytes' must be at least 1, got 0"),
        ],
    )
    def test_check_settings_enforces_the_declared_bounds(
        self, overrides: dict[str, object], message: str
    ) -> None:
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            load(DeclaredConfig, section="demo", env={}, overrides=overrides)

    def test_check_settings_accepts_the_bounds_and_none(self) -> None:
        DeclaredConfig(max_bytes=1024, wait_s=0.01, depth=9)
        DeclaredConfig(max_bytes=16 << 20, depth=None)

    def test_flag_fields_in_declaration_order_with_their_names(self) -> None:
        flags = flag_fields(DeclaredConfig)
        assert [(f.field.name, f.name, f.kind) for f in flags] == [
            ("host", "--host", str),
            ("max_bytes", "--max-bytes", int),
            ("wait_s", "--wait", float),
            ("depth", "--depth", int),
            ("mode", "--mode", str),
            ("durable", "--no-sync", bool),
        ]
        assert not flags[-1].sets

    def test_flag_of_an_unparsable_type_is_refused(self) -> None:
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Tagged:
            tags: tuple[str, ...] = setting((), help="Tags.")

        with pytest.raises(TypeError, match=r"^Tagged\.tags has type .* which no flag parses$"):
            flag_fields(Tagged)

    @pytest.mark.parametrize(
        ("value", "unit", "shown"),
        [
            (None, "count", "none"),
            (True, "count", "on"),
            (300.0, "seconds", "300"),
            (0.01, "seconds", "0.01"),
            (1e9, "count", "1000000000"),
            (1024, "bytes", "1 KiB"),
            (1000, "bytes", "1000"),
            (3 << 20, "bytes", "3 MiB"),
            (1536, "bytes", "1536"),
            (64 << 30, "bytes", "64 GiB"),
            (1 << 50, "bytes", "1 PiB"),
            (1024, "count", "1024"),
            (Path("var"), "count", "var"),
        ],
    )
    def test_shown_value(self, value: object, unit: Unit, shown: str) -> None:
        assert shown_value(value, unit) == shown

    def test_shown_default_and_range(self) -> None:
        shown = {
            f.name: (shown_default(f), shown_range(f.spec)) for f in flag_fields(DeclaredConfig)
        }
        assert shown == {
            "--host": ("127.0.0.1", None),
            "--max-bytes": ("2 MiB", "1 KiB..16 MiB"),
            "--wait": ("0.5", "at least 0.01"),
            "--depth": ("none", "at most 9"),
            "--mode": ("fast", "fast|safe"),
            "--no-sync": ("off", None),
        }


class TestBindRetry:
    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ({}, True),
            ({"POSTOFFICE_BIND_RETRY": ""}, True),
            ({"POSTOFFICE_BIND_RETRY": "1"}, True),
            ({"POSTOFFICE_BIND_RETRY": "0"}, False),
            ({"POSTOFFICE_BIND_RETRY": "no"}, False),
        ],
    )
    def test_retry_unless_switched_off(self, env: dict[str, str], expected: bool) -> None:
        assert bind_retry(env) is expected

    def test_a_value_that_is_no_boolean_is_refused(self) -> None:
        with pytest.raises(
            ConfigError,
            match=r"^environment POSTOFFICE_BIND_RETRY must be a boolean \(1/0/.*\), got 'maybe'$",
        ):
            bind_retry({"POSTOFFICE_BIND_RETRY": "maybe"})
