"""The store server's HTTP port as a real process: /stats, /clients and /config over
HTTP/1.1 and HTTP/2 (httpx, curl), the live settings taking effect on the store port."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from postoffice.store import Client, StoreRequestError
from tests.integration.conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Serve = Callable[..., ServerProcess]
_TIMEOUT_S = 10.0


def start(serve: Serve, tmp_path: Path) -> tuple[ServerProcess, str]:
    server = serve(
        "store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "var")
    )
    host, port = server.listeners["metrics"]
    return server, f"http://{host}:{port}"


def test_stats_and_clients_show_what_the_store_serves(serve: Serve, tmp_path: Path) -> None:
    server, base = start(serve, tmp_path)
    host, port = server.listeners["store"]
    with (
        Client(host, port, timeout_s=_TIMEOUT_S) as store,
        httpx.Client(base_url=base, timeout=_TIMEOUT_S) as http,
    ):
        store.put(b"k", b"v")
        stats = http.get("/stats").json()
        assert stats["connections_active"] == 1
        assert stats["requests"] >= 1
        [entry] = http.get("/clients").json()
        assert {"id", "addr", "age", "idle", "state", "bytes_in", "bytes_out"} <= set(entry)
        assert entry["bytes_in"] > 0
        assert entry["state"] == "READING_HEADER"


def test_put_config_changes_a_live_limit_and_refuses_the_rest(serve: Serve, tmp_path: Path) -> None:
    server, base = start(serve, tmp_path)
    host, port = server.listeners["store"]
    transport = httpx.HTTPTransport(http1=False, http2=True)  # prior knowledge
    with httpx.Client(base_url=base, transport=transport, timeout=_TIMEOUT_S) as http:
        assert http.get("/config").json()["max_connections"] == 10_000
        changed = http.put("/config", json={"max_connections": 1, "max_scan_page_bytes": 4096})
        assert changed.http_version == "HTTP/2"
        assert changed.status_code == 200, changed.text
        assert changed.json()["max_connections"] == 1
        immutable = http.put("/config", json={"port": 1})
        assert immutable.status_code == 403
        assert immutable.json()["message"] == (
            "setting 'port' cannot change while running, only at start"
        )
        assert http.put("/config", json={"nope": 1}).status_code == 400
        out_of_range = http.put("/config", json={"max_connections": 0})
        assert out_of_range.status_code == 400
        assert "max_connections" in out_of_range.json()["message"]
        assert http.put("/config", json={"idle_timeout_s": "soon"}).json()["message"] == (
            "setting 'idle_timeout_s' must be a number, got 'soon'"
        )
    with Client(host, port, timeout_s=_TIMEOUT_S) as first:
        first.ping()
        with (
            pytest.raises(StoreRequestError, match=r"^BUSY: max number of clients reached$"),
            Client(host, port, timeout_s=_TIMEOUT_S) as second,
        ):
            second.ping()  # over max_connections 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_reads_stats_over_an_h2c_upgrade(serve: Serve, tmp_path: Path) -> None:
    _, base = start(serve, tmp_path)
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            f"{base}/stats",
        ],
        capture_output=True,
        timeout=20,
        check=True,
    )
    assert done.stdout == b"200 2"
