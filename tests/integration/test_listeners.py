"""listen() on real loopback sockets: serving, bind retry with backoff, SO_REUSEPORT.

Also each `serve` command with a busy port, as a real process: one line naming the port,
a SIGTERM honoured while the bind is retried, a failure reported in the ready file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postoffice.core import listeners
from postoffice.core.errors import BrokenError
from postoffice.core.listeners import bound_address, listen, make_socket
from postoffice.core.runtime import Backoff
from tests.integration.conftest import POSTOFFICE, env_without_postoffice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

_WAIT_S = 5.0  # upper bound on waits that should end quickly
_FAST = Backoff(initial_s=0.01, max_s=0.01)


class Echo(asyncio.Protocol):
    """Sends back what it receives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def roundtrip(port: int, data: bytes = b"ping\n") -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), _WAIT_S)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.readexactly(len(data)), _WAIT_S)
    finally:
        writer.close()
        await writer.wait_closed()


async def stop(server: asyncio.Server) -> None:
    server.close()
    await asyncio.wait_for(server.wait_closed(), _WAIT_S)


class BindFailures(logging.Handler):
    """Counts listen()'s "bind failed" warnings; `first` is set at the first one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("bind failed listener=test"):
            self.count += 1
            self.first.set()


@pytest.fixture
def bind_failures() -> Iterator[BindFailures]:
    handler = BindFailures()
    logger = logging.getLogger("postoffice.core.listeners")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.WARNING)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def blocker(*, listening: bool) -> socket.socket:
    """A socket holding a loopback port, bound with SO_REUSEADDR like ours."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    if listening:
        sock.listen()
    return sock


async def test_serves_on_an_ephemeral_port() -> None:
    server = await listen(Echo, host="127.0.0.1", port=0, name="test")
    try:
        host, port = bound_address(server)
        assert host == "127.0.0.1"
        assert port != 0
        assert await roundtrip(port) == b"ping\n"
    finally:
        await stop(server)


async def test_retries_until_a_busy_port_frees(bind_failures: BindFailures) -> None:
    holder = blocker(listening=True)
    port = holder.getsockname()[1]
    try:
        starting = asyncio.create_task(
            listen(Echo, host="127.0.0.1", port=port, name="test", backoff=_FAST)
        )
        await asyncio.wait_for(bind_failures.first.wait(), _WAIT_S)
        assert not starting.done()
    finally:
        holder.close()
    server = await asyncio.wait_for(starting, _WAIT_S)
    try:
        assert bound_address(server) == ("127.0.0.1", port)
        assert bind_failures.count >= 1
        assert await roundtrip(port) == b"ping\n"
    finally:
        await stop(server)


