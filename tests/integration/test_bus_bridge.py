"""Two bus servers on 127.0.0.1 bridged by discovery and TCP: real processes, real clients."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusError, Client, Subscriber, netwire
from postoffice.core import framing
from postoffice.core.framing import NEED_DATA
from tests.bus.rig import shm_directory
from tests.integration.conftest import (
    POSTOFFICE,
    ServerProcess,
    env_without_postoffice,
    start_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WAIT_S = 20.0
#: Short, so that a test waits for an advertisement in well under a second.
ADVERTISE_S = "0.2"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Bus:
    """One `postoffice bus serve` process with its own socket and shm directory."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.socket = self.dir / "bus.sock"
        self.shm = shm_directory()
        self.server: ServerProcess | None = None
        self.clients: list[Client] = []

    def start(self, *extra: str) -> ServerProcess:
        self.server = start_server(
            self.dir, "bus", "--socket", str(self.socket), "--shm-dir", str(self.shm),
            "--advertise-interval", ADVERTISE_S, *extra,
        )  # fmt: skip
        return self.server

    @property
    def discovery(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.listeners["discovery"]

    @property
    def bridge(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.listeners["bridge"]

    def client(self) -> Client:
        client = Client(self.socket, name="test", timeout_s=WAIT_S)
        self.clients.append(client)
        return client

    def users(self, channel: str) -> tuple[int, int]:
        """(publishers, subscribers) of `channel` here, (0, 0) if it does not exist."""
        with Client(self.socket, timeout_s=WAIT_S) as client:
            for info in client.channel_info():
                if info.name == channel:
                    return info.publishers, info.subscribers
        return 0, 0

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.server is not None:
            assert self.server.stop() == 0, self.server.log()
            self.server = None

    def log(self) -> str:
        return "" if self.server is None else self.server.log()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Bus, Bus]]:
    """Server A (publishers) on a known discovery port, and B whose peer is A."""
    a, b = Bus(tmp_path, "a"), Bus(tmp_path, "b")
    a.start("--discovery-port", str(free_udp_port()))
    b.start("--peer", f"127.0.0.1:{a.discovery[1]}")
    yield a, b
    for bus in (b, a):
        bus.stop()
        leftover = sorted(p.name for p in bus.shm.iterdir())
        shutil.rmtree(bus.shm, ignore_errors=True)
        assert leftover == [], "a server left files behind"


def read_n(subscriber: Subscriber, count: int, timeout_s: float = WAIT_S) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        message = subscriber.read()
        if message is None:
            assert time.monotonic() < deadline, f"only {len(got)} of {count} messages came"
            subscriber.wait(0.2)
            continue
        with message:
            got.append(bytes(message.data))
    return got


def bridged(a: Bus, b: Bus, channel: str, *, subscribers: int = 1) -> None:
    """Wait until A's channel has the bridge's subscriber and B's the bridge's publisher."""
    wait_until(f"the bridge of {channel!r} on A", lambda: a.users(channel)[1] >= 1)
    wait_until(f"the bridge of {channel!r} on B", lambda: b.users(channel) == (1, subscribers))


def test_unreliable_message_published_on_a_is_read_on_b(pair: tuple[Bus, Bus]) -> None:
    a, b = pair
    subscriber = b.client().create_subscriber("weather", type="text", num_slots=32)
    publisher = a.client().create_publisher("weather", type="text", slot_size=128, num_slots=32)
    bridged(a, b, "weather")
    for i in range(20):
        publisher.publish_bytes(f"reading {i}".encode())
    assert read_n(subscriber, 20) == [f"reading {i}".encode() for i in range(20)]
    assert "bridge receiving channel=weather" in b.log()
    assert "bridge transmitting channel=weather" in a.log()


def test_reliable_channel_loses_nothing_across_the_bridge(pair: tuple[Bus, Bus]) -> None:
    """4 slots on A, 16 on B, 2000 messages: the publisher outruns the bridge and waits."""
    a, b = pair
    count = 2000
    subscriber = b.client().create_subscriber("orders", reliable=True)
    publisher = a.client().create_publisher("orders", reliable=True, slot_size=64, num_slots=4)
    bridged(a, b, "orders")
    failure: list[str] = []

    def publish() -> None:
        for i in range(count):
            while publisher.publish_bytes(struct.pack(">I", i) * 4) is None:
                if not publisher.wait(WAIT_S):
                    failure.append(f"no slot for message {i}")
                    return

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    got = read_n(subscriber, count, timeout_s=60)
    thread.join(WAIT_S)
    assert failure == []
    assert [struct.unpack(">I", m[:4])[0] for m in got] == list(range(count))
    assert subscriber.drops == 0


