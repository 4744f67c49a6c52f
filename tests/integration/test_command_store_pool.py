"""`command serve --store --store-connections 4`: a real store behind a test proxy whose
connections the test can cut, driven by pipelined redis-py clients."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

Serve = Callable[..., ServerProcess]


class Proxy:
    """A TCP proxy on 127.0.0.1 in threads; `cut(i)` closes its i-th connection pair."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._run(self._accept)

    def _run(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target, timeout=5)
            far.settimeout(None)
            with self._lock:
                self.pairs.append((near, far))
            self._run(self._pump, near, far)
            self._run(self._pump, far, near)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.pairs)

    def cut(self, index: int) -> None:
        with self._lock:
            near, far = self.pairs[index]
        for sock in (near, far):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def threads_alive(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def close(self) -> None:
        """Stop accepting, end every pump and close every socket (the threads joined)."""
        # close() alone does not wake a thread blocked in accept(): shutdown does.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for index in range(self.count):
            self.cut(index)
        for thread in self._threads:
            thread.join(5)
        with self._lock:
            for pair in self.pairs:
                for sock in pair:
                    sock.close()


@pytest.fixture
def proxied(serve: Serve, tmp_path: Path) -> Iterator[tuple[Proxy, ServerProcess]]:
    store = serve(
        "store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "data")
    )
    proxy = Proxy(("127.0.0.1", store.port))
    command = serve(
        "command",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--store",
        f"127.0.0.1:{proxy.port}",
        "--store-connections",
        "4",
    )
    try:
        yield proxy, command
    finally:
        command.stop()
        proxy.close()


def _client(command: ServerProcess) -> redis.Redis:
    host, port = command.listeners["command"]
    return redis.Redis(host=host, port=port, socket_timeout=10)


def _metric(command: ServerProcess, name: str) -> float:
    host, port = command.listeners["metrics"]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} missing from /metrics"
    return float(found.group(1))


def _wait_until(what: str, check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _load(r: redis.Redis, rounds: int, tag: str) -> list[str]:
    """Pipelined SET then GET of each key, 100 deep; the errors seen (the values checked)."""
    errors: list[str] = []
    for n in range(rounds):
        pipe = r.pipeline(transaction=False)
        for i in range(50):
            key = f"{tag}:{n}:{i}"
            pipe.set(key, key)
            pipe.get(key)
        for i, result in enumerate(pipe.execute(raise_on_error=False)):
            if isinstance(result, redis.ResponseError):
                errors.append(str(result))
            elif i % 2:
                assert result == f"{tag}:{n}:{i // 2}".encode()  # its own SET, in order
    return errors


def test_four_store_connections_serve_a_pipelined_load(
    proxied: tuple[Proxy, ServerProcess],
) -> None:
    proxy, command = proxied
    r = _client(command)
    _wait_until("four store connections", lambda: proxy.count == 4)
    _wait_until("the pool open", lambda: r.info("keyspace")["store_connected"] == 1)
    results: dict[str, list[str]] = {}
    threads = [
        threading.Thread(target=lambda t=t: results.__setitem__(t, _load(_client(command), 20, t)))
        for t in ("a", "b", "c", "d")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {"a": [], "b": [], "c": [], "d": []}
    assert r.mset({"m1": "1", "m2": "2", "m3": "3"}) is True  # a batch across connections
    assert r.mget("m1", "m2", "m3") == [b"1", b"2", b"3"]
    assert r.dbsize() == 4 * 20 * 50 + 3
    assert _metric(command, "postoffice_command_store_connections") == 4
    assert _metric(command, "postoffice_command_store_connections_open") == 4


def test_a_cut_store_connection_is_replaced_while_the_others_serve(
    proxied: tuple[Proxy, ServerProcess],
) -> None:
    proxy, command = proxied
    r = _client(command)
    _wait_until("four store connections", lambda: proxy.count == 4)
    _wait_until("the pool open", lambda: r.info("keyspace")["store_connected"] == 1)
    assert _load(r, 5, "before") == []
    proxy.cut(2)
    # While the cut connection reconnects only its keys fail, with the clear error.
    errors = _load(r, 5, "during")
    clear = re.compile(r"^(TRYAGAIN )?store (unavailable|at 127\.0\.0\.1:\d+ unavailable): ")
    assert all(clear.match(e) for e in errors), errors
    _wait_until("a fifth store connection", lambda: proxy.count == 5)
    _wait_until("the pool open", lambda: r.info("keyspace")["store_connected"] == 1)
    assert _load(r, 5, "after") == []
    assert r.info("keyspace")["store_reconnects"] == 1
    assert _metric(command, "postoffice_command_store_connections_open") == 4
    assert _metric(command, "postoffice_command_store_reconnects_total") == 1


def test_the_proxy_closes_its_threads_and_sockets(serve: Serve, tmp_path: Path) -> None:
    """The proxy the tests above rely on: closing it ends its threads and sockets at once."""
    store = serve(
        "store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "data")
    )
    proxy = Proxy(("127.0.0.1", store.port))
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    _wait_until("the proxy to connect its pair", lambda: proxy.count == 1)
    proxy.close()
    assert proxy.threads_alive == 0
    assert [sock.fileno() for pair in proxy.pairs for sock in pair] == [-1, -1]
    assert client.recv(1) == b""  # the near end went away
    client.close()
