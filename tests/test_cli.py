"""The `postoffice` command itself: what its help announces."""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

import postoffice
from postoffice.cli import main

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def _services() -> list[str]:
    """The groups of `postoffice` that run a server: the services that exist."""
    return sorted(
        name
        for name, cmd in main.commands.items()
        if isinstance(cmd, click.Group) and "serve" in cmd.commands
    )


def _announced(text: str) -> int:
    """The number in `<number> network services` of `text`."""
    found = re.search(r"\b(\w+) network services\b", text)
    assert found is not None, text
    return NUMBERS[found.group(1)]


def test_main_help_announces_the_services_that_exist() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    summary = " ".join(result.output.split("Options:")[0].split())
    services = _services()
    assert services == ["bus", "command", "ingest", "store"]
    assert _announced(summary) == len(services)
    for name in [*services, "postoffice up"]:
        assert name in summary


def test_package_docstring_announces_the_services_that_exist() -> None:
    doc = postoffice.__doc__ or ""
    assert _announced(doc) == len(_services())
