"""The simulation's config: a strict INI file with the sections and keys of the office
rules, each key overridable by a POSTOFFICE_OFFICE_<KEY> variable. Office layer."""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from postoffice.office.engine import Roster
from postoffice.office.errors import OfficeConfigError

__all__ = [
    "ENV_PREFIX",
    "KEYS",
    "LIVE_KEYS",
    "SHIPPED",
    "Change",
    "ConfigChanges",
    "OfficeConfig",
    "compare_configs",
    "load_config",
    "shipped_config",
]

ENV_PREFIX: Final = "POSTOFFICE_OFFICE_"
SHIPPED: Final = ("timeout", "explode")  # configs in postoffice/office/configs/


@dataclass(frozen=True, slots=True, kw_only=True)
class _Key:
    section: str
    name: str
    kind: type[int] | type[float]
    low: float
    high: float


# Each key's section, type and range: wide enough for any sensible run, narrow enough
# that a typo (a minute of a year, a million breaks) is caught.
KEYS: Final = (
    _Key(section="simulation", name="SIM_DURATION", kind=int, low=1, high=1_000_000),
    _Key(section="simulation", name="N_NANO_SECS", kind=int, low=0, high=60_000_000_000),
    _Key(section="simulation", name="EXPLODE_THRESHOLD", kind=int, low=0, high=10_000_000),
    _Key(section="users", name="NOF_USERS", kind=int, low=1, high=1_000_000),
    _Key(section="users", name="P_SERV_MIN", kind=float, low=0.0, high=1.0),
    _Key(section="users", name="P_SERV_MAX", kind=float, low=0.0, high=1.0),
    _Key(section="users", name="N_REQUESTS", kind=int, low=1, high=1_000),
    _Key(section="workers", name="NOF_WORKERS", kind=int, low=1, high=100_000),
    _Key(section="workers", name="NOF_WORKER_SEATS", kind=int, low=1, high=100_000),
    _Key(section="workers", name="NOF_PAUSE", kind=int, low=0, high=1_000_000),
    _Key(section="users_manager", name="N_NEW_USERS", kind=int, low=0, high=1_000_000),
)
_SECTIONS: Final = tuple(dict.fromkeys(k.section for k in KEYS))
#: The keys a running simulation takes at its next minute (SIGHUP); any other key
#: shapes the roles it was built with, so a new value needs a new run.
LIVE_KEYS: Final = ("N_NANO_SECS", "EXPLODE_THRESHOLD", "N_NEW_USERS")


@dataclass(frozen=True, slots=True, kw_only=True)
class OfficeConfig:
    """A simulation's settings, named after the rules' keys in lower case."""

    sim_duration: int  # days
    n_nano_secs: int  # real nanoseconds per simulated minute; 0: as fast as possible
    explode_threshold: int  # users still waiting at a day's end that end the run
    nof_users: int
    p_serv_min: float
    p_serv_max: float
    n_requests: int
    nof_workers: int
    nof_worker_seats: int
    nof_pause: int
    n_new_users: int

    def __post_init__(self) -> None:
        for key in KEYS:
            value = getattr(self, key.name.lower())
            if not (key.low <= value <= key.high):
                raise OfficeConfigError(
                    f"{key.name} must be between {_shown(key.low, key)} and"
                    f" {_shown(key.high, key)}, got {value}"
                )
        if self.p_serv_min > self.p_serv_max:
            raise OfficeConfigError(
                f"P_SERV_MIN {self.p_serv_min} must not exceed P_SERV_MAX {self.p_serv_max}"
            )

    @property
    def roster(self) -> Roster:
        """The numbers the engine is built from."""
        return Roster(
            nof_users=self.nof_users,
            p_serv_min=self.p_serv_min,
            p_serv_max=self.p_serv_max,
            n_requests=self.n_requests,
            nof_workers=self.nof_workers,
            nof_worker_seats=self.nof_worker_seats,
            nof_pause=self.nof_pause,
        )

    def as_ini(self) -> dict[str, dict[str, int | float]]:
        """Section -> key -> value, as in the file."""
        out: dict[str, dict[str, int | float]] = {s: {} for s in _SECTIONS}
        for key in KEYS:
            out[key.section][key.name] = getattr(self, key.name.lower())
        return out


def _shown(value: float, key: _Key) -> str:
    return str(int(value)) if key.kind is int else str(value)


def load_config(
    path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None
) -> OfficeConfig:
    """Read the INI file at `path` (None: none), then POSTOFFICE_OFFICE_<KEY> variables
    from `env` (os.environ when None), which win. Every key must be given by one of them.

    Raises OfficeConfigError, naming the key, for a missing or unreadable file, a
    duplicate, unknown, missing or empty key, an unknown section, a value that is not a
    number of the key's type, or one out of its range.
    """
    raw: dict[str, tuple[str, str]] = {}  # key -> (value, where it came from)
    if path is not None:
        raw.update(_read_ini(Path(path)))
    environ = os.environ if env is None else env
    names = {k.name for k in KEYS}
    for var in sorted(environ):
        if var.startswith(ENV_PREFIX):
            name = var[len(ENV_PREFIX) :]
            if name not in names:
                raise OfficeConfigError(
                    f"unknown key {name!r} in environment {var}; the keys are {_listed()}"
                )
            raw[name] = (environ[var], f"environment {var}")
    values: dict[str, int | float] = {}
    for key in KEYS:
        if key.name not in raw:
            raise OfficeConfigError(
                f"missing key {key.name} in [{key.section}]"
                + (f" of {path}" if path is not None else "")
                + f" (or environment {ENV_PREFIX}{key.name})"
            )
        text, where = raw[key.name]
        values[key.name.lower()] = _number(text, key, where)
    return OfficeConfig(**values)  # type: ignore[arg-type]  # every field is set above


