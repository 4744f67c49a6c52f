"""SIGHUP reloads with real processes: the command server (one process and --workers 2),
the store and the ingest server started with a config file, the file edited, SIGHUP
sent, the new limit seen on the wire; a restart-only change logged and left; a bad file
logged and nothing changed."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from postoffice.core.framing import NEED_DATA, FrameDecoder
from postoffice.store.wire import PingRequest, Status, decode_response, encode_request
from tests.integration.conftest import ServerProcess, free_port_block

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

Serve = Callable[..., ServerProcess]

_WAIT_S = 20.0


def wait_for_log(server: ServerProcess, text: str, *, count: int = 1) -> str:
    """Wait (bounded) until `text` is in the server's log `count` times; the log."""
    deadline = time.monotonic() + _WAIT_S
    while True:
        log = server.log()
        if log.count(text) >= count:
            return log
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited {server.proc.returncode}: {log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged in time: {log}")
        time.sleep(0.05)


def hangup(server: ServerProcess, done: str) -> str:
    """SIGHUP the server and wait for its reload to log `done` once more; the log."""
    before = server.log().count(done)
    server.proc.send_signal(signal.SIGHUP)
    return wait_for_log(server, done, count=before + 1)


@pytest.fixture
def clients() -> Iterator[list[redis.Redis]]:
    opened: list[redis.Redis] = []
    yield opened
    for client in opened:
        client.close()


def connect(port: int, opened: list[redis.Redis]) -> redis.Redis:
    client = redis.Redis(port=port, socket_timeout=10, single_connection_client=True)
    opened.append(client)
    return client


# -- the command server -------------------------------------------------------------------


def test_command_reload_raises_max_clients_and_logs_it(
    serve: Serve, tmp_path: Path, clients: list[redis.Redis]
) -> None:
    config = tmp_path / "command.toml"
    config.write_text("# the clients\n[command]\nmax_connections = 1\n")
    server = serve("command", "--config", str(config), "--port", "0", "--no-metrics")
    first = connect(server.port, clients)
    assert first.ping()
    with pytest.raises(redis.exceptions.ConnectionError, match="max number of clients"):
        connect(server.port, clients).ping()
    config.write_text("# the clients\n[command]\nmax_connections = 2\nidle_timeout_s = 42\n")
    log = hangup(server, "config reloaded: idle-timeout")
    assert "config reloaded: max-connections 1 -> 2" in log
    assert "config reloaded: idle-timeout 300 -> 42" in log
    second = connect(server.port, clients)
    assert second.ping()
    assert first.config_get("maxclients", "timeout") == {"maxclients": "2", "timeout": "42"}
    with pytest.raises(redis.exceptions.ConnectionError, match="max number of clients"):
        connect(server.port, clients).ping()


def test_command_reload_leaves_a_restart_only_change_and_names_it(
    serve: Serve, tmp_path: Path, clients: list[redis.Redis]
) -> None:
    port = free_port_block(2)
    config = tmp_path / "command.ini"
    config.write_text(f"[command]\nport = {port}\nmetrics_port = none\n")
    server = serve("command", "--config", str(config))
    assert server.port == port
    config.write_text(f"[command]\nport = {port + 1}\nmetrics_port = none\nthreads = 2\n")
    log = hangup(server, "config reloaded: threads 4 -> 2")
    assert f"config reload: port {port} -> {port + 1} needs a restart, not applied" in log
    client = connect(port, clients)
    assert client.config_get("port", "worker-threads") == {
        "port": str(port),
        "worker-threads": "2",
    }
    with pytest.raises(redis.exceptions.ConnectionError):
        connect(port + 1, clients).ping()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("[command\nmax_connections = 9\n", "is not valid TOML"),
        ("[command]\nmax_clientz = 9\n", "unknown setting 'max_clientz'"),
        ("[command]\nmax_connections = 0\n", "setting 'max_connections' must be between 1"),
    ],
)
def test_command_reload_of_a_bad_file_changes_nothing(
    serve: Serve, tmp_path: Path, clients: list[redis.Redis], body: str, reason: str
) -> None:
    config = tmp_path / "command.toml"
    config.write_text("[command]\nmax_connections = 5\n")
    server = serve("command", "--config", str(config), "--port", "0", "--no-metrics")
    config.write_text(body)
    log = hangup(server, "config not reloaded, nothing changed")
    assert reason in log
    assert connect(server.port, clients).config_get("maxclients") == {"maxclients": "5"}


def test_command_reload_keeps_the_flags_and_environment_of_the_start(
    serve: Serve, tmp_path: Path, clients: list[redis.Redis]
) -> None:
    config = tmp_path / "command.toml"
    config.write_text("[command]\nrequest_timeout_s = 5\nmax_connections = 5\n")
    server = serve(
        "command", "--config", str(config), "--port", "0", "--no-metrics", "--request-timeout", "9"
    )
    config.write_text("[command]\nrequest_timeout_s = 7\nmax_connections = 6\n")
    hangup(server, "config reloaded: max-connections 5 -> 6")
    got = connect(server.port, clients).config_get("request-timeout", "maxclients")
    assert got == {"request-timeout": "9", "maxclients": "6"}


