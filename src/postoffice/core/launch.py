"""What every `postoffice <service> serve` command shares: its common flags and its start-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from postoffice.core import config as core_config
from postoffice.core import logs
from postoffice.core.errors import ConfigError, PostOfficeError
from postoffice.core.runtime import announce_failure, raise_fd_limit, run

C = TypeVar("C")
F = TypeVar("F", bound=Callable[..., Any])


def serve_options(section: str) -> Callable[[F], F]:
    """Add --config, --ready-file, --log-level and --log-json to a `serve` command."""

    def decorate(command: F) -> F:
        options = (
            click.option(
                "--config",
                "config_path",
                type=click.Path(dir_okay=False),
                default=None,
                help=f"TOML or INI file with a [{section}] section.",
            ),
            click.option(
                "--ready-file",
                type=click.Path(dir_okay=False),
                default=None,
                help="Write the bound addresses here as JSON once listening.",
            ),
            click.option(
                "--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING..."
            ),
            click.option("--log-json", is_flag=True, help="Log one JSON object per line."),
        )
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def serve_service(
    *,
    section: str,
    config_cls: type[C],
    flags: dict[str, object],
    config_path: str | None,
    ready_file: str | None,
    log_level: str,
    log_json: bool,
    serve: Callable[[C, asyncio.Event, str | None], Coroutine[Any, Any, None]],
    adjust: Callable[[C], C] | None = None,
) -> None:
    """Set up logging, load the layered config, and run `serve(config, stop, ready_file)`.

    Settings come from defaults < the --config file < POSTOFFICE_<SECTION>_* < flags
    (`None` flags fall through). A bad setting, or any PostOfficeError that ends the
    run (a port that cannot be bound, say), is a one-line click error, also written to
    the ready file (`runtime.announce_failure`) for whoever waits on it.
    """
    logs.setup(level=log_level, json=log_json, service=section)
    try:
        config = core_config.load(config_cls, section=section, path=config_path, overrides=flags)
        if adjust is not None:
            config = adjust(config)
    except ConfigError as exc:
        raise _failed(section, ready_file, exc) from exc
    raise_fd_limit()

    async def main(stop: asyncio.Event) -> None:
        await serve(config, stop, ready_file)

    try:
        run(main)
    except PostOfficeError as exc:
        # A setting, a busy port, a locked store: one line, no traceback.
        raise _failed(section, ready_file, exc) from exc


def _failed(section: str, ready_file: str | None, exc: PostOfficeError) -> click.ClickException:
    """The one-line error to exit with; the reason also goes to the ready file if there is one."""
    if ready_file:
        with contextlib.suppress(OSError):  # the exit and its message still happen
            announce_failure(ready_file, service=section, error=str(exc))
    return click.ClickException(str(exc))
