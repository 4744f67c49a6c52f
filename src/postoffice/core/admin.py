"""The admin API's parts every service shares: a connection as /clients shows it, and live
settings changed from a PUT /config body with the config's own checks.

Core layer; each service builds its /stats, /clients and /config from these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from postoffice.core.connections import Managed
from postoffice.core.errors import ConfigError
from postoffice.core.httpapi import (
    Endpoint,
    Handler,
    HttpRequest,
    Response,
    error_response,
    json_response,
    settings_body,
)

C = TypeVar("C")


def connection_entry(conn: Managed, now: float) -> dict[str, object]:
    """One connection for /clients: id, addr, age and idle (whole seconds), state, bytes
    in and out, requests; what a connection does not track is left out."""
    entry: dict[str, object] = {"id": conn.conn_id}
    peer = getattr(conn, "peer", None)
    if peer is not None:
        entry["addr"] = peer
    created = getattr(conn, "created", None)
    if isinstance(created, int | float):
        entry["age"] = int(now - created)
    entry["idle"] = int(now - conn.last_active)
    state = getattr(conn, "state", None)
    if state is not None:
        entry["state"] = getattr(state, "name", str(state))
    entry["bytes_in"] = conn.bytes_in
    entry["bytes_out"] = conn.bytes_out
    requests = getattr(conn, "requests", None)
    if isinstance(requests, int):
        entry["requests"] = requests
    return entry


def settings_of(config: object) -> dict[str, object]:
    """A config dataclass's fields as JSON values (paths as strings)."""
    assert dataclasses.is_dataclass(config)
    return {
        f.name: str(value) if isinstance(value := getattr(config, f.name), Path) else value
        for f in dataclasses.fields(config)
    }


def changed_settings(config: C, settings: Mapping[str, str], live: Iterable[str]) -> C | Response:
    """`config` with `settings` (field name -> text) applied, or the refusal: 400 for an
    unknown name or a value of the wrong type or out of range (the config's own check,
    ConfigError), 403 for a field that only a restart changes."""
    live_names = set(live)
    assert dataclasses.is_dataclass(config)
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for name, raw in settings.items():
        if name not in fields:
            return error_response(400, f"unknown setting {name!r}")
        if name not in live_names:
            return error_response(
                403, f"setting {name!r} cannot change while running, only at start"
            )
        current = getattr(config, name)
        try:
            changes[name] = float(raw) if isinstance(current, float) else int(raw)
        except ValueError:
            kind = "a number" if isinstance(current, float) else "an integer"
            return error_response(400, f"setting {name!r} must be {kind}, got {raw!r}")
    try:
        return dataclasses.replace(config, **changes)  # type: ignore[type-var]  # a dataclass, asserted above
    except ConfigError as exc:
        return error_response(400, str(exc))


def admin_endpoints(
    *,
    stats: Callable[[], object],
    clients: Callable[[], object],
    config: Callable[[], object],
    put_config: Callable[[dict[str, str]], Response | Awaitable[Response]] | None,
    password: Callable[[], str | None] | None = None,
) -> dict[str, Endpoint]:
    """/stats, /clients and /config (PUT only with `put_config`, which gets the body's
    settings once they parsed), each behind `password` when it gives one."""

    def put(request: HttpRequest) -> Response | Awaitable[Response]:
        assert put_config is not None
        body = settings_body(request)
        if body.refusal is not None:
            return body.refusal
        return put_config(body.settings)

    config_handlers: dict[str, Handler] = {"GET": lambda r: json_response(config())}
    if put_config is not None:
        config_handlers["PUT"] = put
    return {
        "/stats": Endpoint(handlers={"GET": lambda r: json_response(stats())}, password=password),
        "/clients": Endpoint(
            handlers={"GET": lambda r: json_response(clients())}, password=password
        ),
        "/config": Endpoint(handlers=config_handlers, password=password),
    }


__all__ = ["admin_endpoints", "changed_settings", "connection_entry", "settings_of"]
