"""Attacks on the store engine through the real store server: a value that carries a
forged log record, a disk that fills up under an attacker's writes, and a lost segment.

docs/security.md, "store engine", lists what each gets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postoffice.store import Client, DeleteRequest, PutRequest, StoreRequestError
from postoffice.store.engine.records import HEADER_BYTES, Kind, encode_record
from tests.integration.conftest import ServerProcess, start_server

Serve = Callable[..., ServerProcess]
_U64_MAX = (1 << 64) - 1


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start servers on demand; every one still running is stopped when the test ends."""
    started: list[ServerProcess] = []

    def _serve(service: str, *args: str) -> ServerProcess:
        server = start_server(tmp_path, service, *args)
        started.append(server)
        return server

    yield _serve
    for server in started:
        server.stop()


def _start(serve: Serve, data: Path) -> tuple[ServerProcess, Client]:
    server = serve("store", "--port", "0", "--metrics-port", "0", "--data-dir", str(data))
    return server, Client(port=server.port, timeout_s=10)


def _kill(server: ServerProcess) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)


def _segment(data: Path) -> Path:
    return data / "store" / "log" / "00000001.seg"


def test_a_torn_carrier_of_a_forged_record_never_becomes_a_key(
    tmp_path: Path, serve: Serve
) -> None:
    """An attacker stores a value holding a well-formed record (key b"evil", sequence
    number 2^64-1) and the server dies mid-write. However the carrier is cut, the forged
    key never reads back, writes of every kind still work, and the victim keeps its data."""
    data = tmp_path / "data"
    server, victim = _start(serve, data)
    victim.put(b"victim", b"v" * 40)
    forged = encode_record(Kind.PUT, _U64_MAX, b"evil", b"invented")
    with Client(port=server.port, timeout_s=10) as attacker:
        attacker.put(b"carrier", b"x" * 11 + forged + b"y" * 13)
    victim.close()
    _kill(server)
    whole = _segment(data).read_bytes()
    at = whole.index(forged)
    # Just past the forged record (what a scan for the next header would find), and
    # inside the carrier's header.
    for cut in (at + len(forged), at - 11 - len(b"carrier") - HEADER_BYTES + 5):
        _segment(data).write_bytes(whole[:cut])
        server, victim = _start(serve, data)
        with Client(port=server.port, timeout_s=10) as attacker:
            assert attacker.get(b"evil") is None
            assert attacker.get(b"carrier") is None
            attacker.put(b"after", b"1")
            assert attacker.delete(b"after") is True
            attacker.batch([PutRequest(key=b"b", value=b"2"), DeleteRequest(key=b"b")])
        assert victim.get(b"victim") == b"v" * 40
        victim.put(b"victim2", b"w")
        victim.close()
        _kill(server)


@contextlib.contextmanager
def _tiny_tmpfs(where: Path, size_kib: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10, check=False)


def test_a_write_refused_on_a_full_disk_is_not_applied(tmp_path: Path, serve: Serve) -> None:
    """An attacker fills the disk: the write that does not fit is answered STORAGE and is
    not there, not now and not after a restart; a DELETE answered STORAGE deletes nothing;
    the victim's data stays readable and the server goes on serving it."""
    with _tiny_tmpfs(tmp_path / "disk", 768) as disk:
        data = disk / "data"
        server, victim = _start(serve, data)
        victim.put(b"victim", b"v" * 100)
        acked: dict[bytes, bytes] = {}
        refused: list[bytes] = []
        statuses: list[str] = []
        with Client(port=server.port, timeout_s=10) as attacker:
            # Fill the disk to the last byte: large values, then small, then records the
            # size of a tombstone (a 7-byte key and no value), so a DELETE cannot fit either.
            for size, count in ((16384, 60), (1024, 40), (0, 1000)):
                for _ in range(count):
                    key = b"f%06d" % (len(acked) + len(refused))
                    try:
                        attacker.put(key, b"z" * size)
                    except StoreRequestError as exc:
                        statuses.append(exc.status.name)
                        refused.append(key)
                        break
                    acked[key] = b"z" * size
            assert statuses == ["STORAGE"] * 3, "the disk never filled"
            assert all(attacker.get(key) is None for key in refused)
            with pytest.raises(StoreRequestError, match=r"^STORAGE: "):
                attacker.delete(b"f000000")
            assert attacker.get(b"f000000") == b"z" * 16384
        victim.ping()
        assert victim.get(b"victim") == b"v" * 100
        victim.close()
        _kill(server)
        # The operator makes room; the restarted store has exactly what was acknowledged.
        subprocess.run(
            ["mount", "-o", "remount,size=8m", str(disk)],
            check=True,
            capture_output=True,
            timeout=10,
        )
        server, victim = _start(serve, data)
        assert all(victim.get(key) is None for key in refused)
        assert victim.get(b"victim") == b"v" * 100
        assert all(victim.get(key) == value for key, value in acked.items())
        victim.close()
        server.stop()


def test_an_emptied_newest_segment_is_reported_and_never_read(tmp_path: Path, serve: Serve) -> None:
    """The newest segment is emptied while the server is down: the restart names the
    segment and the keys lost at ERROR, those keys read as absent, and writes go on."""
    data = tmp_path / "data"
    server, client = _start(serve, data)
    for i in range(5):
        client.put(b"k%d" % i, b"v" * 50)
    client.close()
    assert server.stop() == 0
    os.truncate(_segment(data), 0)
    server, client = _start(serve, data)
    assert "log segment lost records" in server.log()
    assert "segment=1 keys_lost=5" in server.log()
    assert client.get(b"k0") is None
    client.put(b"k0", b"again")
    assert client.get(b"k0") == b"again"
    client.close()
