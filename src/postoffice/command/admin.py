"""The command server's HTTP port: /metrics, /healthz, /readyz, the admin API (/stats,
/clients, /config) and `/ws`, the command protocol over WebSocket.

Command server layer; it sees the server through the AdminHost Protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client.registry import Collector

from postoffice.command.config import CommandConfig
from postoffice.command.connection import CommandConnection, ConnectionHost
from postoffice.command.errors import CommandError, WorkerUnavailableError
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


def client_fields(line: str) -> dict[str, object]:
    """A CLIENT LIST line's fields, numbers as numbers."""
    entry: dict[str, object] = {}
    for field in line.split(" "):
        name, _, value = field.partition("=")
        entry[name] = int(value) if value.lstrip("-").isdigit() else value
    return entry


def client_entry(conn: CommandConnection) -> dict[str, object]:
    """One client as /clients shows it: CLIENT LIST's fields and its connection state."""
    return {**client_fields(conn.describe()), "state": conn.state.name}


def _config_refusal(exc: CommandError | ConfigError) -> Response:
    """CONFIG SET's refusal as PUT /config's: an immutable setting 403, the rest 400."""
    status = 403 if isinstance(exc, CommandError) and "immutable" in str(exc) else 400
    return error_response(status, str(exc))


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
        except (CommandError, ConfigError) as exc:
            return _config_refusal(exc)
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


class PrimaryHost(Protocol):
    """What the HTTP port needs of the primary under `--workers` (command/primary.py)."""

    @property
    def config(self) -> CommandConfig: ...

    async def info(self) -> dict[str, dict[str, object]]: ...

    async def client_lines(self) -> list[str]: ...

    def config_items(self) -> dict[str, str]: ...

    async def config_set(self, pairs: list[tuple[str, str]]) -> None: ...


def primary_routes(
    primary: PrimaryHost, metrics: Route, ready: Callable[[], bool]
) -> dict[str, Route | Endpoint]:
    """The HTTP port under `--workers`: `metrics` (summed over the workers), the probes,
    and the admin API answered by asking every worker, as INFO, CLIENT LIST and CONFIG
    SET are. No `/ws`: the primary has no clients of its own. A worker that does not
    answer makes it 503."""

    def password() -> str | None:
        return primary.config.requirepass

    async def stats(request: HttpRequest) -> Response:
        try:
            return json_response(await primary.info())
        except WorkerUnavailableError as exc:
            return error_response(503, str(exc))

    async def clients(request: HttpRequest) -> Response:
        try:
            return json_response([client_fields(line) for line in await primary.client_lines()])
        except WorkerUnavailableError as exc:
            return error_response(503, str(exc))

    def get_config(request: HttpRequest) -> Response:
        return json_response(primary.config_items())

    async def put_config(request: HttpRequest) -> Response:
        body = settings_body(request)
        if body.refusal is not None:
            return body.refusal
        try:
            await primary.config_set(list(body.settings.items()))
        except WorkerUnavailableError as exc:
            return error_response(503, str(exc))
        except (CommandError, ConfigError) as exc:
            return _config_refusal(exc)
        return json_response(primary.config_items())

    return {
        "/metrics": metrics,
        **health_routes(ready),
        "/stats": Endpoint(handlers={"GET": stats}, password=password),
        "/clients": Endpoint(handlers={"GET": clients}, password=password),
        "/config": Endpoint(handlers={"GET": get_config, "PUT": put_config}, password=password),
    }


__all__ = [
    "AdminHost",
    "PrimaryHost",
    "client_entry",
    "client_fields",
    "http_routes",
    "primary_routes",
]