def test_two_subscribers_on_b_share_one_bridge(pair: tuple[Bus, Bus]) -> None:
    a, b = pair
    first = b.client().create_subscriber("news")
    second = b.client().create_subscriber("news")
    publisher = a.client().create_publisher("news", num_slots=32)
    bridged(a, b, "news", subscribers=2)
    assert a.users("news") == (1, 1)  # one bridge for both
    for i in range(10):
        publisher.publish_bytes(b"item %d" % i)
    expected = [b"item %d" % i for i in range(10)]
    assert read_n(first, 10) == expected
    assert read_n(second, 10) == expected


def test_bridge_ends_when_the_last_subscriber_on_b_goes(pair: tuple[Bus, Bus]) -> None:
    a, b = pair
    client = b.client()
    subscriber = client.create_subscriber("temp")
    a.client().create_publisher("temp")
    bridged(a, b, "temp")
    client.remove_subscriber(subscriber)
    wait_until("B's channel removed", lambda: b.users("temp") == (0, 0))
    wait_until("A's bridge subscriber removed", lambda: a.users("temp") == (1, 0))


def test_bridge_killed_mid_stream_is_re_established_on_the_next_advertise(
    pair: tuple[Bus, Bus],
) -> None:
    """Server A dies (kill -9) while it forwards; B drops the broken bridge, and when A
    is back and advertises the channel again, B subscribes again and messages flow."""
    a, b = pair
    subscriber = b.client().create_subscriber("ticks")
    publisher = a.client().create_publisher("ticks", num_slots=64)
    bridged(a, b, "ticks")
    for i in range(5):
        publisher.publish_bytes(b"before %d" % i)
    assert read_n(subscriber, 5) == [b"before %d" % i for i in range(5)]
    assert a.server is not None
    port = a.discovery[1]
    a.server.proc.kill()
    a.server.proc.wait(WAIT_S)
    a.server = None
    for dead in a.clients:
        with contextlib.suppress(BusError):
            dead.close()
    a.clients.clear()
    wait_until("B's bridge publisher removed", lambda: b.users("ticks") == (0, 1))
    assert subscriber.read() is None
    a.start("--discovery-port", str(port))
    publisher = a.client().create_publisher("ticks", num_slots=64)
    bridged(a, b, "ticks")
    for i in range(5):
        publisher.publish_bytes(b"after %d" % i)
    assert read_n(subscriber, 5) == [b"after %d" % i for i in range(5)]


def garbage_datagrams() -> list[bytes]:
    query = netwire.encode_datagram(netwire.Query(server_id=7, channel="x"))
    return [
        b"",
        b"hello",
        bytes(2000),
        query[:-1],
        query + b"!",
        framing.encode_parts(0x42, 0, 0, b"\x00" * 12),
        bytes([query[0] ^ 1]) + query[1:],
    ]


def test_garbage_datagrams_and_a_hostile_bridge_peer_get_errors_and_servers_go_on(
    pair: tuple[Bus, Bus],
) -> None:
    a, b = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for target in (a.discovery, b.discovery):
            for data in garbage_datagrams():
                udp.sendto(data, target)
    # A bridge peer that speaks no frames: ERROR PROTO, then closed.
    assert hostile(b.bridge, b"GET / HTTP/1.0\r\n\r\n") == "PROTO"
    # A MESSAGE before SUBSCRIBED.
    assert hostile(b.bridge, netwire.encode_message(1, b"x")) == "STATE"
    # A channel nobody here wants.
    subscribed = netwire.encode_bridge(netwire.Subscribed(channel="nobody-wants-this"))
    assert hostile(b.bridge, subscribed) == "NOT_FOUND"
    # A frame header announcing 4 GiB: refused from the header alone.
    header = framing.HEADER.pack(framing.MAGIC, 1, 0x12, 0, 0, 0, 0xFFFFFFFF, 0)
    assert hostile(b.bridge, header) == "PROTO"
    # An unknown frame type.
    assert hostile(a.bridge, framing.encode_parts(0x77, 0, 0, b"")) == "PROTO"
    # A peer that connects and goes silent is closed after the handshake timeout; here
    # it just disconnects.
    socket.create_connection(b.bridge, timeout=WAIT_S).close()
    # And the servers bridge as before.
    subscriber = b.client().create_subscriber("after-garbage")
    publisher = a.client().create_publisher("after-garbage")
    bridged(a, b, "after-garbage")
    publisher.publish_bytes(b"still here")
    assert read_n(subscriber, 1) == [b"still here"]
    for bus in (a, b):
        assert "discovery datagram ignored" in bus.log()


