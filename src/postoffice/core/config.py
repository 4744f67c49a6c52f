"""Typed settings for every service: declared once, loaded from defaults < file < env < CLI.

Core layer: the one module that reads config files, `POSTOFFICE_*` variables and overrides,
and that says what a setting declared with `setting()` shows on the command line.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import pathlib
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from postoffice.core.errors import ConfigError

__all__ = [
    "BIND_RETRY_ENV",
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "ENV_PREFIX",
    "SETTING",
    "Flag",
    "PathKind",
    "Setting",
    "Unit",
    "bind_retry",
    "check_choice",
    "check_port",
    "check_range",
    "check_settings",
    "data_dir",
    "declared",
    "flag_fields",
    "load",
    "setting",
    "shown_default",
    "shown_range",
    "shown_value",
]

T = TypeVar("T")

ENV_PREFIX: Final = "POSTOFFICE_"
DATA_DIR_ENV: Final = "POSTOFFICE_DATA_DIR"
#: 0 makes a busy port fail a server's start instead of being retried (`postoffice up`
#: sets it for its children, so it can report the port and stop).
BIND_RETRY_ENV: Final = "POSTOFFICE_BIND_RETRY"
DEFAULT_DATA_DIR: Final = pathlib.Path("var")

TOML_SUFFIXES: Final = frozenset({".toml"})
INI_SUFFIXES: Final = frozenset({".ini", ".cfg", ".conf"})

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_NONE: Final = frozenset({"", "none"})

# configparser would copy every [DEFAULT] key into every section, so an INI file shared by
# services would make each one see the others' keys as unknown; like the C reader inih, we
# treat [DEFAULT] as an ordinary section by naming a default section no file can contain.
_NO_DEFAULT_SECTION: Final = "\x00no default section"

# Singular and plural nouns for the scalar types a setting may have; used in messages.
_SCALAR_NOUNS: Final[Mapping[type, tuple[str, str]]] = {
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    bool: ("a boolean (1/0/true/false/yes/no/on/off)", "booleans"),
    str: ("a string", "strings"),
    pathlib.Path: ("a path", "paths"),
}


class _BadValueError(ConfigError):
    """Raised inside this module when a raw value does not fit a type; `load` rewrites it."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def load(
    cls: type[T],
    *,
    section: str,
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    shared_env: Mapping[str, str] | None = None,
) -> T:
    """Build the settings dataclass `cls` from defaults, a file, the environment and overrides.

    Later sources win: defaults < file `path` (TOML table or INI section named `section`;
    a file without that section contributes nothing) < variables every service shares,
    `shared_env` mapping a field to its variable (`{"data_dir": "POSTOFFICE_DATA_DIR"}`;
    an empty one counts as unset) < `POSTOFFICE_<SECTION>_<FIELD>` variables < `overrides`
    (entries whose value is None are skipped, so unset CLI options fall through); the
    variables are read from `env` (os.environ when None). Strings are converted to each field's
    annotated type. Raises ConfigError for a missing or unparsable file, an unknown key, a
    value of the wrong type, a required setting given nowhere, or a value the dataclass's
    `__post_init__` rejects. Raises TypeError if `cls` is not a dataclass or a field has a
    type this loader cannot convert to.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load expects a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    for name, hint in fields.items():
        _check_supported(cls, name, hint)

    values: dict[str, object] = {}
    if path is not None:
        file_path = pathlib.Path(path)
        source = f"[{section}] of {file_path}"
        for key, raw in _read_file(file_path, section).items():
            if key not in fields:
                raise ConfigError(f"unknown setting {key!r} in {source}")
            values[key] = _convert(raw, fields[key], key, source)

    environ = os.environ if env is None else env
    for key, var in (shared_env or {}).items():
        if key not in fields:
            raise TypeError(f"{cls.__name__} has no field {key!r} for {var}")
        if environ.get(var, ""):
            values[key] = _convert(environ[var], fields[key], key, f"environment {var}")

    env_prefix = f"{ENV_PREFIX}{_env_token(section)}_"
    for var in sorted(environ):
        if not var.startswith(env_prefix):
            continue
        key = var[len(env_prefix) :].lower()
        source = f"environment {var}"
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r} in {source}")
        values[key] = _convert(environ[var], fields[key], key, source)

    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r} in overrides")
        values[key] = _convert(raw, fields[key], key, "overrides")

    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.init and required and f.name not in values:
            raise ConfigError(f"missing setting {f.name!r} in [{section}]")
    return cls(**values)


def check_range(
    name: str, value: int | float, low: int | float | None, high: int | float | None
) -> None:
    """Check `low <= value <= high`; a None bound is open. Raises ConfigError otherwise."""
    # Written as `not (value >= low)` so that NaN fails every bound.
    too_low = low is not None and not value >= low
    too_high = high is not None and not value <= high
    if not (too_low or too_high):
        return
    if low is not None and high is not None:
        raise ConfigError(f"setting {name!r} must be between {low} and {high}, got {value}")
    if low is not None:
        raise ConfigError(f"setting {name!r} must be at least {low}, got {value}")
    raise ConfigError(f"setting {name!r} must be at most {high}, got {value}")


def check_port(name: str, value: int) -> None:
    """Check that `value` is a TCP/UDP port number, 0 to 65535. Raises ConfigError otherwise."""
    check_range(name, value, 0, 65535)


def check_choice(name: str, value: str, choices: Collection[str]) -> None:
    """Check that `value` is one of `choices`. Raises ConfigError otherwise."""
    if value in choices:
        return
    ordered = sorted(choices) if isinstance(choices, (set, frozenset)) else list(choices)
    listed = ", ".join(repr(c) for c in ordered)
    raise ConfigError(f"setting {name!r} must be one of {listed}, got {value!r}")


# -- settings declared once: their help, flag and range, for the checks and the CLI --------

#: The key under which a field's `Setting` sits in its dataclass field's metadata.
SETTING: Final = "postoffice.setting"

Unit = Literal["bytes", "seconds", "count"]
PathKind = Literal["dir", "file", "existing-file"]

_IEC_UNITS: Final = (
    ("PiB", 1 << 50),
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """What a config field declares besides its default: help, flag, unit and range.

    `flag` is the option's name (`--idle-timeout`); "" derives it from the field's name
    without a `_s` unit suffix, and None gives the field no flag (file and environment
    only). A bool field's flag sets the field to False when it starts with `--no-`, else
    True. `low`/`high` bound the value (inclusive; None: open), `choices` list the allowed
    strings: `check_settings` enforces both, and the help shows them. `default_text`
    says what a None default stands for (`<data-dir>/files`); `path` is how a Path field's
    flag checks its argument; `metavar` names the argument in --help. `live` says that a
    running server takes a new value when SIGHUP has it read its settings again
    (core/reload.py); any other setting needs a restart. `secret` keeps the value out of
    the logs.
    """

    help: str
    flag: str | None = ""
    unit: Unit = "count"
    low: int | float | None = None
    high: int | float | None = None
    choices: tuple[str, ...] = ()
    default_text: str | None = None
    path: PathKind = "dir"
    metavar: str | None = None
    live: bool = False
    secret: bool = False


def setting(
    default: T,
    *,
    help: str,  # the name click and argparse give it
    flag: str | None = "",
    unit: Unit = "count",
    low: int | float | None = None,
    high: int | float | None = None,
    choices: Collection[str] = (),
    default_text: str | None = None,
    path: PathKind = "dir",
    metavar: str | None = None,
    live: bool = False,
    secret: bool = False,
) -> T:
    """A dataclass field with `default` that declares its Setting (see there) in metadata.

    Use as `idle_timeout_s: float = setting(300.0, help=..., unit="seconds", low=0,
    high=86400, live=True)`, and call `check_settings(self)` first in `__post_init__`.
    """
    declared = Setting(
        help=help,
        flag=flag,
        unit=unit,
        low=low,
        high=high,
        choices=tuple(choices),
        default_text=default_text,
        path=path,
        metavar=metavar,
        live=live,
        secret=secret,
    )
    field: T = dataclasses.field(default=default, metadata={SETTING: declared})
    return field


def declared(field: dataclasses.Field[object]) -> Setting | None:
    """The Setting a field was declared with, or None for a plain field."""
    value = field.metadata.get(SETTING)
    return value if isinstance(value, Setting) else None


def check_settings(config: object) -> None:
    """Check every field of the dataclass `config` against its declared range and choices.

    A None value (an optional setting left unset) is not checked. Raises ConfigError
    naming the first field out of bounds.
    """
    for field in dataclasses.fields(config):  # type: ignore[arg-type]  # any dataclass
        spec = declared(field)
        if spec is None:
            continue
        value = getattr(config, field.name)
        if value is None:
            continue
        if spec.low is not None or spec.high is not None:
            check_range(field.name, value, spec.low, spec.high)
        if spec.choices:
            check_choice(field.name, value, spec.choices)


@dataclass(frozen=True, slots=True, kw_only=True)
class Flag:
    """A setting with a command-line flag: its field, its Setting, the flag and the scalar
    type the flag parses (`int` for `int | None`)."""

    field: dataclasses.Field[object]
    spec: Setting
    name: str
    kind: type

    @property
    def sets(self) -> bool:
        """For a bool setting: the value the flag sets (False for `--no-...`)."""
        return not self.name.startswith("--no-")


def flag_fields(cls: type) -> list[Flag]:
    """The fields of dataclass `cls` that have a command-line flag, in declaration order.

    Raises TypeError for a flagged field of a type no flag can parse.
    """
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        spec = declared(field)
        if spec is None or spec.flag is None:
            continue
        hint = hints[field.name]
        kind = _optional_inner(hint) or hint
        if not (isinstance(kind, type) and kind in _SCALAR_NOUNS):
            raise TypeError(f"{cls.__name__}.{field.name} has type {hint!r}, which no flag parses")
        out.append(
            Flag(field=field, spec=spec, name=spec.flag or _derived_flag(field.name), kind=kind)
        )
    return out


def _derived_flag(name: str) -> str:
    base = name.removesuffix("_s")
    return "--" + base.replace("_", "-")


def shown_value(value: object, unit: Unit = "count") -> str:
    """A setting's value as --help shows it: `16 MiB`, `300`, `0.01`, `none`, `var`."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and unit == "bytes":
        for suffix, size in _IEC_UNITS:
            if value >= size and value % size == 0:
                return f"{value // size} {suffix}"
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def shown_default(flag: Flag) -> str:
    """The default of a flagged setting as --help shows it.

    A bool shows whether its flag is in effect by default (`--no-fsync`: off), a None
    default its `default_text` when it has one.
    """
    default = flag.field.default
    if default is dataclasses.MISSING:
        return "required"
    if isinstance(default, bool):
        return "on" if default == flag.sets else "off"
    if default is None and flag.spec.default_text is not None:
        return flag.spec.default_text
    return shown_value(default, flag.spec.unit)


