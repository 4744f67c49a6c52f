"""`postoffice store get|put|del|scan|stats` as a user runs them: real processes, real server."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from postoffice.store.cli import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE
from tests.integration.conftest import POSTOFFICE, ServerProcess, env_without_postoffice

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]


def store_cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `postoffice store ARGS --port PORT` and return what it did."""
    return subprocess.run(
        [*POSTOFFICE, "store", *args, "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env_without_postoffice(),
        check=False,
    )


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port bound but never listening: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_get_exit_codes_tell_found_from_missing(serve: Serve) -> None:
    server = serve("store", "--port", "0", "--metrics-port", "0")
    port = server.listeners["store"][1]
    assert store_cli(port, "put", "greeting", "hello").returncode == 0
    found = store_cli(port, "get", "greeting")
    assert (found.returncode, found.stdout) == (0, "hello\n")
    missing = store_cli(port, "get", "nobody")
    assert missing.returncode == EXIT_NOT_FOUND == 1
    assert missing.stdout == ""
    assert missing.stderr == "Error: no such key 'nobody'\n"


@pytest.mark.parametrize(
    "args", [("get", "k"), ("put", "k", "v"), ("del", "k"), ("scan",), ("stats",)]
)
def test_no_server_exits_3_for_every_command(dead_port: int, args: tuple[str, ...]) -> None:
    done = store_cli(dead_port, *args)
    assert done.returncode == EXIT_UNAVAILABLE == 3
    assert done.stdout == ""
    assert done.stderr.startswith(f"Error: cannot connect to the store at 127.0.0.1:{dead_port}: ")
    assert "Traceback" not in done.stderr


def test_server_refusal_exits_3(serve: Serve) -> None:
    """A request the server refuses (over its --max-request-size) is not a missing key."""
    server = serve("store", "--port", "0", "--metrics-port", "0", "--max-request-size", "1024")
    port = server.listeners["store"][1]
    done = store_cli(port, "put", "k", "v" * 2000)
    assert done.returncode == EXIT_UNAVAILABLE
    assert done.stderr.startswith("Error: ")
    assert "Traceback" not in done.stderr
    assert store_cli(port, "get", "k").returncode == EXIT_NOT_FOUND


def test_key_over_the_protocol_limit_is_a_usage_error(serve: Serve) -> None:
    server = serve("store", "--port", "0", "--metrics-port", "0")
    port = server.listeners["store"][1]
    done = store_cli(port, "get", "k" * 2000)
    assert done.returncode == EXIT_USAGE == 2
    assert done.stderr.endswith("Error: get key of 2000 bytes exceeds limit 1024\n")
    assert "Traceback" not in done.stderr
