"""The ingest server's HTTP ports as a real process: the health port's admin API (control
token, CONFIG SET's checks) and the telemetry events over WebSocket beside NDJSON."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.integration.conftest import ServerProcess
from tests.integration.test_ingest import Ingest, make_file, send

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Serve = Callable[..., ServerProcess]
_TIMEOUT_S = 10.0


def health(ingest: Ingest) -> str:
    return f"http://127.0.0.1:{ingest.sys_base}"


def test_admin_api_needs_the_control_token(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args("--control-token", "s3cret"))
    with httpx.Client(base_url=health(ingest), timeout=_TIMEOUT_S) as http:
        assert http.get("/stats").status_code == 401
        assert http.get("/stats", headers={"authorization": "Bearer nope"}).status_code == 403
        assert http.get("/healthz").status_code == 200
        assert http.get("/info").status_code == 200
        auth = {"authorization": "Bearer s3cret"}
        stats = http.get("/stats", headers=auth).json()
        assert stats["x"] == ingest.x
        assert http.get("/config", headers=auth).json()["x"] == str(ingest.x)


def test_put_config_scales_x_and_sets_ttl_with_config_sets_checks(
    serve: Serve, tmp_path: Path
) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    control = ingest.control()
    with httpx.Client(base_url=health(ingest), timeout=_TIMEOUT_S) as http:
        changed = http.put("/config", json={"x": 2, "ttl": 600})
        assert changed.status_code == 200, changed.text
        assert (changed.json()["x"], changed.json()["ttl"]) == ("2", "600")
        assert len(http.get("/stats").json()["data_ports"]) == 2
        assert control.config_get("ttl") == {"ttl": "600"}
        refused = http.put("/config", json={"x": 1, "ttl": "soon"})
        assert refused.status_code == 400
        assert refused.json()["message"] == "setting 'ttl' must be a number of seconds, got 'soon'"
        out_of_range = http.put("/config", json={"x": 1000})
        assert out_of_range.status_code == 400
        assert http.put("/config", json={"sys-base": 1}).status_code == 403
        assert http.put("/config", json={"colour": 1}).status_code == 400
        assert http.get("/config").json()["x"] == "2"  # the refused bodies changed nothing


async def test_clients_lists_the_control_connection(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    control = ingest.control()
    assert control.ping() is True
    async with httpx.AsyncClient(base_url=health(ingest), timeout=_TIMEOUT_S) as http:
        entries = (await http.get("/clients")).json()
    assert [e["port"] for e in entries] == ["system"]
    assert entries[0]["bytes_in"] > 0


async def test_telemetry_websocket_receives_an_uploads_events(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    url = f"ws://127.0.0.1:{ingest.sys_base + 1}/events"
    async with connect(url, open_timeout=_TIMEOUT_S) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), _TIMEOUT_S))
        assert hello["event"] == "hello"
        result = await send(ingest, make_file(tmp_path / "a.bin", 300_000))
        events: list[dict[str, object]] = []
        while not any(e["event"] == "published" for e in events):
            message = await asyncio.wait_for(ws.recv(), _TIMEOUT_S)
            assert isinstance(message, str)  # one JSON document per text message
            events.append(json.loads(message))
    ids = {e.get("file_id") for e in events}
    assert result.file_id.hex() in ids
    assert {"chunk_stored", "published"} <= {str(e["event"]) for e in events}


async def test_ndjson_events_still_stream_beside_the_websocket(
    serve: Serve, tmp_path: Path
) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    url = f"http://127.0.0.1:{ingest.sys_base + 1}/events"
    async with (
        httpx.AsyncClient(timeout=_TIMEOUT_S) as http,
        http.stream("GET", url) as stream,
    ):
        assert stream.headers["content-type"] == "application/x-ndjson"
        lines = stream.aiter_lines()
        first = await asyncio.wait_for(anext(lines), _TIMEOUT_S)
        assert json.loads(first)["event"] == "hello"