def shown_range(spec: Setting) -> str | None:
    """The allowed values as --help shows them (`0..86400`, `at least 1`), or None."""
    if spec.choices:
        return "|".join(spec.choices)
    low = None if spec.low is None else shown_value(spec.low, spec.unit)
    high = None if spec.high is None else shown_value(spec.high, spec.unit)
    if low is not None and high is not None:
        return f"{low}..{high}"
    if low is not None:
        return f"at least {low}"
    if high is not None:
        return f"at most {high}"
    return None


def data_dir(env: Mapping[str, str] | None = None) -> pathlib.Path:
    """Return the data directory: POSTOFFICE_DATA_DIR from `env` (os.environ) or `./var`."""
    environ = os.environ if env is None else env
    value = environ.get(DATA_DIR_ENV, "")
    return pathlib.Path(value) if value else DEFAULT_DATA_DIR


def bind_retry(env: Mapping[str, str] | None = None) -> bool:
    """Whether listeners retry a failed bind: POSTOFFICE_BIND_RETRY from `env` (os.environ).

    Unset or empty means yes. Raises ConfigError for a value that is not a boolean.
    """
    environ = os.environ if env is None else env
    value = environ.get(BIND_RETRY_ENV, "")
    if not value.strip():
        return True
    try:
        return _to_bool(value)
    except _BadValueError as exc:
        raise ConfigError(
            f"environment {BIND_RETRY_ENV} must be {_describe(bool)}, got {value!r}"
        ) from exc


