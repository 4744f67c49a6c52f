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


def test_every_subcommand_loads_under_its_own_name() -> None:
    """The group imports a service's commands only when asked: each name it lists loads
    the command of that name, and `--help` still lists every one."""
    names = list(main.commands)
    assert {"bus", "command", "ingest", "store", "up", "office", "dashboard", "sysinfo"} <= set(
        names
    )
    for name in names:
        assert main.commands[name].name == name
    listed = CliRunner().invoke(main, ["--help"]).output.split("Commands:")[1]
    assert [line.split()[0] for line in listed.strip().splitlines()] == sorted(names)