def shipped_config(name: str) -> Path:
    """The path of a config shipped with the package (`timeout`, `explode`).

    Raises OfficeConfigError for another name.
    """
    if name not in SHIPPED:
        raise OfficeConfigError(f"no shipped config {name!r}; there are {', '.join(SHIPPED)}")
    return Path(str(resources.files("postoffice.office") / "configs" / f"{name}.ini"))


def _listed() -> str:
    return ", ".join(k.name for k in KEYS)


def _read_ini(path: Path) -> dict[str, tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise OfficeConfigError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise OfficeConfigError(f"config file {path} cannot be read: {exc}") from exc
    # strict: a duplicate section or key is an error; no interpolation: '%' is literal;
    # no default section, so [DEFAULT] is just an unknown section; keys keep their case.
    parser = configparser.ConfigParser(
        strict=True, interpolation=None, default_section="\x00none", empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the keys' case
    try:
        parser.read_string(text, source=str(path))
    except configparser.DuplicateOptionError as exc:
        raise OfficeConfigError(
            f"duplicate key {exc.option} in [{exc.section}] of {path} (line {exc.lineno})"
        ) from exc
    except configparser.DuplicateSectionError as exc:
        raise OfficeConfigError(
            f"duplicate section [{exc.section}] in {path} (line {exc.lineno})"
        ) from exc
    except configparser.MissingSectionHeaderError as exc:
        raise OfficeConfigError(
            f"config file {path} line {exc.lineno}: {exc.line.strip()!r} is outside any section"
        ) from exc
    except configparser.ParsingError as exc:
        source = text.splitlines()
        lines = "; ".join(f"line {n}: {source[n - 1].strip()!r}" for n, _ in exc.errors)
        raise OfficeConfigError(f"config file {path} is not valid INI: {lines}") from exc
    except configparser.Error as exc:
        flat = " ".join(str(exc).split())
        raise OfficeConfigError(f"config file {path} is not valid INI: {flat}") from exc
    by_section = {k.name: k.section for k in KEYS}
    found: dict[str, tuple[str, str]] = {}
    for section in parser.sections():
        if section not in _SECTIONS:
            raise OfficeConfigError(
                f"unknown section [{section}] in {path}; the sections are "
                + ", ".join(f"[{s}]" for s in _SECTIONS)
            )
        for name, value in parser.items(section):
            if by_section.get(name) != section:
                hint = ""
                if name.upper() in by_section:
                    hint = f" (did you mean {name.upper()} in [{by_section[name.upper()]}]?)"
                raise OfficeConfigError(f"unknown key {name!r} in [{section}] of {path}{hint}")
            found[name] = (value, f"[{section}] of {path}")
    return found


def _number(text: str, key: _Key, where: str) -> int | float:
    stripped = text.strip()
    if not stripped:
        raise OfficeConfigError(f"key {key.name} in {where} is empty")
    try:
        value: int | float = int(stripped, 10) if key.kind is int else float(stripped)
    except ValueError:
        kind = "an integer" if key.kind is int else "a number"
        raise OfficeConfigError(
            f"key {key.name} in {where} must be {kind}, got {stripped!r}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise OfficeConfigError(
            f"key {key.name} in {where} must be a finite number, got {stripped!r}"
        )
    if not (key.low <= value <= key.high):
        raise OfficeConfigError(
            f"key {key.name} in {where} must be between {_shown(key.low, key)} and"
            f" {_shown(key.high, key)}, got {stripped}"
        )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One key whose value differs between two configs."""

    key: str
    old: int | float
    new: int | float

    def __str__(self) -> str:
        return f"{self.key} {self.old} -> {self.new}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigChanges:
    """What differs from a running config: `live` keys (LIVE_KEYS) can be taken at once,
    `restart` keys only by a new run; `config` is the running one with the live changes."""

    live: tuple[Change, ...]
    restart: tuple[Change, ...]
    config: OfficeConfig


def compare_configs(running: OfficeConfig, new: OfficeConfig) -> ConfigChanges:
    """The keys whose values differ, in KEYS order, split into what a running simulation
    can take (LIVE_KEYS) and what needs a restart; and `running` with the live ones set."""
    live: list[Change] = []
    restart: list[Change] = []
    for key in KEYS:
        old, value = getattr(running, key.name.lower()), getattr(new, key.name.lower())
        if old != value:
            (live if key.name in LIVE_KEYS else restart).append(
                Change(key=key.name, old=old, new=value)
            )
    taken = dataclasses.replace(
        running,
        n_nano_secs=new.n_nano_secs,
        explode_threshold=new.explode_threshold,
        n_new_users=new.n_new_users,
    )
    return ConfigChanges(live=tuple(live), restart=tuple(restart), config=taken)
