"""`postoffice store` client commands without a server: exit statuses and what --help says."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from postoffice.cli import main
from postoffice.store.cli import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE

CLIENT_COMMANDS = ["get", "put", "del", "scan", "stats"]


def test_exit_statuses_are_distinct() -> None:
    assert len({0, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE}) == 4
    assert EXIT_USAGE == 2  # click's own for usage errors


def _exit_status(command: str) -> str:
    result = CliRunner().invoke(main, ["store", command, "--help"])
    assert result.exit_code == 0
    found = re.search(r"Exit status: (.*?\.)\n\n|Exit status: (.*\.)\s*$", result.output, re.S)
    assert found is not None, result.output
    return " ".join((found.group(1) or found.group(2)).split())


def test_get_help_documents_every_exit_status() -> None:
    text = _exit_status("get")
    assert text.startswith(f"0 found; {EXIT_NOT_FOUND} no such key; {EXIT_USAGE} bad usage")
    assert f"; {EXIT_UNAVAILABLE} the store cannot be reached" in text


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_every_client_command_documents_usage_and_unavailable(command: str) -> None:
    text = _exit_status(command)
    assert f"{EXIT_USAGE} bad usage" in text
    assert f"{EXIT_UNAVAILABLE} the store cannot be reached" in text


def test_missing_key_argument_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["store", "get"])
    assert result.exit_code == EXIT_USAGE
    assert "Missing argument 'KEY'" in result.output
