"""Structured logging for every service: one stderr handler, human or JSON lines, `kv()`.

Core layer: services call `setup()` once at start-up and log through
`logging.getLogger(__name__)` with `key=value` context rendered by `kv()`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final, final

from postoffice.core.errors import ConfigError

#: The level names `setup()` accepts, upper-cased (WARN and FATAL are stdlib aliases).
LEVELS: Final = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

# Characters that would make a bare value ambiguous to a `key=value` parser.
_QUOTE_TRIGGERS: Final = frozenset(' "=')


def kv(**fields: object) -> str:
    """Render `fields` as `key=value key2=value2`, in the order given.

    A value is quoted (with JSON string escapes) when it is empty or holds a space, a
    double quote, an `=` or a non-printable character such as a newline, so every log
    line stays one line and parses back unambiguously.
    """
    return " ".join(f"{key}={_render_value(value)}" for key, value in fields.items())


def _render_value(value: object) -> str:
    text = str(value)
    if text and text.isprintable() and _QUOTE_TRIGGERS.isdisjoint(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _utc_timestamp(record: logging.LogRecord) -> str:
    """`2026-11-22T10:00:00.123Z`: UTC, millisecond precision, sortable as text."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


@final
class HumanFormatter(logging.Formatter):
    """One line per record: `<ts> <LEVEL> <logger> service=<name> <message>`.

    A traceback, when the record carries one, follows on the next lines.
    """

    def __init__(self, *, service: str | None = None) -> None:
        super().__init__()
        self._service_field = "" if service is None else f"{kv(service=service)} "

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc_timestamp(record)} {record.levelname:<5} {record.name} "
            f"{self._service_field}{record.getMessage()}"
        )
        extra = _exception_text(self, record)
        return f"{line}\n{extra}" if extra else line


@final
class JsonFormatter(logging.Formatter):
    """One JSON object per record with `ts`, `level`, `logger`, `service`, `msg`.

    `exc` holds the formatted traceback when the record carries an exception (or a
    stack); `service` is null when none was configured.
    """

    def __init__(self, *, service: str | None = None) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str | None] = {
            "ts": _utc_timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "service": self._service,
            "msg": record.getMessage(),
        }
        extra = _exception_text(self, record)
        if extra:
            entry["exc"] = extra
        return json.dumps(entry, ensure_ascii=False)


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The traceback and stack of `record`, cached on it as the stdlib formatter does."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    parts: list[str] = []
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


@final
class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at emit time.

    Looking the stream up per record (instead of capturing it once, as StreamHandler
    does) keeps logs flowing after pytest's capture or a daemon swaps `sys.stderr`.
    """

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr
        if stream is None:  # pythonw and some daemons run without one
            return
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            # The logging boundary: a broken record or stream must never kill the caller.
            self.handleError(record)


def setup(*, level: str = "INFO", json: bool = False, service: str | None = None) -> None:
    """Configure the root logger with one stderr handler in the human or JSON format.

    Idempotent: a second call reconfigures the handler the first one installed instead
    of adding another. Handlers installed by others (pytest, an embedding program) are
    left alone. Raises ConfigError when `level` is not a known level name.
    """
    name = level.upper()
    number = logging.getLevelNamesMapping().get(name)
    if number is None:
        raise ConfigError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    formatter: logging.Formatter = (
        JsonFormatter(service=service) if json else HumanFormatter(service=service)
    )
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if isinstance(handler, _StderrHandler)]
    if ours:
        handler = ours[0]
        for duplicate in ours[1:]:
            root.removeHandler(duplicate)
    else:
        handler = _StderrHandler()
        root.addHandler(handler)
    handler.setFormatter(formatter)
    root.setLevel(number)
