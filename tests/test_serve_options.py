"""The flags of `postoffice <service> serve`: made from the config dataclasses, once.

What --help shows (each default, each range) is read back from the help text and checked
against the dataclass: its default, and what its `__post_init__` accepts and refuses.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import pytest
from click.testing import CliRunner

from postoffice.cli import main
from postoffice.command.config import CommandConfig
from postoffice.core import config as core_config
from postoffice.core import launch, logs
from postoffice.core.errors import ConfigError
from postoffice.ingest.config import IngestConfig
from postoffice.store.config import StoreConfig

SERVICES: dict[str, type[Any]] = {
    "command": CommandConfig,
    "ingest": IngestConfig,
    "store": StoreConfig,
}
#: Options of `serve` that are no setting of the config dataclass.
NOT_SETTINGS = {"--config", "--ready-file", "--log-level", "--log-json", "--help", "-h"}
EXTRA = {"command": {"--no-metrics", "--worker-channel"}}
#: Other settings a bound needs to be valid on its own (the last data port is data-base + x - 1).
PROBE_WITH: dict[tuple[str, str], dict[str, object]] = {("ingest", "data_base"): {"x": 1}}

_SIZES = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50}


def _serve(service: str) -> click.Command:
    group = main.commands[service]
    assert isinstance(group, click.Group)
    return group.commands["serve"]


def _helps(command: click.Command) -> dict[str, tuple[click.Option, str]]:
    """Each option of `command` by its first flag, with the help text --help shows for it."""
    ctx = click.Context(command, info_name="serve")
    out: dict[str, tuple[click.Option, str]] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if isinstance(param, click.Option) and record is not None:
            out[param.opts[0]] = (param, record[1])
    return out


def _shown(help_text: str) -> tuple[str, str | None]:
    """The `[default: X; R]` of a help text: X and R (None when no range is shown)."""
    found = re.search(r"\[default: ([^;\]]*)(?:; ([^\]]*))?\]$", help_text)
    assert found is not None, help_text
    return found.group(1), found.group(2)


def _number(text: str) -> float:
    """`16 MiB` -> 16777216, `300` -> 300, `0.01` -> 0.01."""
    value, _, suffix = text.partition(" ")
    return float(value) * (_SIZES[suffix] if suffix else 1)


def _bounds(shown: str) -> tuple[float | None, float | None]:
    if shown.startswith("at least "):
        return _number(shown.removeprefix("at least ")), None
    if shown.startswith("at most "):
        return None, _number(shown.removeprefix("at most "))
    low, high = shown.split("..")
    return _number(low), _number(high)


def _settings() -> Iterator[tuple[str, dataclasses.Field[object], click.Option, str]]:
    """(service, config field, its option, its help) for every option that is a setting."""
    for service, cls in SERVICES.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for flag, (option, help_text) in _helps(_serve(service)).items():
            if flag in NOT_SETTINGS | EXTRA.get(service, set()):
                continue
            assert option.name in fields, f"{service} serve {flag} is no field of {cls.__name__}"
            yield service, fields[option.name], option, help_text


SETTINGS = list(_settings())
IDS = [f"{service}-{option.opts[0]}" for service, _, option, _ in SETTINGS]


def test_every_serve_option_but_the_common_ones_is_a_setting() -> None:
    names = {(service, option.opts[0]) for service, _, option, _ in SETTINGS}
    assert ("store", "--max-request-size") in names
    assert ("ingest", "--no-fsync") in names
    assert ("command", "--durability") in names


@pytest.mark.parametrize(("service", "field", "option", "help_text"), SETTINGS, ids=IDS)
def test_help_shows_the_dataclass_default(
    service: str, field: dataclasses.Field[object], option: click.Option, help_text: str
) -> None:
    default = getattr(SERVICES[service](), field.name)  # what an unset flag leaves
    shown, _ = _shown(help_text)
    assert option.default is None  # an unset flag falls through to env, file, default
    if isinstance(default, bool):
        flag_sets = option.flag_value
        assert shown == ("on" if default == flag_sets else "off")
    elif default is None:
        assert shown == "none" or shown.startswith("<data-dir>/")
    elif isinstance(default, (int, float)):
        assert _number(shown) == default
    else:
        assert shown == str(default)


@pytest.mark.parametrize(("service", "field", "option", "help_text"), SETTINGS, ids=IDS)
def test_range_in_help_is_what_the_dataclass_enforces(
    service: str, field: dataclasses.Field[object], option: click.Option, help_text: str
) -> None:
    cls = SERVICES[service]
    base = PROBE_WITH.get((service, field.name), {})
    _, shown = _shown(help_text)
    if isinstance(option.type, click.Choice):
        for choice in option.type.choices:
            cls(**base, **{field.name: choice})
        with pytest.raises(ConfigError, match=rf"^setting '{field.name}' must be one of "):
            cls(**base, **{field.name: "bogus"})
        return
    if shown is None:
        return
    low, high = _bounds(shown)
    kind = int if isinstance(getattr(cls(), field.name), int) else float
    for bound, outside in ((low, -math.inf), (high, math.inf)):
        if bound is None:
            continue
        value = kind(bound)
        cls(**base, **{field.name: value})  # the bound itself is allowed
        beyond = (
            value + (1 if outside > 0 else -1) if kind is int else math.nextafter(value, outside)
        )
        with pytest.raises(ConfigError, match=rf"^setting '{field.name}' must be "):
            cls(**base, **{field.name: beyond})


def test_settings_with_a_range_show_it() -> None:
    """A setting the dataclass bounds shows its bounds; the brief's examples, literally."""
    for service, field, _option, help_text in SETTINGS:
        spec = core_config.declared(field)
        assert spec is not None
        if spec.low is not None or spec.high is not None:
            assert _shown(help_text)[1] is not None, (service, field.name)
    store = _helps(_serve("store"))
    assert store["--max-request-size"][1].endswith("[default: 16 MiB; 1 KiB..16 MiB]")
    assert store["--max-connections"][1].endswith("[default: 10000; 1..1000000]")
    assert store["--idle-timeout"][1].endswith("[default: 300; 0..86400]")