def test_command_workers_reload_reaches_every_worker(
    serve: Serve, tmp_path: Path, clients: list[redis.Redis]
) -> None:
    config = tmp_path / "command.toml"
    config.write_text('[command]\nidle_timeout_s = 300\nrate_limit_per_s = 0\nlog_level = "INFO"\n')
    server = serve(
        "command", "--config", str(config), "--port", "0", "--no-metrics", "--workers", "2"
    )
    config.write_text(
        '[command]\nidle_timeout_s = 120\nrate_limit_per_s = 1000\nlog_level = "WARNING"\n'
    )
    log = hangup(server, "config reloaded: log-level INFO -> WARNING")
    assert "config reloaded: rate-limit 0 -> 1000" in log
    # Connections spread over both workers; every one answers with the new values.
    seen_ids: set[int] = set()
    for _ in range(12):
        client = connect(server.port, clients)
        assert client.config_get("timeout", "rate-limit", "loglevel") == {
            "timeout": "120",
            "rate-limit": "1000",
            "loglevel": "WARNING",
        }
        seen_ids.add(int(client.client_id()))
    workers = {conn_id % 2 for conn_id in seen_ids}  # worker i of 2 gives ids i+1, i+3, ...
    assert workers == {0, 1}, f"connections reached one worker only: {sorted(seen_ids)}"


# -- the store server ---------------------------------------------------------------------


def store_ping(port: int) -> Status:
    """Open a connection, PING, and return the first response's status (BUSY when refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(encode_request(PingRequest(), 1))
        frames = FrameDecoder()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            event = frames.next_event()
            if event is not NEED_DATA:
                return decode_response(event).status
            block = sock.recv(65536)
            if not block:
                raise AssertionError("closed without a response")
            frames.feed(block)
    raise AssertionError("no response in time")


def test_store_reload_raises_max_connections_and_keeps_its_port(
    serve: Serve, tmp_path: Path
) -> None:
    config = tmp_path / "store.toml"
    config.write_text("[store]\nmax_connections = 1\nmetrics_port = 0\n")
    data = str(tmp_path / "var")
    server = serve("store", "--config", str(config), "--port", "0", "--data-dir", data)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as held:
        held.sendall(encode_request(PingRequest(), 1))
        assert held.recv(1024)  # its answer: the connection is counted
        assert store_ping(server.port) is Status.BUSY
        config.write_text('[store]\nmax_connections = 2\nmetrics_port = "none"\n')
        log = hangup(server, "config reloaded: max-connections 1 -> 2")
        assert "config reload: metrics-port 0 -> none needs a restart, not applied" in log
        assert "metrics" in server.listeners
        assert store_ping(server.port) is Status.OK
        config.write_text('[store]\nmax_connections = "many"\n')
        log = hangup(server, "config not reloaded, nothing changed")
        assert "setting 'max_connections' from [store] of" in log
        assert store_ping(server.port) is Status.OK


# -- the ingest server --------------------------------------------------------------------


def ingest_info(server: ServerProcess) -> dict[str, object]:
    host, port = server.listeners["health"]
    with urllib.request.urlopen(f"http://{host}:{port}/info", timeout=10) as response:
        info: dict[str, object] = json.loads(response.read())
    return info


def test_ingest_reload_opens_data_ports_and_changes_the_ttl(serve: Serve, tmp_path: Path) -> None:
    config = tmp_path / "ingest.ini"
    config.write_text("[ingest]\nx = 2\nttl_s = 600\n")
    server = serve(
        "ingest",
        "--config",
        str(config),
        "--sys-base",
        "0",
        "--data-base",
        "0",
        "--data-dir",
        str(tmp_path / "var"),
        "--no-fsync",
    )
    assert len(ingest_info(server)["data_ports"]) == 2  # type: ignore[arg-type]  # a JSON list
    config.write_text("[ingest]\nx = 3\nttl_s = 60\nstream_assemblies = 1\n")
    log = hangup(server, "config reloaded: ttl 600 -> 60")
    assert "config reloaded: x 2 -> 3" in log
    assert "config reload: stream-assemblies 4 -> 1 needs a restart, not applied" in log
    info = ingest_info(server)
    ports = info["data_ports"]
    assert isinstance(ports, list)
    assert len(ports) == 3
    assert info["ttl_s"] == 60
    with socket.create_connection(("127.0.0.1", ports[2]), timeout=10):
        pass  # the new data port takes connections
    config.write_text("[ingest]\nx = 999\n")
    log = hangup(server, "config not reloaded, nothing changed")
    assert "setting 'x' must be between 1 and 64, got 999" in log
    assert len(ingest_info(server)["data_ports"]) == 3  # type: ignore[arg-type]  # a JSON list


# -- CONFIG REWRITE -----------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_config_rewrite_then_restart_gives_the_same_settings(
    serve: Serve, tmp_path: Path, clients: list[redis.Redis], workers: str
) -> None:
    config = tmp_path / "command.toml"
    config.write_text(
        "# kept by CONFIG REWRITE\n[command]\nmax_connections = 50\n\n[store]\nport = 1\n"
    )
    args = ("--config", str(config), "--port", "0", "--no-metrics", "--workers", workers)
    server = serve("command", *args)
    client = connect(server.port, clients)
    assert client.config_set("maxclients", 60)
    assert client.config_set("timeout", 33)
    assert client.config_set("rate-limit", 500)
    assert client.config_rewrite() in (True, b"OK")
    text = config.read_text()
    assert text.startswith("# kept by CONFIG REWRITE\n[command]\nmax_connections = 60\n")
    assert "[store]\nport = 1\n" in text
    before = client.config_get("*")
    client.close()
    assert server.stop() == 0
    again = serve("command", *args)
    after = connect(again.port, clients).config_get("*")
    assert after["maxclients"] == "60"
    assert {k: v for k, v in after.items() if k != "port"} == {
        k: v for k, v in before.items() if k != "port"
    }


def test_config_rewrite_without_a_config_file_is_an_error(
    serve: Serve, clients: list[redis.Redis]
) -> None:
    server = serve("command", "--port", "0", "--no-metrics")
    client = connect(server.port, clients)
    with pytest.raises(
        redis.exceptions.ResponseError, match=r"^The server is running without a config file$"
    ):
        client.config_rewrite()
    assert client.ping()