def _env_token(section: str) -> str:
    """Turn a section name into the part of a variable name: `office.users` -> `OFFICE_USERS`."""
    return "".join(c if c.isalnum() else "_" for c in section).upper()


def _read_file(path: pathlib.Path, section: str) -> dict[str, object]:
    """Return the raw key/value pairs of `section` in the TOML or INI file at `path`."""
    suffix = path.suffix.lower()
    if suffix not in TOML_SUFFIXES | INI_SUFFIXES:
        raise ConfigError(
            f"config file {path} has suffix {suffix!r}, expected .toml, .ini, .cfg or .conf"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    if suffix in TOML_SUFFIXES:
        return _toml_section(path, text, section)
    return _ini_section(path, text, section)


def _toml_section(path: pathlib.Path, text: str, section: str) -> dict[str, object]:
    """Parse TOML `text` and return the table at the dotted name `section` (empty if absent)."""
    try:
        table: object = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for part in section.split("."):
        if not isinstance(table, dict):
            break
        table = table.get(part, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] of {path} must be a table, got {table!r}")
    return {str(k): v for k, v in table.items()}


def _ini_section(path: pathlib.Path, text: str, section: str) -> dict[str, object]:
    """Parse INI `text` and return the options of `section` (empty if absent)."""
    # No interpolation: a '%' in a value is literal, as it is in TOML and the environment.
    parser = configparser.ConfigParser(interpolation=None, default_section=_NO_DEFAULT_SECTION)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"config file {path} is not valid INI: {exc}") from exc
    if not parser.has_section(section):
        return {}
    return dict(parser.items(section))


