"""The ingest server's HTTP routes: the health port's admin API (/stats, /clients, /config,
beside /healthz, /readyz, /info) and the telemetry port's /events as NDJSON or WebSocket.

Ingest layer, the I/O shell; it sees the server through the AdminHost Protocol.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Protocol

from postoffice.core.admin import admin_endpoints, connection_entry
from postoffice.core.connections import ConnectionManager
from postoffice.core.errors import ConfigError
from postoffice.core.httpapi import (
    Endpoint,
    Response,
    Route,
    Stream,
    WebSocketRoute,
    error_response,
    json_response,
)
from postoffice.core.websocket import stream_opener
from postoffice.ingest.commands import READ_ONLY, SETTABLE, IngestControl, config_items

log = logging.getLogger(__name__)

#: What a telemetry WebSocket client may send: nothing is read, so a message is only
#: allowed to be small (a browser's keep-alive text, say).
MAX_TELEMETRY_MESSAGE_BYTES: Final = 1024

_INTEGER: Final = re.compile(r"[+-]?[0-9]{1,18}")
#: CONFIG SET names -> IngestConfig fields.
_FIELDS: Final = {
    "x": "x",
    "ttl": "ttl_s",
    "max-output-bytes": "max_output_bytes",
    "max-output-ratio": "max_output_ratio",
    "max-uploads": "max_uploads",
}


class AdminHost(IngestControl, Protocol):
    """What the HTTP routes need of the ingest server (ingest/server.py)."""

    @property
    def data_manager(self) -> ConnectionManager: ...

    @property
    def sys_manager(self) -> ConnectionManager: ...


def _value(name: str, raw: str) -> int | float | Response:
    """CONFIG SET's check of one value: `ttl` a number, the others integers."""
    if name == "ttl":
        try:
            return float(raw)
        except ValueError:
            return error_response(400, f"setting 'ttl' must be a number of seconds, got {raw!r}")
    if not _INTEGER.fullmatch(raw):
        return error_response(400, f"setting {name!r} must be an integer, got {raw!r}")
    return int(raw)


async def apply_settings(server: AdminHost, settings: dict[str, str]) -> Response:
    """PUT /config: CONFIG SET's names and checks; all checked (the config's own ranges
    included) before any is applied, so a refused body changes nothing."""
    values: dict[str, int | float] = {}
    for name, raw in settings.items():
        if name in READ_ONLY:
            return error_response(403, f"setting {name!r} cannot change while running")
        if name not in SETTABLE:
            return error_response(
                400, f"unknown setting {name!r}, expected one of {list(SETTABLE)}"
            )
        value = _value(name, raw)
        if isinstance(value, Response):
            return value
        values[name] = value
    try:
        changes: dict[str, Any] = {_FIELDS[n]: v for n, v in values.items()}
        dataclasses.replace(server.config, **changes)
    except ConfigError as exc:
        return error_response(400, str(exc))
    for name, value in values.items():
        if name == "x":
            await server.set_x(int(value))
        elif name == "ttl":
            server.set_ttl(float(value))
        elif name == "max-output-bytes":
            server.set_output_limits(max_output_bytes=int(value))
        elif name == "max-output-ratio":
            server.set_output_limits(max_output_ratio=int(value))
        else:
            server.set_max_uploads(int(value))
    log.info("config changed over http %s", " ".join(f"{k}={v}" for k, v in settings.items()))
    return json_response(config_items(server.config))


def admin_routes(server: AdminHost) -> dict[str, Endpoint]:
    """/stats (STATUS), /clients (the data, control and ack ports' connections) and
    /config (CONFIG GET and SET), behind the control token when there is one."""

    def clients() -> list[dict[str, object]]:
        entries = []
        for kind, manager in (("data", server.data_manager), ("system", server.sys_manager)):
            now = manager.clock()
            entries += [{**connection_entry(c, now), "port": kind} for c in manager]
        return entries

    return admin_endpoints(
        stats=server.status,
        clients=clients,
        config=lambda: config_items(server.config),
        put_config=lambda settings: apply_settings(server, settings),
        password=lambda: server.config.control_token,
    )


def events_route(events: Callable[[], AsyncIterator[bytes]]) -> WebSocketRoute:
    """/events: a WebSocket handshake gets one JSON document per message; any other GET
    the NDJSON stream, one document per line. The same events either way."""
    ndjson: Route = lambda: Stream(chunks=events(), content_type="application/x-ndjson")  # noqa: E731  # a route is a callable
    return WebSocketRoute(
        opener=stream_opener(events),
        max_message_bytes=lambda: MAX_TELEMETRY_MESSAGE_BYTES,
        fallback=ndjson,
    )


__all__ = [
    "MAX_TELEMETRY_MESSAGE_BYTES",
    "AdminHost",
    "admin_routes",
    "apply_settings",
    "events_route",
]
