"""What every `postoffice <service> serve` command shares: its flags and its start-up.

The flags of a service's settings are made from its config dataclass (`config_options`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from postoffice.core import config as core_config
from postoffice.core import logs, tracing
from postoffice.core.errors import ConfigError, PostOfficeError
from postoffice.core.reload import Reloads
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
                "--log-level",
                default=None,
                help="DEBUG, INFO, WARNING, ERROR or CRITICAL; a service with a log_level "
                "setting also takes it from the file and environment.  [default: INFO]",
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
    log_level: str | None,
    log_json: bool,
    serve: Callable[[C, asyncio.Event, str | None], Coroutine[Any, Any, None]],
    adjust: Callable[[C], C] | None = None,
    shared_env: dict[str, str] | None = None,
    reloads: Reloads[C] | None = None,
) -> None:
    """Set up logging, load the layered config, and run `serve(config, stop, ready_file)`.

    Settings come from defaults < the --config file < the variables of `shared_env`
    (POSTOFFICE_DATA_DIR) < POSTOFFICE_<SECTION>_* < flags (`None` flags fall through).
    A service whose config has a `trace` setting gets tracing set up (core/tracing.py).
    A bad setting, or any PostOfficeError that ends the run (a port that cannot be
    bound, say), is a one-line click error, also written to the ready file
    (`runtime.announce_failure`) for whoever waits on it. With `reloads` (whose server
    `serve` attaches), SIGHUP reads the settings again the same way: the file as it is
    then, the environment as it was at start, the same flags.
    """
    logs.setup(level=log_level or "INFO", json=log_json, service=section)
    environ = dict(os.environ)  # a reload sees the environment the process started with
    leveled = any(f.name == "log_level" for f in dataclasses.fields(config_cls))  # type: ignore[arg-type]  # a dataclass
    if leveled and log_level is not None:  # the flag is one more override of the setting
        flags = {**flags, "log_level": log_level.upper()}

    def read() -> C:
        loaded = core_config.load(
            config_cls,
            section=section,
            path=config_path,
            env=environ,
            overrides=flags,
            shared_env=shared_env,
        )
        return loaded if adjust is None else adjust(loaded)

    try:
        config = read()
        level = getattr(config, "log_level", None)
        if isinstance(level, str):
            logs.setup(level=level, json=log_json, service=section)
        if hasattr(config, "trace"):  # the services that make spans declare the setting
            tracing.setup(service=section, trace=config.trace)
    except ConfigError as exc:
        raise _failed(section, ready_file, exc) from exc
    raise_fd_limit()

    async def main(stop: asyncio.Event) -> None:
        await serve(config, stop, ready_file)

    if reloads is not None:
        reloads.bind(read)
    try:
        run(main, on_hangup=None if reloads is None else reloads.hangup)
    except PostOfficeError as exc:
        # A setting, a busy port, a locked store: one line, no traceback.
        raise _failed(section, ready_file, exc) from exc
    finally:
        tracing.shutdown()  # the spans still queued go out before the process ends


def _failed(section: str, ready_file: str | None, exc: PostOfficeError) -> click.ClickException:
    """The one-line error to exit with; the reason also goes to the ready file if there is one."""
    if ready_file:
        with contextlib.suppress(OSError):  # the exit and its message still happen
            announce_failure(ready_file, service=section, error=str(exc))
    return click.ClickException(str(exc))


def config_options(config_cls: type) -> Callable[[F], F]:
    """Add one click option per field of the dataclass `config_cls` that declares a flag.

    Each option is named for its field (so the command gets `**flags` that `load` takes as
    overrides) and defaults to None, so a flag not given falls through to the environment,
    the file and the dataclass default. Its help is the field's, then the default and the
    allowed values as the dataclass declares them: `[default: 300; 0..86400]`. Raises
    TypeError for a flagged field of a type no flag parses.
    """
    options = [_option(flag) for flag in core_config.flag_fields(config_cls)]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def option_help(flag: core_config.Flag) -> str:
    """The --help text of a setting's flag: its help, its default, its allowed values."""
    shown = [f"default: {core_config.shown_default(flag)}"]
    allowed = core_config.shown_range(flag.spec)
    if allowed is not None and not flag.spec.choices:  # click lists a Choice's values itself
        shown.append(allowed)
    return f"{flag.spec.help}  [{'; '.join(shown)}]"


def _option(flag: core_config.Flag) -> Callable[[F], F]:
    spec, name = flag.spec, flag.field.name
    if flag.kind is bool:
        return click.option(
            flag.name, name, flag_value=flag.sets, default=None, help=option_help(flag)
        )
    click_type: click.ParamType[object] | type | None
    if spec.choices:
        click_type = click.Choice(spec.choices)
    elif flag.kind is pathlib.Path:
        click_type = click.Path(
            exists=spec.path == "existing-file",
            file_okay=spec.path != "dir",
            dir_okay=spec.path == "dir",
            path_type=pathlib.Path,
        )
    elif flag.kind is str:
        click_type = None
    else:
        click_type = flag.kind
    return click.option(
        flag.name, name, type=click_type, default=None, metavar=spec.metavar, help=option_help(flag)
    )
