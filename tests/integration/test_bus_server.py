"""The bus server as a real process, with real clients in this and forked processes."""

from __future__ import annotations

import array
import fcntl
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import (
    BusConnectionError,
    BusLimitError,
    BusMismatchError,
    BusNotFoundError,
    BusStateError,
    Client,
    wire,
)
from postoffice.core import framing
from tests.bus.rig import shm_directory
from tests.integration.conftest import (
    POSTOFFICE,
    ServerProcess,
    env_without_postoffice,
    start_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FORK = multiprocessing.get_context("fork")
WAIT_S = 10.0


class Bus:
    """A `postoffice bus serve` process on a private socket and shm directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.socket = tmp_path / "bus.sock"
        self.shm = shm_directory()
        self.server: ServerProcess | None = None

    def start(self, *extra: str) -> ServerProcess:
        self.server = start_server(
            self.tmp_path,
            "bus",
            "--socket",
            str(self.socket),
            "--shm-dir",
            str(self.shm),
            "--stats-interval",
            "0.2",
            "--request-timeout",
            "1",
            *extra,
        )
        return self.server

    def client(self, name: str = "test") -> Client:
        return Client(self.socket, name=name, timeout_s=WAIT_S)

    def files(self) -> list[str]:
        return sorted(os.listdir(self.shm))

    def cli(self, *args: str, stdin: bytes = b"", timeout_s: float = 30) -> str:
        done = subprocess.run(
            [*POSTOFFICE, "bus", *args, "--socket", str(self.socket)],
            input=stdin,
            capture_output=True,
            timeout=timeout_s,
            env=env_without_postoffice(),
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()


def served_bus(tmp_path: Path) -> Iterator[Bus]:
    """The body of the bus modules' `bus` fixture: a started server, stopped at the end,
    which must exit 0 and leave no file behind."""
    rig = Bus(tmp_path)
    rig.start()
    yield rig
    if rig.server is not None:
        assert rig.server.stop() == 0, rig.server.log()
    leftover = rig.files()
    shutil.rmtree(rig.shm, ignore_errors=True)
    assert leftover == [], "the server left files behind"


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    yield from served_bus(tmp_path)


def fork(target: Callable[..., Any], *args: Any) -> tuple[Any, Connection]:
    """Run target(conn, *args) in a forked child; it reports ("ok", result) or its
    traceback on the pipe returned."""
    parent_end, child_end = FORK.Pipe()

    def main() -> None:
        try:
            child_end.send(("ok", target(child_end, *args)))
        except BaseException:
            child_end.send(("error", traceback.format_exc()))
            raise

    process = FORK.Process(target=main, daemon=True)
    process.start()
    return process, parent_end


def expect(conn: Connection, what: str = "ok") -> Any:
    assert conn.poll(WAIT_S * 3), "the child said nothing in time"
    status, value = conn.recv()
    assert status == what, value
    return value


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"not in time: {what}"
        time.sleep(0.02)


# -- registration ------------------------------------------------------------------------


def test_init_twice_fails_and_the_connection_stays(bus: Bus) -> None:
    with bus.client() as client:
        with pytest.raises(BusStateError, match=r"^this connection is already initialized"):
            client._call(wire.InitRequest(client_name="again"))
        assert [c.name for c in client.channel_info()] == ["/bus/directory", "/bus/stats"]


def _subscribe_and_read(conn: Connection, socket_path: Path, count: int) -> list[bytes]:
    with Client(socket_path, name="reader") as client:
        subscriber = client.create_subscriber("orders", reliable=True, max_active=2, num_slots=8)
        conn.send(("registered", None))
        got: list[bytes] = []
        while len(got) < count:
            message = subscriber.read()
            if message is None:
                assert subscriber.wait(WAIT_S), f"message {len(got)} did not come"
                continue
            with message:
                got.append(bytes(message.data))
        return got


def _publish(conn: Connection, socket_path: Path, count: int) -> int:
    with Client(socket_path, name="writer") as client:
        publisher = client.create_publisher("orders", slot_size=32, num_slots=8, reliable=True)
        conn.send(("registered", None))
        assert conn.recv() == "go"
        for n in range(count):
            data = b"order %05d " % n * 3
            while publisher.publish_bytes(data) is None:
                assert publisher.wait(WAIT_S), f"no slot for message {n}"
        return publisher.published


@pytest.mark.parametrize("first", ["publisher", "subscriber"])
def test_messages_cross_processes_exactly_and_in_order_either_order(bus: Bus, first: str) -> None:
    """200 messages through 8 slots: the publisher (reliable) waits for the reader, which
    learned of it, or it of the reader, through the server, whoever came first."""
    count = 200
    if first == "publisher":
        writer, writer_conn = fork(_publish, bus.socket, count)
        expect(writer_conn, "registered")
        reader, reader_conn = fork(_subscribe_and_read, bus.socket, count)
        expect(reader_conn, "registered")
    else:
        reader, reader_conn = fork(_subscribe_and_read, bus.socket, count)
        expect(reader_conn, "registered")
        writer, writer_conn = fork(_publish, bus.socket, count)
        expect(writer_conn, "registered")
    writer_conn.send("go")
    assert expect(writer_conn) == count
    assert expect(reader_conn) == [b"order %05d " % n * 3 for n in range(count)]
    for process in (writer, reader):
        process.join(WAIT_S)
        assert process.exitcode == 0
    until(lambda: len(bus.files()) == 8, "the channel removed with its last user")


MISMATCHES: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    ({"type": "a"}, {"type": "b"}, r"^channel 'm' has type 'a', the publisher's is 'b'$"),
    ({"num_slots": 8}, {"num_slots": 16}, r"^channel 'm' has 8 slots, the publisher asks for 16$"),
    (
        {"reliable": True},
        {"reliable": False},
        r"^channel 'm' has reliable publishers, this one asks to be unreliable$",
    ),
    (
        {"fixed_size": True},
        {"fixed_size": False},
        r"^channel 'm' is fixed size, the publisher does not ask for it$",
    ),
    (
        {"fixed_size": True, "slot_size": 64},
        {"fixed_size": True, "slot_size": 128},
        r"^channel 'm' has fixed slots of 64 bytes, the publisher asks for 128$",
    ),
    (
        {"checksum": False},
        {"checksum": True},
        r"^channel 'm' is not checksum, the publisher asks for it$",
    ),
]


@pytest.mark.parametrize(("first", "second", "message"), MISMATCHES)
def test_a_publisher_that_disagrees_with_its_channel_is_refused(
    bus: Bus, first: dict[str, Any], second: dict[str, Any], message: str
) -> None:
    with bus.client("one") as one, bus.client("two") as two:
        one.create_publisher("m", **{"num_slots": 8, **first})
        with pytest.raises(BusMismatchError, match=message):
            two.create_publisher("m", **{"num_slots": 8, **second})
        assert one.channel_info("m")[0].publishers == 1


def test_type_mismatches_either_way_and_a_subscriber_first_channel_takes_the_publishers_type(
    bus: Bus,
) -> None:
    with bus.client() as client:
        client.create_publisher("typed", type="a")
        with pytest.raises(BusMismatchError, match=r"^channel 'typed' has type 'a', the subscr"):
            client.create_subscriber("typed", type="b")
        client.create_subscriber("later", type="x")
        with pytest.raises(BusMismatchError, match=r"^channel 'later' has type 'x', the publ"):
            client.create_publisher("later", type="y")
        client.create_subscriber("open")
        client.create_publisher("open", type="z", fixed_size=True, slot_size=512)
        (info,) = client.channel_info("open")
        assert (info.type, info.flags & wire.CHANNEL_FIXED_SIZE, info.slot_size) == ("z", 1, 512)


def test_bad_parameters_and_unknown_names_are_refused_and_the_client_goes_on(bus: Bus) -> None:
    with bus.client() as client:
        with pytest.raises(BusNotFoundError, match=r"^no channel 'nope'$"):
            client.channel_stats("nope")
        with pytest.raises(BusLimitError, match=r"exceeds the limit of 1073741824"):
            client.create_publisher("huge", num_slots=65536, slot_size=1 << 20)
        with pytest.raises(BusMismatchError, match=r"the server's own"):
            client.create_publisher("/bus/directory")
        with pytest.raises(BusNotFoundError, match=r"^no channel '/bus/other'$"):
            client.create_subscriber("/bus/other")
        publisher = client.create_publisher("fine")
        with pytest.raises(BusNotFoundError, match=r"^no subscriber 5 of this client"):
            client._call(wire.RemoveSubscriberRequest(channel="fine", user_id=5))
        assert publisher.publish_bytes(b"x") == 1
        assert [r.messages for r in client.channel_stats("fine")] == [1]


# -- reliability and cleanup -------------------------------------------------------------


def _hold_one(conn: Connection, socket_path: Path) -> None:
    client = Client(socket_path, name="holder")
    subscriber = client.create_subscriber("held", reliable=True)
    conn.send(("registered", None))
    assert subscriber.wait(WAIT_S)
    message = subscriber.read()
    assert message is not None
    conn.send(("holding", bytes(message.data)))
    time.sleep(120)  # until killed


def test_a_killed_subscriber_gives_its_slots_back_and_a_blocked_publisher_resumes(
    bus: Bus,
) -> None:
    with bus.client("writer") as client:
        publisher = client.create_publisher("held", num_slots=4, reliable=True)
        holder, conn = fork(_hold_one, bus.socket)
        expect(conn, "registered")
        assert publisher.publish_bytes(b"first") == 1
        assert expect(conn, "holding") == b"first"
        published = 1
        while publisher.publish_bytes(b"more") is not None:
            published += 1
        assert published == 4  # every slot unread or held by the subscriber
        assert not publisher.wait(0.2)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(WAIT_S)
        assert publisher.wait(WAIT_S), "the publisher was not woken after the kill"
        assert publisher.publish_bytes(b"after") == 5
        until(lambda: client.channel_info("held")[0].subscribers == 0, "subscriber removed")


def _own_channel(conn: Connection, socket_path: Path) -> None:
    client = Client(socket_path, name="owner")
    publisher = client.create_publisher("lonely", slot_size=64)
    view = publisher.get_buffer(10)  # a slot left BUSY by the kill
    assert view is not None
    conn.send(("ready", None))
    time.sleep(120)


def test_a_killed_clients_channel_and_files_go_when_it_was_the_last_user(bus: Bus) -> None:
    before = bus.files()
    owner, conn = fork(_own_channel, bus.socket)
    expect(conn, "ready")
    assert len(bus.files()) == len(before) + 3
    os.kill(owner.pid, signal.SIGKILL)
    owner.join(WAIT_S)
    until(lambda: bus.files() == before, "the channel's files removed")
    with bus.client() as client:
        assert "lonely" not in [c.name for c in client.channel_info()]


def test_a_server_restart_gives_clients_a_clear_error_and_starts_clean(bus: Bus) -> None:
    client = bus.client()
    client.create_publisher("before")
    assert bus.server is not None
    assert bus.server.stop() == 0
    assert bus.files() == []
    with pytest.raises(BusConnectionError, match=r"closed the connection|cannot"):
        client.channel_info()
    client.close()
    bus.start()
    with bus.client() as again:
        assert [c.name for c in again.channel_info()] == ["/bus/directory", "/bus/stats"]


def test_stale_files_are_removed_at_start_and_a_live_sessions_are_kept(tmp_path: Path) -> None:
    rig = Bus(tmp_path)
    stale = [
        "po-bus.00000000000000aa.scb",
        "po-bus.00000000000000aa.3.ccb",
        "po-bus.00000000000000aa.3.0.buf",
        "po-bus.00000000000000aa.lock",
    ]
    live = ["po-bus.00000000000000bb.scb", "po-bus.00000000000000bb.lock"]
    for name in [*stale, *live]:
        (rig.shm / name).write_bytes(b"")
    with (rig.shm / live[1]).open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server = rig.start()
        try:
            names = rig.files()
            assert not set(stale) & set(names)
            assert set(live) <= set(names)
            assert "stale session removed" in server.log()
        finally:
            assert server.stop() == 0
    assert rig.files() == sorted(live)
    shutil.rmtree(rig.shm)


def test_a_second_server_on_the_same_socket_is_refused(bus: Bus) -> None:
    done = subprocess.run(
        [*POSTOFFICE, "bus", "serve", "--socket", str(bus.socket), "--shm-dir", str(bus.shm)],
        capture_output=True,
        timeout=30,
        env=env_without_postoffice(),
    )
    assert done.returncode == 1
    assert f"another bus server serves {bus.socket}" in done.stderr.decode()
    with bus.client() as client:
        assert len(client.channel_info()) == 2


# -- hostile clients ---------------------------------------------------------------------


def _raw(bus: Bus) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    sock.connect(str(bus.socket))
    return sock


def _read_reply(sock: socket.socket) -> tuple[int, wire.Reply]:
    stream = wire.reply_stream()
    while True:
        event = stream.next_event()
        if event is not framing.NEED_DATA:
            return event
        data = sock.recv(65536)
        assert data, "closed without a reply"
        stream.feed(data)


def _closed(sock: socket.socket) -> bool:
    return sock.recv(1) == b""


def test_garbage_gets_an_error_and_the_close_while_others_are_served(bus: Bus) -> None:
    with bus.client() as bystander, _raw(bus) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        request_id, reply = _read_reply(sock)
        assert request_id == 0
        assert reply == wire.ErrorReply(
            code="PROTO", message="bad frame magic b'GE', expected b'PO'"
        )
        assert _closed(sock)
        assert len(bystander.channel_info()) == 2


def test_a_request_before_init_and_an_unknown_type_keep_the_connection(bus: Bus) -> None:
    with _raw(bus) as sock:
        sock.sendall(wire.encode_request(1, wire.GetChannelInfoRequest()))
        assert _read_reply(sock) == (
            1,
            wire.ErrorReply(code="STATE", message="the first request must be INIT"),
        )
        sock.sendall(framing.encode_parts(0x42, 0, 2, b""))
        assert _read_reply(sock) == (
            2,
            wire.ErrorReply(code="PROTO", message="unknown frame type 0x42"),
        )
        sock.sendall(wire.encode_request(3, wire.InitRequest()))
        assert isinstance(_read_reply(sock)[1], wire.InitReply)


def test_descriptors_sent_to_the_server_are_refused(bus: Bus) -> None:
    with _raw(bus) as sock:
        read_end, write_end = os.pipe()
        try:
            sock.sendmsg(
                [wire.encode_request(1, wire.InitRequest())],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [read_end]))],
            )
            assert _read_reply(sock) == (
                0,
                wire.ErrorReply(code="PROTO", message="requests carry no descriptors"),
            )
            assert _closed(sock)
        finally:
            os.close(read_end)
            os.close(write_end)


def test_a_frame_too_large_is_refused_at_its_header(bus: Bus) -> None:
    with _raw(bus) as sock:
        sock.sendall(framing.HEADER.pack(b"PO", 1, 1, 0, 0, 1, 1 << 20, 0))
        request_id, reply = _read_reply(sock)
        assert request_id == 0
        assert isinstance(reply, wire.ErrorReply)
        assert reply.code == "LIMIT"
        assert _closed(sock)


@pytest.mark.alone  # the bystander's answer within 1 s
def test_half_a_frame_is_closed_after_the_request_timeout_and_others_are_served(bus: Bus) -> None:
    with _raw(bus) as sock:
        sock.sendall(wire.encode_request(1, wire.InitRequest(client_name="slow"))[:10])
        started = time.monotonic()
        with bus.client() as bystander:
            assert len(bystander.channel_info()) == 2
            assert time.monotonic() - started < 1.0
        assert _closed(sock)  # blocks until the server's 1 s deadline closes it
        assert 0.9 < time.monotonic() - started < WAIT_S


# -- the server's channels and the CLI ---------------------------------------------------


def test_directory_and_stats_channels_are_read_with_bus_sub(bus: Bus) -> None:
    with bus.client() as client:
        publisher = client.create_publisher("news", type="text")
        publisher.publish_bytes(b"one")
        out = bus.cli("sub", "/bus/directory", "--newest", "--count", "1", "--timeout", "5")
        directory = json.loads(out)
        assert "news" in [c["name"] for c in directory["channels"]]
        deadline = time.monotonic() + WAIT_S
        while True:
            out = bus.cli("sub", "/bus/stats", "--newest", "--count", "1", "--timeout", "5")
            stats = {c["name"]: c for c in json.loads(out)["channels"]}
            if stats["news"]["messages"] == 1:
                break
            assert time.monotonic() < deadline


def test_bus_pub_lines_reach_bus_sub(bus: Bus) -> None:
    reader = subprocess.Popen(
        [
            *POSTOFFICE,
            "bus",
            "sub",
            "lines",
            "--reliable",
            "--count",
            "3",
            "--socket",
            str(bus.socket),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_without_postoffice(),
    )
    try:
        with bus.client() as client:
            until(
                lambda: any(c.name == "lines" and c.subscribers for c in client.channel_info()),
                "the reader subscribed",
            )
        bus.cli("pub", "lines", "--reliable", stdin=b"alpha\n\nbeta\ngamma\n")
        out, err = reader.communicate(timeout=30)
        assert reader.returncode == 0, err.decode()
        assert out == b"alpha\nbeta\ngamma\n"
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    listing = bus.cli("ls", "--json")
    assert [json.loads(line)["name"] for line in listing.splitlines()] == [
        "/bus/directory",
        "/bus/stats",
    ]
