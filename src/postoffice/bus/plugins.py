"""Plugins of the bus server: Python modules whose callbacks see channels and users come
and go.

Bus server layer. `RegistryWatch` turns the registry's changes into events (by comparing
what it holds with what it held); `PluginHost` loads the modules named with `--plugin`
and calls each one's callbacks on the loop. A callback that raises is logged and its
plugin disabled: a plugin never takes the server down.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Final, final

from postoffice.bus.errors import BusConfigError
from postoffice.bus.registry import Registry
from postoffice.core.logs import kv

log = logging.getLogger(__name__)

#: The callbacks a plugin module may define, each taking one event.
CALLBACKS: Final = (
    "on_ready",
    "on_new_channel",
    "on_removed_channel",
    "on_new_publisher",
    "on_new_subscriber",
    "on_removed_publisher",
    "on_removed_subscriber",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyEvent:
    """The server is serving: its socket, session, and network addresses (empty when
    --local)."""

    socket: str
    session: str
    addresses: dict[str, tuple[str, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelEvent:
    """A channel was created (or, with `removed`, removed)."""

    channel: str
    channel_id: int
    type: str
    removed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class UserEvent:
    """A publisher or subscriber was registered (or, with `removed`, removed). `client`
    is the registering connection's id (0: the server itself, negative: a bridge)."""

    channel: str
    user_id: int
    publisher: bool
    client: int
    reliable: bool
    removed: bool = False

    @property
    def bridge(self) -> bool:
        """Whether a bridge registered this user."""
        return self.client < 0


BusEvent = ChannelEvent | UserEvent

#: A channel as the watch last saw it: id, type, {(publisher?, user): (client, reliable)}.
_Seen = tuple[int, str, dict[tuple[bool, int], tuple[int, bool]]]


@final
class RegistryWatch:
    """What changed in a registry since the last look, as events in a fixed order:
    new channels, new users, removed users, removed channels. A channel is known by its
    name and id, a user by its id: look after every change (the server does, from the
    registry's `on_change`), or a user removed and another given its id is missed."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def __repr__(self) -> str:
        return f"<RegistryWatch channels={len(self._seen)}>"

    def changes(self, registry: Registry | None) -> list[BusEvent]:
        """The events since the last call (everything, the first time); None is a
        registry that is gone (every channel removed)."""
        now: dict[str, _Seen] = {}
        if registry is not None:
            for target in registry.channels():
                channel = target.channel
                users = {
                    (True, u): (c, channel.is_reliable_publisher(u))
                    for u, c in target.publisher_owner.items()
                }
                users.update(
                    ((False, u), (c, channel.is_reliable_subscriber(u)))
                    for u, c in target.subscriber_owner.items()
                )
                now[target.name] = (target.channel_id, channel.type, users)
        created: list[BusEvent] = []
        joined: list[BusEvent] = []
        left: list[BusEvent] = []
        gone: list[BusEvent] = []
        for name, (cid, type_, users) in self._seen.items():
            current = now.get(name)
            same = current is not None and current[0] == cid
            kept = current[2] if same and current is not None else {}
            left.extend(_user(name, k, users[k], removed=True) for k in users.keys() - kept)
            if not same:
                gone.append(ChannelEvent(channel=name, channel_id=cid, type=type_, removed=True))
        for name, (cid, type_, users) in now.items():
            before = self._seen.get(name)
            known = before[2] if before is not None and before[0] == cid else None
            if known is None:
                created.append(ChannelEvent(channel=name, channel_id=cid, type=type_))
            joined.extend(_user(name, k, users[k]) for k in users.keys() - (known or {}))
        self._seen = now
        return created + joined + left + gone


def _user(
    channel: str, key: tuple[bool, int], owner: tuple[int, bool], *, removed: bool = False
) -> UserEvent:
    return UserEvent(
        channel=channel, user_id=key[1], publisher=key[0], client=owner[0], reliable=owner[1],
        removed=removed,
    )  # fmt: skip


def callback_name(event: BusEvent) -> str:
    """The plugin callback an event goes to."""
    if isinstance(event, ChannelEvent):
        return "on_removed_channel" if event.removed else "on_new_channel"
    kind = "publisher" if event.publisher else "subscriber"
    return f"on_removed_{kind}" if event.removed else f"on_new_{kind}"


@final
class _Plugin:
    def __init__(self, name: str, module: ModuleType) -> None:
        self.name = name
        self.callbacks: dict[str, Callable[[object], object]] = {
            attr: fn for attr in CALLBACKS if callable(fn := getattr(module, attr, None))
        }
        self.enabled = True
        self.calls = 0

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"<Plugin {self.name} {state} callbacks={sorted(self.callbacks)} calls={self.calls}>"


@final
class PluginHost:
    """The plugins of one server, loaded from `modules` (importable module names) by
    `load()`. Raises BusConfigError from `load()` for a module that cannot be found;
    a module whose own code raises (at import or in a callback) is logged and disabled."""

    def __init__(self, modules: Iterable[str]) -> None:
        self._names = tuple(modules)
        self._plugins: list[_Plugin] = []
        self.failures = 0

    def __repr__(self) -> str:
        return f"<PluginHost {self._plugins!r} failures={self.failures}>"

    @property
    def enabled(self) -> list[str]:
        """The names of the plugins still enabled."""
        return [p.name for p in self._plugins if p.enabled]

    def load(self) -> None:
        """Import every module. Raises BusConfigError naming a module not found."""
        for name in self._names:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name is not None and name.startswith(exc.name):
                    raise BusConfigError(f"plugin module {name!r} not found") from exc
                self._broken(name, "import", exc)
                continue
            except Exception as exc:  # a plugin's own code: it must not stop the server
                self._broken(name, "import", exc)
                continue
            plugin = _Plugin(name, module)
            unknown = [
                attr
                for attr in dir(module)
                if attr.startswith("on_") and attr not in CALLBACKS
                and callable(getattr(module, attr))
            ]  # fmt: skip
            if unknown:
                log.warning("plugin callbacks not known %s", kv(plugin=name, names=unknown))
            self._plugins.append(plugin)
            log.info("plugin loaded %s", kv(plugin=name, callbacks=sorted(plugin.callbacks)))

    def _broken(self, name: str, where: str, exc: BaseException) -> None:
        self.failures += 1
        log.error("plugin disabled %s", kv(plugin=name, where=where, error=repr(exc)), exc_info=exc)

    def ready(self, event: ReadyEvent) -> None:
        """Call every plugin's on_ready."""
        self._call("on_ready", event)

    def dispatch(self, events: Iterable[BusEvent]) -> None:
        """Call each event's callback in every enabled plugin, in order."""
        for event in events:
            self._call(callback_name(event), event)

    def _call(self, callback: str, event: object) -> None:
        for plugin in self._plugins:
            fn = plugin.callbacks.get(callback)
            if not plugin.enabled or fn is None:
                continue
            plugin.calls += 1
            try:
                fn(event)
            except Exception as exc:  # a plugin boundary: log, disable, go on serving
                plugin.enabled = False
                self._broken(plugin.name, callback, exc)