@pytest.fixture
def reloaded_store_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """postoffice.store.cli made again after the test changed a default; made afresh after."""
    import postoffice.store.cli as store_cli

    yield store_cli
    monkeypatch.undo()
    importlib.reload(store_cli)


@pytest.mark.parametrize(
    ("field", "flag", "default", "shown"),
    [
        ("idle_timeout_s", "--idle-timeout", 123.0, "[default: 123; 0..86400]"),
        ("max_request_bytes", "--max-request-size", 2 << 20, "[default: 2 MiB; 1 KiB..16 MiB]"),
        ("port", "--port", 7999, "[default: 7999; 0..65535]"),
    ],
)
def test_changing_a_default_in_config_changes_the_help(
    reloaded_store_cli: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    flag: str,
    default: object,
    shown: str,
) -> None:
    """The help has no copy of its own: the store's CLI, made again, shows the new default."""
    declared = StoreConfig.__dataclass_fields__[field]
    monkeypatch.setattr(declared, "default", default)
    store_cli = importlib.reload(reloaded_store_cli)
    result = CliRunner().invoke(
        store_cli.store, ["serve", "--help"], terminal_width=400, max_content_width=400
    )
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.lstrip().startswith(flag))
    assert line.endswith(shown)


# -- the layers: defaults < file < POSTOFFICE_<SERVICE>_* < flags, through the real CLI -----


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The configs `serve` loads; the server itself is never started."""
    configs: list[object] = []
    real_load = core_config.load

    def spy(cls: type[Any], **kwargs: Any) -> Any:
        config = real_load(cls, **kwargs)
        configs.append(config)
        return config

    monkeypatch.setattr(core_config, "load", spy)
    monkeypatch.setattr(launch, "run", lambda main, **kwargs: None)
    monkeypatch.setattr(launch, "raise_fd_limit", lambda: None)
    monkeypatch.setattr(logs, "setup", lambda **kwargs: None)
    return configs


def _invoke(args: list[str], env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output


def test_layers_store(tmp_path: Path, loaded: list[object]) -> None:
    conf = tmp_path / "po.toml"
    conf.write_text(
        '[store]\nport = 7500\nidle_timeout_s = 10\nmax_connections = 42\ndurability = "interval"\n'
    )
    env = {"POSTOFFICE_STORE_IDLE_TIMEOUT_S": "5", "POSTOFFICE_STORE_PORT": "7600"}
    _invoke(["store", "serve", "--config", str(conf), "--port", "7777"], env)
    (config,) = loaded
    assert isinstance(config, StoreConfig)
    assert config.port == 7777  # flag > env > file
    assert config.idle_timeout_s == 5  # env > file
    assert config.max_connections == 42  # file > default
    assert config.durability == "interval"
    assert config.max_request_bytes == StoreConfig().max_request_bytes  # default


def test_layers_command(tmp_path: Path, loaded: list[object]) -> None:
    conf = tmp_path / "po.ini"
    conf.write_text("[command]\nreuse_port = true\nthreads = 8\nrate_limit_per_s = 50\n")
    env = {"POSTOFFICE_COMMAND_THREADS": "6"}
    _invoke(["command", "serve", "--config", str(conf), "--rate-limit", "70"], env)
    (config,) = loaded
    assert isinstance(config, CommandConfig)
    assert config.reuse_port is True  # an unset flag does not undo the file
    assert config.threads == 6
    assert config.rate_limit_per_s == 70
    assert config.metrics_port == 6381


def test_layers_ingest_flags(tmp_path: Path, loaded: list[object]) -> None:
    conf = tmp_path / "po.toml"
    conf.write_text("[ingest]\nfsync = false\nx = 3\n")
    _invoke(["ingest", "serve", "--config", str(conf), "--via-part"], {})
    _invoke(["ingest", "serve", "--x", "5", "--no-fsync"], {"POSTOFFICE_INGEST_X": "2"})
    _invoke(["ingest", "serve"], {})
    from_file, from_flags, defaults = loaded
    assert isinstance(from_file, IngestConfig)
    assert isinstance(from_flags, IngestConfig)
    assert isinstance(defaults, IngestConfig)
    assert (from_file.fsync, from_file.assemble_via_part, from_file.x) == (False, True, 3)
    assert (from_flags.fsync, from_flags.assemble_via_part, from_flags.x) == (False, False, 5)
    assert (defaults.fsync, defaults.assemble_via_part, defaults.x) == (True, False, 4)


def test_flag_out_of_range_is_a_clear_error(loaded: list[object]) -> None:
    result = CliRunner().invoke(main, ["store", "serve", "--max-request-size", "100"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: setting 'max_request_bytes' must be between 1024 and 16777216, got 100\n"
    )
    assert loaded == []


@pytest.mark.parametrize("service", ["store", "ingest"])
def test_data_dir_layers(service: str, tmp_path: Path, loaded: list[object]) -> None:
    """The data dir layers like any setting; POSTOFFICE_DATA_DIR, shared by every
    service, sits between the file and the service's own variable."""
    conf = tmp_path / "po.toml"
    conf.write_text(f'[{service}]\ndata_dir = "from-file"\n')
    own = f"POSTOFFICE_{service.upper()}_DATA_DIR"
    cases: list[tuple[list[str], dict[str, str], str]] = [
        ([], {}, "var"),
        ([], {"POSTOFFICE_DATA_DIR": "shared"}, "shared"),
        (["--config", str(conf)], {}, "from-file"),
        (["--config", str(conf)], {"POSTOFFICE_DATA_DIR": "shared"}, "shared"),
        (["--config", str(conf)], {"POSTOFFICE_DATA_DIR": "shared", own: "own"}, "own"),
        (["--data-dir", "flag"], {"POSTOFFICE_DATA_DIR": "shared", own: "own"}, "flag"),
    ]
    for args, env, _ in cases:
        _invoke([service, "serve", *args], env)
    got = [str(getattr(config, "data_dir")) for config in loaded]  # noqa: B009  # two types
    assert got == [expected for _, _, expected in cases]


def _readme_table(service: str) -> list[tuple[list[str], str]]:
    """The rows of README's `postoffice <service> serve` options table: flags, default."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index(f"`postoffice {service} serve` options")
    rows: list[tuple[list[str], str]] = []
    for line in text[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if not line.startswith("| `--"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((re.findall(r"--[a-z][a-z0-9-]*", cells[0]), cells[1]))
    return rows


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_readme_tables_show_the_dataclass_defaults(service: str) -> None:
    """README's tables of flags name every setting's flag with the default --help shows."""
    flags = {flag.name: flag for flag in core_config.flag_fields(SERVICES[service])}
    documented: set[str] = set()
    for names, default in _readme_table(service):
        settings = [name for name in names if name in flags]
        parts = default.split(", ")
        parts = parts if len(parts) == len(names) else [default] * len(names)
        for name, part in zip(names, parts, strict=True):
            if name not in settings:
                continue
            documented.add(name)
            shown = part.split(" (")[0].strip("`")
            assert shown == core_config.shown_default(flags[name]), (service, name, default)
    assert documented == set(flags)
