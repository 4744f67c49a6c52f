"""serve_http on a real loopback socket, fetched with urllib as a probe or scraper would."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from email.message import Message

import pytest

from postoffice.core.errors import BrokenError
from postoffice.core.http import health_routes, metrics_route, serve_http
from postoffice.core.metrics import StatsCollector, new_registry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

_TIMEOUT_S = 5.0


def _headers(message: Message) -> dict[str, str]:
    """Header names lower-cased: h11 sends them that way and HTTP ignores case."""
    return {name.lower(): value for name, value in message.items()}


def _fetch(url: str, *, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as reply:
            return reply.status, _headers(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _headers(exc.headers), exc.read()


@pytest.fixture
async def base_url() -> AsyncIterator[Callable[[str], str]]:
    registry = new_registry()
    registry.register(StatsCollector("test", lambda: {"requests": 5}, counters={"requests"}))
    routes = {**health_routes(lambda: False), "/metrics": metrics_route(registry)}
    server = await serve_http(routes, host="127.0.0.1", port=0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield lambda path: f"http://{host}:{port}{path}"
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), timeout=_TIMEOUT_S)


async def test_healthz_over_a_socket(base_url: Callable[[str], str]) -> None:
    status, _, body = await asyncio.to_thread(_fetch, base_url("/healthz"))
    assert (status, body) == (200, b"ok\n")


async def test_readyz_reports_not_ready(base_url: Callable[[str], str]) -> None:
    status, _, body = await asyncio.to_thread(_fetch, base_url("/readyz"))
    assert (status, body) == (503, b"not ready\n")


async def test_metrics_over_a_socket(base_url: Callable[[str], str]) -> None:
    status, headers, body = await asyncio.to_thread(_fetch, base_url("/metrics"))
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    assert b"\ntest_requests_total 5.0\n" in body
    assert b"# TYPE test_requests_total counter\n" in body


async def test_unknown_path_and_method_over_a_socket(base_url: Callable[[str], str]) -> None:
    missing, _, _ = await asyncio.to_thread(_fetch, base_url("/missing"))
    assert missing == 404
    refused, headers, _ = await asyncio.to_thread(_fetch, base_url("/healthz"), method="DELETE")
    assert refused == 405
    assert headers["allow"] == "GET, HEAD"


async def test_busy_port_raises_broken_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokenError, match=rf"^cannot listen for http on 127\.0\.0\.1:{port}: "):
            await serve_http({}, host="127.0.0.1", port=port)