def hostile(address: tuple[str, int], data: bytes) -> str:
    """Send `data` to a bridge port; the ERROR code the server answers before it closes."""
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        sock.sendall(data)
        stream = netwire.bridge_stream()
        while True:
            chunk = sock.recv(4096)
            assert chunk, "closed without an ERROR"
            stream.feed(chunk)
            item = stream.next_event()
            if item is NEED_DATA:
                continue
            event = item[1]
            assert isinstance(event, netwire.BridgeError)
            assert sock.recv(4096) == b"", "not closed after the ERROR"
            return event.code


def test_local_server_has_no_discovery_and_no_bridge(tmp_path: Path) -> None:
    bus = Bus(tmp_path, "local")
    try:
        server = bus.start("--local")
        assert set(server.listeners) == {"bus"}
    finally:
        bus.stop()
        shutil.rmtree(bus.shm, ignore_errors=True)


def test_plugin_module_sees_events_and_a_raising_plugin_is_disabled(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    events = tmp_path / "events.jsonl"
    (plugins / "po_test_recorder.py").write_text(
        "import json\n"
        f"PATH = {str(events)!r}\n"
        "def _note(kind, event):\n"
        "    with open(PATH, 'a') as f:\n"
        "        f.write(json.dumps([kind, getattr(event, 'channel', None)]) + '\\n')\n"
        "def on_ready(event): _note('ready', event)\n"
        "def on_new_channel(event): _note('new_channel', event)\n"
        "def on_removed_channel(event): _note('removed_channel', event)\n"
        "def on_new_publisher(event): _note('new_publisher', event)\n"
        "def on_new_subscriber(event): _note('new_subscriber', event)\n"
        "def on_removed_publisher(event): _note('removed_publisher', event)\n"
        "def on_removed_subscriber(event): _note('removed_subscriber', event)\n"
    )
    (plugins / "po_test_raiser.py").write_text(
        "def on_new_channel(event):\n    raise RuntimeError('this plugin is broken')\n"
    )
    bus = Bus(tmp_path, "plugged")
    import os

    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{plugins}{os.pathsep}{old}"
    try:
        bus.start("--local", "--plugin", "po_test_raiser", "--plugin", "po_test_recorder")
    finally:
        os.environ["PYTHONPATH"] = old
    try:
        client = bus.client()
        publisher = client.create_publisher("plugged")
        subscriber = client.create_subscriber("plugged")
        client.remove_subscriber(subscriber)
        client.remove_publisher(publisher)
        wanted = [
            ["new_publisher", "plugged"],
            ["new_subscriber", "plugged"],
            ["removed_subscriber", "plugged"],
            ["removed_publisher", "plugged"],
            ["removed_channel", "plugged"],
        ]

        def seen() -> list[list[str | None]]:
            if not events.exists():
                return []
            return [json.loads(line) for line in events.read_text().splitlines()]

        wait_until("the plugin's events", lambda: seen()[-5:] == wanted)
        lines = seen()
        assert lines[0] == ["ready", None]
        assert ["new_channel", "plugged"] in lines
        assert ["new_channel", "/bus/directory"] in lines
        assert "plugin disabled" in bus.log()
        assert "this plugin is broken" in bus.log()
        # The server still serves.
        assert bus.users("plugged") == (0, 0)
    finally:
        bus.stop()
        shutil.rmtree(bus.shm, ignore_errors=True)


def refused_start(tmp_path: Path, *args: str) -> str:
    """Run `postoffice bus serve ARGS`, which must fail at once; its stderr."""
    shm = shm_directory()
    try:
        done = subprocess.run(
            [*POSTOFFICE, "bus", "serve", "--socket", str(tmp_path / "bus.sock"),
             "--shm-dir", str(shm), *args],
            capture_output=True, timeout=WAIT_S, env=env_without_postoffice(),
        )  # fmt: skip
        leftover = sorted(p.name for p in shm.iterdir())
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    assert done.returncode == 1
    assert leftover == []
    return done.stderr.decode()


def test_a_plugin_that_cannot_be_found_fails_the_start_saying_so(tmp_path: Path) -> None:
    error = refused_start(tmp_path, "--local", "--plugin", "po_no_such_plugin")
    assert "plugin module 'po_no_such_plugin' not found" in error


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--peer", "nowhere"], "setting 'peers': expected HOST:PORT, got 'nowhere'"),
        (["--peer", "example.org:1"], "setting 'peers': expected an IPv4 address"),
        (["--interface", "::1"], "setting 'interface': expected an IPv4 address, got '::1'"),
        (["--discovery-port", "70000"], "discovery_port"),
    ],
)
def test_bad_network_settings_fail_the_start_saying_which(
    tmp_path: Path, args: list[str], error: str
) -> None:
    assert error in refused_start(tmp_path, *args)


def test_a_busy_discovery_port_fails_the_start_naming_it(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        error = refused_start(tmp_path, "--discovery-port", str(port))
    assert f"cannot listen for discovery on 127.0.0.1:{port}" in error