async def test_a_failed_listen_is_retried_too(
    bind_failures: BindFailures, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: bind succeeded, listen() failed, and listen() gave up (leaking the socket)."""
    rival = blocker(listening=False)
    port = rival.getsockname()[1]

    def bind_then_lose_the_race(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
        sock = make_socket(host, port, reuse_port=reuse_port)
        if rival.fileno() != -1:
            rival.listen()  # another process starts listening between our bind and listen
        return sock

    monkeypatch.setattr(listeners, "make_socket", bind_then_lose_the_race)
    starting = asyncio.create_task(
        listen(Echo, host="127.0.0.1", port=port, name="test", backoff=_FAST)
    )
    try:
        await asyncio.wait_for(bind_failures.first.wait(), _WAIT_S)
    finally:
        rival.close()
    server = await asyncio.wait_for(starting, _WAIT_S)
    try:
        assert await roundtrip(port) == b"ping\n"
    finally:
        await stop(server)


async def test_cancel_gives_up_retrying(bind_failures: BindFailures) -> None:
    holder = blocker(listening=True)
    try:
        port = holder.getsockname()[1]
        starting = asyncio.create_task(
            listen(Echo, host="127.0.0.1", port=port, name="test", backoff=_FAST)
        )
        await asyncio.wait_for(bind_failures.first.wait(), _WAIT_S)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
    finally:
        holder.close()


async def test_reuse_port_shares_one_port() -> None:
    first = await listen(Echo, host="127.0.0.1", port=0, name="test", reuse_port=True)
    try:
        port = bound_address(first)[1]
        second = await asyncio.wait_for(
            listen(Echo, host="127.0.0.1", port=port, name="test", reuse_port=True, backoff=_FAST),
            _WAIT_S,
        )
        try:
            assert bound_address(second) == ("127.0.0.1", port)
            await stop(first)
            assert await roundtrip(port) == b"ping\n"  # the second one still serves
        finally:
            await stop(second)
    finally:
        await stop(first)


def test_make_socket_refuses_a_busy_port() -> None:
    holder = blocker(listening=True)
    try:
        with pytest.raises(OSError, match="Address already in use"):
            make_socket("127.0.0.1", holder.getsockname()[1])
    finally:
        holder.close()


async def test_a_host_that_does_not_resolve_is_a_config_error() -> None:
    """Retrying cannot fix a typo in the address: fail at once, naming it."""
    from postoffice.core.errors import ConfigError
    from postoffice.core.listeners import listen

    with pytest.raises(ConfigError, match=r"^cannot listen on host 'no-such-host\.invalid': "):
        await listen(asyncio.Protocol, host="no-such-host.invalid", port=0, name="typo")


async def test_without_retry_a_busy_port_fails_at_once_naming_it() -> None:
    holder = blocker(listening=True)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(
            BrokenError,
            match=rf"^cannot listen for test on 127\.0\.0\.1:{port}: address already in use$",
        ):
            await asyncio.wait_for(
                listen(Echo, host="127.0.0.1", port=port, name="test", retry=False), _WAIT_S
            )
    finally:
        holder.close()


async def test_the_environment_can_switch_retrying_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """`postoffice up` sets POSTOFFICE_BIND_RETRY=0 for its children."""
    monkeypatch.setenv("POSTOFFICE_BIND_RETRY", "0")
    holder = blocker(listening=True)
    try:
        with pytest.raises(BrokenError, match=r"^cannot listen for test on "):
            await asyncio.wait_for(
                listen(Echo, host="127.0.0.1", port=holder.getsockname()[1], name="test"), _WAIT_S
            )
    finally:
        holder.close()


class ListenerRecords(logging.Handler):
    """Every record of postoffice.core.listeners; `retries` is set after the third retry."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.retries = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if sum(r.getMessage().startswith("bind retry failed") for r in self.records) >= 3:
            self.retries.set()


async def test_a_busy_port_is_one_warning_however_many_retries() -> None:
    """Regression: every retry was a warning, ten of them before a start-up timed out."""
    handler = ListenerRecords()
    logger = logging.getLogger("postoffice.core.listeners")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    holder = blocker(listening=True)
    port = holder.getsockname()[1]
    starting = asyncio.create_task(
        listen(Echo, host="127.0.0.1", port=port, name="test", backoff=_FAST, retry=True)
    )
    try:
        await asyncio.wait_for(handler.retries.wait(), _WAIT_S)
        holder.close()
        server = await asyncio.wait_for(starting, _WAIT_S)
        await stop(server)
    finally:
        starting.cancel()
        holder.close()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    warnings = [r.getMessage() for r in handler.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f'bind failed listener=test host=127.0.0.1 port={port} error="address already in use"'
        " retry_max_s=0.01 (retrying until it succeeds; each retry logged at DEBUG)"
    ]
    assert (
        handler.records[-1]
        .getMessage()
        .startswith(f"listening listener=test host=127.0.0.1 port={port} failed_attempts=")
    )


# -- the serve commands, as processes ---------------------------------------------------

_EXIT_WITHIN_S = 10.0  # a stop or a failure takes well under a second; a cold start more


def _serve_argv(service: str, port: int, data_dir: Path) -> list[str]:
    """`postoffice SERVICE serve` with its first listener on `port`, the others on port 0."""
    match service:
        case "store":
            flags = ["--port", str(port), "--metrics-port", "0", "--data-dir", str(data_dir)]
        case "command":
            flags = ["--port", str(port), "--metrics-port", "0"]
        case "ingest":
            flags = ["--sys-base", "0", "--data-base", str(port), "--x", "1"]
            flags += ["--data-dir", str(data_dir)]
        case _:
            raise AssertionError(service)
    return [*POSTOFFICE, service, "serve", *flags]


_LISTENER = {"store": "store", "command": "command", "ingest": "data0"}


def _wait_for_line(log_path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _EXIT_WITHIN_S * 2
    while text not in log_path.read_text(errors="replace"):
        assert process.poll() is None, log_path.read_text(errors="replace")
        assert time.monotonic() < deadline, f"no {text!r} in {log_path.read_text()}"
        time.sleep(0.05)


@pytest.mark.parametrize("service", ["store", "command", "ingest"])
def test_sigterm_stops_a_server_while_it_retries_a_busy_port(service: str, tmp_path: Path) -> None:
    """Regression: the store kept retrying after SIGTERM, until the SIGKILL."""
    holder = blocker(listening=True)
    port = holder.getsockname()[1]
    log_path = tmp_path / "serve.log"
    try:
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [*_serve_argv(service, port, tmp_path), "--log-level", "DEBUG"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=env_without_postoffice(),
            )
        try:
            _wait_for_line(log_path, "bind retry failed", process)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=_EXIT_WITHIN_S) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=_EXIT_WITHIN_S)
    finally:
        holder.close()
    warnings = [line for line in log_path.read_text().splitlines() if " WARNING " in line]
    assert len(warnings) == 1, warnings
    assert f"service={service} bind failed listener={_LISTENER[service]}" in warnings[0]
    assert f" port={port} " in warnings[0]


