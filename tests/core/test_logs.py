"""Tests for core.logs: the human and JSON line formats, setup() idempotency, kv()."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from postoffice.core.errors import ConfigError
from postoffice.core.logs import HumanFormatter, JsonFormatter, kv, setup

_CREATED = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC).timestamp() + 0.123


def _record(
    msg: str = "listening %s",
    args: tuple[object, ...] = (kv(host="127.0.0.1", port=6380),),
    *,
    level: int = logging.INFO,
    exc_info: bool = False,
) -> logging.LogRecord:
    """A record as `postoffice.command.server` would emit it at a fixed instant."""
    info = sys.exc_info() if exc_info else None
    return logging.makeLogRecord(
        {
            "name": "postoffice.command.server",
            "levelno": level,
            "levelname": logging.getLevelName(level),
            "msg": msg,
            "args": args,
            "created": _CREATED,
            "msecs": 123.0,
            "exc_info": info,
        }
    )


def _our_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrHandler"]


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """setup() reconfigures the process-wide root logger; put it back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class TestKv:
    def test_renders_pairs_in_order(self) -> None:
        assert kv(host="127.0.0.1", port=6380, ok=True) == "host=127.0.0.1 port=6380 ok=True"

    def test_empty_is_empty(self) -> None:
        assert kv() == ""

    @pytest.mark.parametrize(
        ("value", "rendered"),
        [
            ("two words", 'v="two words"'),
            ("", 'v=""'),
            ('say "hi"', r'v="say \"hi\""'),
            ("a=b", 'v="a=b"'),
            ("line\nbreak", r'v="line\nbreak"'),
            ("C:\\dir", "v=C:\\dir"),
            ("héllo", "v=héllo"),
        ],
    )
    def test_quotes_only_ambiguous_values(self, value: str, rendered: str) -> None:
        assert kv(v=value) == rendered


class TestHumanFormatter:
    def test_line_matches_the_documented_example(self) -> None:
        line = HumanFormatter(service="command").format(_record())
        assert line == (
            "2026-11-22T10:00:00.123Z INFO  postoffice.command.server service=command "
            "listening host=127.0.0.1 port=6380"
        )

    def test_without_service_the_field_is_omitted(self) -> None:
        line = HumanFormatter().format(_record())
        assert line == (
            "2026-11-22T10:00:00.123Z INFO  postoffice.command.server "
            "listening host=127.0.0.1 port=6380"
        )

    def test_long_level_names_are_not_truncated(self) -> None:
        line = HumanFormatter().format(_record(level=logging.WARNING))
        assert " WARNING postoffice.command.server " in line

    def test_traceback_follows_the_line(self) -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            text = HumanFormatter(service="command").format(_record("failed", (), exc_info=True))
        first, *rest = text.splitlines()
        assert first.endswith("service=command failed")
        assert rest[0] == "Traceback (most recent call last):"
        assert rest[-1] == "RuntimeError: boom"


class TestJsonFormatter:
    def test_one_object_with_the_documented_keys(self) -> None:
        line = JsonFormatter(service="command").format(_record())
        assert "\n" not in line
        assert json.loads(line) == {
            "ts": "2026-11-22T10:00:00.123Z",
            "level": "INFO",
            "logger": "postoffice.command.server",
            "service": "command",
            "msg": "listening host=127.0.0.1 port=6380",
        }

    def test_service_is_null_when_not_configured(self) -> None:
        assert json.loads(JsonFormatter().format(_record()))["service"] is None

    def test_exception_goes_in_exc_and_stays_one_line(self) -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            line = JsonFormatter().format(_record(exc_info=True))
        assert "\n" not in line
        entry = json.loads(line)
        assert entry["msg"] == "listening host=127.0.0.1 port=6380"
        assert entry["exc"].startswith("Traceback (most recent call last):")
        assert entry["exc"].endswith("RuntimeError: boom")


class TestSetup:
    def test_human_lines_go_to_stderr(self, capsys: pytest.CaptureFixture[str]) -> None:
        setup(service="command")
        logging.getLogger("postoffice.command.server").info(
            "listening %s", kv(host="127.0.0.1", port=6380)
        )
        err = capsys.readouterr().err
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO  postoffice\.command\.server "
            r"service=command listening host=127\.0\.0\.1 port=6380\n",
            err,
        ), err

    def test_json_lines_go_to_stderr(self, capsys: pytest.CaptureFixture[str]) -> None:
        setup(json=True, service="store", level="debug")
        logging.getLogger("postoffice.store").debug("opened %s", kv(path="var/log"))
        entry = json.loads(capsys.readouterr().err)
        assert entry["level"] == "DEBUG"
        assert entry["logger"] == "postoffice.store"
        assert entry["service"] == "store"
        assert entry["msg"] == "opened path=var/log"

    def test_level_filters(self, capsys: pytest.CaptureFixture[str]) -> None:
        setup(level="WARNING")
        logging.getLogger("postoffice.x").info("hidden")
        logging.getLogger("postoffice.x").warning("shown")
        err = capsys.readouterr().err
        assert "hidden" not in err
        assert "shown" in err

    def test_calling_twice_keeps_one_handler(self, capsys: pytest.CaptureFixture[str]) -> None:
        root = logging.getLogger()
        before = len(root.handlers)
        setup()
        setup(json=True, service="bus")
        assert len(_our_handlers()) == 1
        assert len(root.handlers) == before + 1
        logging.getLogger("postoffice.bus").warning("once")
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["service"] == "bus"

    def test_unknown_level_is_a_config_error(self) -> None:
        with pytest.raises(
            ConfigError,
            match=r"^log level 'loud' is not one of CRITICAL, ERROR, WARNING, INFO, DEBUG$",
        ):
            setup(level="loud")
