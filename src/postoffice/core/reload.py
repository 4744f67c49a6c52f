"""Hot reload: a service's settings read again on SIGHUP, the changes a running server can
take applied, the others logged as needing a restart. Core layer: the diff and the plan
are pure; `Reloads` drives any server that has the `Reconfigurable` seam.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, final

from postoffice.core.config import declared, shown_value
from postoffice.core.errors import ConfigError, PostOfficeError

log = logging.getLogger(__name__)

C = TypeVar("C")

#: What the logs show instead of a secret's value (a password, a token).
HIDDEN: str = "(hidden)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One setting whose value differs: its field, the name the logs use, both values
    as the logs show them, and whether a running server can take the new one."""

    field: str
    name: str
    old: str
    new: str
    live: bool

    def describe(self) -> str:
        """`max-connections 100 -> 200`."""
        return f"{self.name} {self.old} -> {self.new}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan(Generic[C]):
    """What a reload does: `config` is the running settings with every live change made
    (and every restart-only one left as it was); `applied` and `restart` list both kinds."""

    config: C
    applied: tuple[Change, ...]
    restart: tuple[Change, ...]


def setting_name(field: dataclasses.Field[object]) -> str:
    """The name a setting goes by in the logs and docs: its flag without the dashes
    (`max-connections`, `rate-limit`), or its field's name with dashes when it has none."""
    spec = declared(field)
    # A `--no-fsync` flag turns its setting off: the log says `fsync on -> off` instead.
    if spec is not None and spec.flag and not spec.flag.startswith("--no-"):
        return spec.flag.removeprefix("--")
    return field.name.removesuffix("_s").replace("_", "-")


def diff(old: C, new: C) -> tuple[Change, ...]:
    """Every field of the dataclasses `old` and `new` (one class) whose value differs, in
    declaration order. A field declared `live` can change while running; a plain field or
    one declared without it needs a restart. Raises TypeError for two different classes."""
    if type(old) is not type(new) or not dataclasses.is_dataclass(old):
        raise TypeError(f"cannot compare {type(old).__name__} with {type(new).__name__}")
    changes = []
    for field in dataclasses.fields(old):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before == after:
            continue
        spec = declared(field)
        if spec is not None and spec.secret:
            shown_old = shown_new = HIDDEN
        else:
            unit = "count" if spec is None else spec.unit
            shown_old, shown_new = shown_value(before, unit), shown_value(after, unit)
        changes.append(
            Change(
                field=field.name,
                name=setting_name(field),
                old=shown_old,
                new=shown_new,
                live=spec is not None and spec.live,
            )
        )
    return tuple(changes)


def plan(running: C, loaded: C) -> Plan[C]:
    """What reloading `loaded` into a server running with `running` does.

    Raises ConfigError when the live changes do not fit the settings that stay (the
    dataclass's own checks across fields reject the mix); nothing is changed then.
    """
    changes = diff(running, loaded)
    applied = tuple(c for c in changes if c.live)
    restart = tuple(c for c in changes if not c.live)
    config = running
    if applied:
        values = {c.field: getattr(loaded, c.field) for c in applied}
        config = dataclasses.replace(running, **values)  # type: ignore[type-var]  # a dataclass, checked by diff
    return Plan(config=config, applied=applied, restart=restart)


def apply_log_level(level: str) -> None:
    """Log at `level` (a name of core.logs.LEVELS) from now on, in this process."""
    logging.getLogger().setLevel(level.upper())


class Reconfigurable(Protocol[C]):
    """A running server as a reload sees it: its settings now, and how it takes new ones."""

    @property
    def config(self) -> C:
        """The settings it runs with."""
        ...

    async def reconfigure(self, new: C) -> None:
        """Run with `new` from now on; only live settings differ from `config`. Raises
        PostOfficeError when a change cannot be made (then `config` says what holds)."""
        ...


@final
class Reloads(Generic[C]):
    """SIGHUP's work for one service: read the settings again (`read`, given by the
    launcher: the same file, the environment as it was at start, the same flags), apply
    the live changes to the attached server, log each change, and log the others as
    needing a restart. A file that does not load, or a mix of values the settings reject,
    changes nothing and is logged with the reason. Reloads run one at a time, in order.
    Every line is logged at WARNING or above, so a raised log level still shows them.
    """

    def __init__(self) -> None:
        self.target: Reconfigurable[C] | None = None
        self._read: Callable[[], C] | None = None
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[Plan[C] | None]] = set()

    def __repr__(self) -> str:
        return f"<Reloads target={self.target!r} pending={len(self._pending)}>"

    def attach(self, target: Reconfigurable[C]) -> None:
        """Reload into `target` from now on (the server, once it is built)."""
        self.target = target

    def bind(self, read: Callable[[], C]) -> None:
        """Read the settings with `read`; it raises ConfigError for a bad source."""
        self._read = read

    def hangup(self) -> None:
        """The SIGHUP handler: start a reload on the running loop."""
        log.info("signal=SIGHUP received, reading the settings again")
        task = asyncio.get_running_loop().create_task(self.reload())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def reload(self) -> Plan[C] | None:
        """Read, compare, apply and log; the plan applied, or None when nothing was.

        Never raises for a bad source or a change the server refused: it logs them.
        """
        async with self._lock:
            target, read = self.target, self._read
            if target is None or read is None:
                log.warning("config not reloaded: the server is not running yet")
                return None
            try:
                step = plan(target.config, read())
            except ConfigError as exc:
                log.error("config not reloaded, nothing changed: %s", exc)
                return None
            for change in step.restart:
                log.warning("config reload: %s needs a restart, not applied", change.describe())
            if step.applied:
                try:
                    await target.reconfigure(step.config)
                except PostOfficeError as exc:
                    log.error("config not reloaded: %s", exc)
                    return None
            # At WARNING, as the restart-only ones: each line changes (or says it did not
            # change) a running server, and a log level just raised must not hide it.
            for change in step.applied:
                log.warning("config reloaded: %s", change.describe())
            if not step.applied and not step.restart:
                log.warning("config reloaded: nothing changed")
            return step


__all__ = [
    "HIDDEN",
    "Change",
    "Plan",
    "Reconfigurable",
    "Reloads",
    "apply_log_level",
    "diff",
    "plan",
    "setting_name",
]
