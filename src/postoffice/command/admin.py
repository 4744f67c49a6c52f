"""The command server's HTTP port: /metrics, /healthz, /readyz, the admin API (/stats,
/clients, /config) and `/ws`, the command protocol over WebSocket.

Command server layer; it sees the server through the AdminHost Protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client.registry import Collector

from postoffice.command.connection import CommandConnection, ConnectionHost
from postoffice.command.errors import CommandError
from postoffice.command.websocket import max_message_bytes, open_bridge
from postoffice.core.errors import ConfigError
from postoffice.core.http import health_routes, metrics_route
from postoffice.core.httpapi import (
    Endpoint,
    HttpRequest,
    Response,
    Route,
    WebSocketRoute,
    error_response,
    json_response,
    settings_body,
)


class AdminHost(ConnectionHost, Protocol):
    """What the HTTP port needs of the command server (command/server.py)."""

    @property
    def registry(self) -> Collector: ...

    def info(self) -> dict[str, dict[str, object]]: ...

    def clients(self) -> Iterable[CommandConnection]: ...

    def config_items(self) -> Mapping[str, str]: ...

    def config_set(self, pairs: list[tuple[str, str]]) -> None: ...


def client_entry(conn: CommandConnection) -> dict[str, object]:
    """One client as /clients shows it: CLIENT LIST's fields (numbers as numbers) and its
    connection state."""
    entry: dict[str, object] = {}
    for field in conn.describe().split(" "):
        name, _, value = field.partition("=")
        entry[name] = int(value) if value.lstrip("-").isdigit() else value
    entry["state"] = conn.state.name
    return entry


def http_routes(
    server: AdminHost, ready: Callable[[], bool]
) -> dict[str, Route | Endpoint | WebSocketRoute]:
    """Every path of the command server's HTTP port. The admin paths need the server's
    `requirepass` (as `Authorization: Bearer` or Basic) when it has one; `/ws` asks for
    it in-band, as the command port does (AUTH)."""

    def password() -> str | None:
        return server.config.requirepass

    def stats(request: HttpRequest) -> Response:
        return json_response(server.info())

    def clients(request: HttpRequest) -> Response:
        return json_response([client_entry(conn) for conn in server.clients()])

    def get_config(request: HttpRequest) -> Response:
        return json_response(dict(server.config_items()))

    def put_config(request: HttpRequest) -> Response:
        body = settings_body(request)
        if body.refusal is not None:
            return body.refusal
        try:
            server.config_set(list(body.settings.items()))
        except CommandError as exc:
            status = 403 if "immutable" in str(exc) else 400
            return error_response(status, str(exc))
        except ConfigError as exc:
            return error_response(400, str(exc))
        return json_response(dict(server.config_items()))

    return {
        "/metrics": metrics_route(server.registry),
        **health_routes(ready),
        "/stats": Endpoint(handlers={"GET": stats}, password=password),
        "/clients": Endpoint(handlers={"GET": clients}, password=password),
        "/config": Endpoint(handlers={"GET": get_config, "PUT": put_config}, password=password),
        "/ws": WebSocketRoute(
            opener=open_bridge(server), max_message_bytes=lambda: max_message_bytes(server)
        ),
    }


__all__ = ["AdminHost", "client_entry", "http_routes"]
