"""The README's commands against what the checkout has: make targets, CI, the CLI, clients.

The quick start is run for real in tests/integration/test_up.py; these checks need no
process and catch a command the README names that nothing provides.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from postoffice.cli import main as cli_main

_ROOT = Path(__file__).resolve().parents[1]
_README = (_ROOT / "README.md").read_text()
_MAKEFILE = (_ROOT / "Makefile").read_text()


def _code() -> list[str]:
    """Every code span and every line of every code block in the README."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", _README, flags=re.DOTALL)
    rest = re.sub(r"```[a-z]*\n.*?```", "", _README, flags=re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", rest)


def _quick_start_block() -> list[str]:
    section = _README[_README.index("## Quick start") :]
    section = section[: section.index("\n## ")]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    lines = blocks[-1].splitlines()
    return [line.split("  #", 1)[0].strip() for line in lines if line.strip()]


def _target(name: str) -> str:
    """The prerequisites of make target `name` (`test check: lint ...` names two)."""
    for match in re.finditer(r"^([\w .-]+):([^=].*)?$", _MAKEFILE, flags=re.MULTILINE):
        if name in match.group(1).split():
            return match.group(2) or ""
    raise AssertionError(f"no make target {name!r}")


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    assert "make test   # set up .venv and run every check" in _README
    script = (_ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line for line in script if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]


def test_every_make_target_the_readme_names_exists() -> None:
    named = {m for code in _code() for m in re.findall(r"\bmake ([a-z][a-z-]*)", code)}
    assert {"up", "test", "tools"} <= named
    for name in named:
        _target(name)


def test_make_up_installs_the_clients_the_quick_start_uses() -> None:
    """Regression: the quick start needed redis-cli and nc, which nothing installed."""
    clients_line = re.search(r"^CLIENTS := (.*)$", _MAKEFILE, flags=re.MULTILINE)
    assert clients_line is not None
    installed = {pair.split(":")[0] for pair in clients_line.group(1).split()}
    used = set()
    for line in _quick_start_block():
        for part in line.split("|"):
            first = shlex.split(part)[0]
            if first not in {".", "printf", "postoffice"}:
                used.add(first)
    assert used == {"redis-cli", "nc"}
    assert used <= installed
    assert "tools" in _target("up").split()


def test_the_quick_start_activates_the_venv_before_any_postoffice() -> None:
    """Regression: bare `postoffice` and `.venv/bin/postoffice` were mixed, the bare ones
    failing in a fresh shell."""
    commands = _quick_start_block()
    assert commands[0] == ". .venv/bin/activate"
    assert all(not c.startswith(".venv/bin/postoffice") for c in commands)
    assert not [c for c in _code() if re.match(r"\.venv/bin/postoffice \w", c)]


def _postoffice_commands() -> list[list[str]]:
    found = []
    for code in _code():
        for match in re.finditer(
            r"(?:^|[\s(])(?:\.venv[\w-]*/bin/)?postoffice((?: [a-z][a-z-]*)*)", code
        ):
            words = match.group(1).split()
            found.append(words)
    return found


@pytest.mark.parametrize("words", sorted({tuple(w) for w in _postoffice_commands()}), ids=" ".join)
def test_every_postoffice_command_the_readme_shows_exists(words: tuple[str, ...]) -> None:
    command: click.Command = cli_main
    for word in words:
        if not isinstance(command, click.Group):
            break  # the rest are arguments (`get greeting`)
        sub = command.commands.get(word)
        assert sub is not None, f"`postoffice {' '.join(words)}`: no command {word!r}"
        command = sub