@pytest.mark.parametrize("service", ["store", "command", "ingest"])
def test_without_retry_a_busy_port_ends_the_server_saying_why(service: str, tmp_path: Path) -> None:
    """Under `postoffice up`: one error line, and the same reason in the ready file."""
    holder = blocker(listening=True)
    port = holder.getsockname()[1]
    ready = tmp_path / "ready.json"
    try:
        result = subprocess.run(
            [*_serve_argv(service, port, tmp_path), "--ready-file", str(ready)],
            capture_output=True,
            cwd=tmp_path,
            env={**env_without_postoffice(), "POSTOFFICE_BIND_RETRY": "0"},
            timeout=_EXIT_WITHIN_S * 2,
            check=False,
        )
    finally:
        holder.close()
    reason = f"cannot listen for {_LISTENER[service]} on 127.0.0.1:{port}: address already in use"
    assert result.returncode == 1, result.stderr
    assert result.stderr.decode().splitlines()[-1] == f"Error: {reason}"
    assert b"Traceback" not in result.stderr
    report = json.loads(ready.read_text())
    assert report["service"] == service
    assert report["error"] == reason
    assert "listeners" not in report


def test_a_busy_metrics_port_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """Regression: `command serve` whose metrics port was taken died with a traceback."""
    holder = blocker(listening=True)
    port = holder.getsockname()[1]
    try:
        result = subprocess.run(
            [*POSTOFFICE, "command", "serve", "--port", "0", "--metrics-port", str(port)],
            capture_output=True,
            cwd=tmp_path,
            env=env_without_postoffice(),
            timeout=_EXIT_WITHIN_S * 2,
            check=False,
        )
    finally:
        holder.close()
    assert result.returncode == 1, result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stderr.decode().splitlines()[-1] == (
        f"Error: cannot listen for http on 127.0.0.1:{port}: address already in use"
    )