def _check_supported(cls: type, name: str, hint: object) -> None:
    """Raise TypeError if `hint` is not a type `_convert` can produce."""
    try:
        _describe(hint)
    except TypeError:
        raise TypeError(
            f"{cls.__name__}.{name} has unsupported type {hint!r} for config loading"
        ) from None


def _optional_inner(hint: object) -> object | None:
    """Return X for `X | None` (or Optional[X]), else None."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args: tuple[object, ...] = typing.get_args(hint)
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(args) == 2:
            return others[0]
    return None


def _tuple_item(hint: object) -> object | None:
    """Return X for `tuple[X, ...]`, else None."""
    if typing.get_origin(hint) is tuple:
        args: tuple[object, ...] = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _describe(hint: object) -> str:
    """Say what a value of type `hint` must be, for messages. Raises TypeError if unsupported."""
    if isinstance(hint, type) and hint in _SCALAR_NOUNS:
        return _SCALAR_NOUNS[hint][0]
    inner = _optional_inner(hint)
    if inner is not None:
        return f"{_describe(inner)} or none"
    item = _tuple_item(hint)
    if isinstance(item, type) and item in _SCALAR_NOUNS:
        return f"a comma-separated list of {_SCALAR_NOUNS[item][1]}"
    raise TypeError(f"unsupported setting type {hint!r}")


def _convert(raw: object, hint: object, key: str, source: str) -> object:
    """Convert `raw` (a string, or a native TOML/CLI value) to `hint`. Raises ConfigError."""
    try:
        return _to_type(raw, hint)
    except _BadValueError as exc:
        raise ConfigError(
            f"setting {key!r} from {source}: expected {exc.expected}, got {raw!r}"
        ) from None


def _to_type(raw: object, hint: object) -> object:
    """Convert `raw` to `hint`; raises _BadValueError naming what was expected."""
    inner = _optional_inner(hint)
    if inner is not None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in _NONE):
            return None
        try:
            return _to_type(raw, inner)
        except _BadValueError:
            raise _BadValueError(_describe(hint)) from None
    item = _tuple_item(hint)
    if item is not None:
        if isinstance(raw, str):
            parts: list[object] = [p.strip() for p in raw.split(",")]
            parts = [p for p in parts if p != ""]
        elif isinstance(raw, (list, tuple)):
            parts = list(raw)
        else:
            raise _BadValueError(_describe(hint))
        try:
            return tuple(_to_type(p, item) for p in parts)
        except _BadValueError:
            raise _BadValueError(_describe(hint)) from None
    assert isinstance(hint, type)  # guaranteed by _check_supported
    return _SCALAR_CONVERTERS[hint](raw)


def _to_int(raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.strip(), 10)
        except ValueError:
            pass
    raise _BadValueError(_describe(int))


def _to_float(raw: object) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            pass
    raise _BadValueError(_describe(float))


def _to_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _BadValueError(_describe(bool))


def _to_str(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    raise _BadValueError(_describe(str))


def _to_path(raw: object) -> pathlib.Path:
    if isinstance(raw, pathlib.Path):
        return raw
    if isinstance(raw, str) and raw.strip():
        return pathlib.Path(raw.strip())
    raise _BadValueError(_describe(pathlib.Path))


_SCALAR_CONVERTERS: Final[Mapping[type, Callable[[object], object]]] = {
    int: _to_int,
    float: _to_float,
    bool: _to_bool,
    str: _to_str,
    pathlib.Path: _to_path,
}
