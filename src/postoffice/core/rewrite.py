"""Settings written back into their TOML or INI file (CONFIG REWRITE), keeping the file's
other lines and comments, replaced atomically. Core layer, beside core/config.py.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Final

import tomlkit
import tomlkit.exceptions

from postoffice.core.config import INI_SUFFIXES, TOML_SUFFIXES
from postoffice.core.errors import ConfigError

#: A new file holds the settings, a password among them maybe: only its owner reads it.
NEW_FILE_MODE: Final = 0o600

_INI_HEADER: Final = re.compile(r"^\s*\[\s*(?P<name>[^\]]+?)\s*\]")
_INI_KEY: Final = re.compile(r"^(?P<key>[^\s=:#;\[][^=:]*?)\s*[=:]")
# A value the loader reads back as None for an optional setting (core.config._NONE).
_NONE_TEXT: Final = "none"


def rewrite_config(path: str | os.PathLike[str], section: str, config: object) -> None:
    """CONFIG REWRITE: write the settings of the dataclass `config` back into `section` of
    the file at `path` (`rewrite_values`, then `rewrite`). Raises ConfigError as those do."""
    rewrite(path, section, rewrite_values(config, file_keys(path, section)))


def rewrite_values(config: object, present: frozenset[str] = frozenset()) -> dict[str, object]:
    """What CONFIG REWRITE writes for the dataclass `config`: every field whose value is
    not its default, and every field in `present` (the keys the file has already), as
    written to a file; a None value is the text `none`, except that a field whose default
    is None too maps to None, meaning "remove the key"."""
    out: dict[str, object] = {}
    for field in dataclasses.fields(config):  # type: ignore[arg-type]  # any dataclass
        if not field.init:
            continue
        value = getattr(config, field.name)
        default = field.default
        if value == default and field.name not in present:
            continue
        if value is None:
            out[field.name] = None if default is None else _NONE_TEXT
        elif isinstance(value, pathlib.Path):
            out[field.name] = str(value)
        elif isinstance(value, tuple):
            out[field.name] = [str(v) if isinstance(v, pathlib.Path) else v for v in value]
        else:
            out[field.name] = value
    return out


def file_keys(path: str | os.PathLike[str], section: str) -> frozenset[str]:
    """The keys `section` of the config file at `path` sets now (none when the file or the
    section is missing). Raises ConfigError for a file that cannot be read or parsed."""
    file_path = pathlib.Path(path)
    text = _read_text(file_path)
    if file_path.suffix.lower() in TOML_SUFFIXES:
        table = _toml_table(_parse_toml(file_path, text), section, create=False)
        return frozenset() if table is None else frozenset(str(k) for k in table)
    lines = text.splitlines(keepends=True)
    span = _ini_section(lines, section)
    if span is None:
        return frozenset()
    return frozenset(key for _, key in _ini_keys(lines, span))


def rewrite(path: str | os.PathLike[str], section: str, values: Mapping[str, object]) -> None:
    """Set each key of `values` in `section` of the TOML or INI file at `path` (a None
    value removes the key), leaving every other line and comment as it is; create the
    section, or the file, when missing. The new text replaces the file atomically: a
    temporary file beside it, fsynced, renamed over it, the directory fsynced; the file
    keeps its permissions. A symbolic link is followed, so the link stays.

    Raises ConfigError for an unknown suffix, a file that cannot be parsed, or a write
    that fails (the file is then as it was).
    """
    file_path = pathlib.Path(os.path.realpath(path))
    suffix = file_path.suffix.lower()
    if suffix not in TOML_SUFFIXES | INI_SUFFIXES:
        raise ConfigError(
            f"config file {file_path} has suffix {suffix!r}, expected .toml, .ini, .cfg or .conf"
        )
    text = _read_text(file_path) if file_path.exists() else ""
    if suffix in TOML_SUFFIXES:
        new_text = _rewrite_toml(file_path, text, section, values)
    else:
        new_text = _rewrite_ini(text, section, values)
    _replace(file_path, new_text)


def _read_text(path: pathlib.Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc


def _parse_toml(path: pathlib.Path, text: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _toml_table(
    doc: tomlkit.TOMLDocument, section: str, *, create: bool
) -> tomlkit.items.Table | None:
    """The table at the dotted name `section`, made when `create` (else None if absent)."""
    container: tomlkit.TOMLDocument | tomlkit.items.Table = doc
    for part in section.split("."):
        found = container.get(part)
        if found is None:
            if not create:
                return None
            found = tomlkit.table()
            container.add(part, found)
        if not isinstance(found, tomlkit.items.Table):
            raise ConfigError(f"[{section}] of the config file must be a table, got {found!r}")
        container = found
    assert isinstance(container, tomlkit.items.Table)  # section has at least one part
    return container


def _rewrite_toml(path: pathlib.Path, text: str, section: str, values: Mapping[str, object]) -> str:
    doc = _parse_toml(path, text)
    table = _toml_table(doc, section, create=True)
    assert table is not None
    for key, value in values.items():
        if value is None:
            if key in table:
                del table[key]
        else:
            table[key] = value
    return tomlkit.dumps(doc)


def _ini_section(lines: list[str], section: str) -> tuple[int, int] | None:
    """The lines of `section`, from its header to the next header (end exclusive)."""
    start = None
    for index, line in enumerate(lines):
        match = _INI_HEADER.match(line)
        if match is None:
            continue
        if start is not None:
            return start, index
        if match.group("name") == section:
            start = index
    return None if start is None else (start, len(lines))


def _ini_keys(lines: list[str], span: tuple[int, int]) -> list[tuple[int, str]]:
    """(line index, key) of each option in the section `span`; keys lowercased as
    configparser reads them."""
    found = []
    for index in range(span[0] + 1, span[1]):
        match = _INI_KEY.match(lines[index])
        if match is not None:
            found.append((index, match.group("key").strip().lower()))
    return found


def _continued(lines: list[str], index: int, end: int) -> int:
    """The index past the option at `index` and its continuation lines (indented)."""
    index += 1
    while index < end and lines[index][:1] in (" ", "\t") and lines[index].strip():
        index += 1
    return index


def _ini_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list):
        return ", ".join(_ini_text(v) for v in value)
    return str(value)


def _rewrite_ini(text: str, section: str, values: Mapping[str, object]) -> str:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    span = _ini_section(lines, section)
    if span is None:
        if lines and lines[-1].strip():
            lines.append("\n")
        lines.append(f"[{section}]\n")
        span = (len(lines) - 1, len(lines))
    start, end = span
    wanted = {key.lower(): value for key, value in values.items()}
    body: list[str] = []
    index = start + 1
    while index < end:
        match = _INI_KEY.match(lines[index])
        key = None if match is None else match.group("key").strip().lower()
        if key is None or key not in wanted:
            body.append(lines[index])
            index += 1
            continue
        value = wanted.pop(key)
        if value is not None:
            body.append(f"{match.group('key').strip()} = {_ini_text(value)}\n")  # type: ignore[union-attr]  # key is not None
        index = _continued(lines, index, end)
    # New keys go after the section's last option, before the blank lines and comments
    # that lead into the next section.
    tail = len(body)
    while tail and (not body[tail - 1].strip() or body[tail - 1].lstrip()[:1] in "#;"):
        tail -= 1
    added = [f"{key} = {_ini_text(v)}\n" for key, v in wanted.items() if v is not None]
    body[tail:tail] = added
    return "".join([*lines[: start + 1], *body, *lines[end:]])


def _replace(path: pathlib.Path, text: str) -> None:
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    except OSError as exc:
        raise ConfigError(f"cannot rewrite config file {path}: {exc}") from exc
    tmp = path.with_name(f".{path.name}.{os.getpid()}.rewrite")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, mode)  # the umask may have narrowed it
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(fd)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot rewrite config file {path}: {exc}") from exc


__all__ = ["NEW_FILE_MODE", "file_keys", "rewrite", "rewrite_config", "rewrite_values"]
