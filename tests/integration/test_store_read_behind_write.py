"""A real `postoffice store serve --durability always` whose next fsync fails on demand:
a GET pipelined behind the failed PUT reads the value from before it."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from postoffice.core.framing import FrameDecoder
from postoffice.store import Client
from postoffice.store.wire import (
    NEED_DATA,
    GetRequest,
    PutRequest,
    Response,
    Status,
    decode_response,
    encode_request,
)
from tests.integration import conftest
from tests.integration.conftest import ServerProcess, start_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: The server, with os.fsync failing once each time the trigger file is created.
_FAILING_FSYNC = """
import errno, os
_trigger = os.environ["STORE_TEST_FSYNC_TRIGGER"]
_fsync = os.fsync
def fsync(fd):
    try:
        os.unlink(_trigger)
    except FileNotFoundError:
        return _fsync(fd)
    raise OSError(errno.EIO, "Input/output error")
os.fsync = fsync
from postoffice.cli import main
main()
"""


def _serve_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ServerProcess, Path]:
    trigger = tmp_path / "fail-next-fsync"
    monkeypatch.setenv("STORE_TEST_FSYNC_TRIGGER", str(trigger))
    monkeypatch.setattr(conftest, "POSTOFFICE", [sys.executable, "-c", _FAILING_FSYNC])
    server = start_server(
        tmp_path,
        "store",
        *("--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "var")),
        *("--durability", "always"),
    )
    return server, trigger


def _read(sock: socket.socket, count: int) -> list[Response]:
    frames = FrameDecoder()
    out: list[Response] = []
    while len(out) < count:
        event = frames.next_event()
        if event is NEED_DATA:
            block = sock.recv(1 << 16)
            assert block, f"closed after {len(out)} replies"
            frames.feed(block)
            continue
        assert not isinstance(event, type(NEED_DATA))
        out.append(decode_response(event))
    return out


def test_a_get_behind_a_put_whose_fsync_fails_reads_the_old_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, trigger = _serve_failing(tmp_path, monkeypatch)
    try:
        host, port = server.listeners["store"]
        with Client(host, port, timeout_s=10) as other:
            other.put(b"k", b"old")
            trigger.touch()
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(
                    encode_request(PutRequest(key=b"k", value=b"new"), 1)
                    + encode_request(GetRequest(key=b"k"), 2)
                )
                put, get = _read(sock, 2)
            assert not trigger.exists()  # the fsync did fail
            assert put.status is Status.STORAGE
            assert "Input/output error" in put.body.decode()
            assert (get.request_id, get.status, get.body) == (2, Status.OK, b"old")
            assert other.get(b"k") == b"old"
            other.put(b"k", b"newer")  # the disk is back: writes go on
            assert other.get(b"k") == b"newer"
    finally:
        assert server.stop() == 0, server.log()
