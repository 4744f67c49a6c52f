"""Attacks on the command server (and the ingest control port, which shares its parser).

Each test runs hostile clients against a real server process for a bounded number of
rounds and seconds, checks that they get the refusal docs/security.md documents, and that
a well-behaved redis-py client is served all along, each reply within a bound.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from postoffice.core.resp import encode_command
from tests.integration.conftest import ServerProcess, start_server

# Each attack is checked against another client's latency (MAX_STALL_S): alone, so no
# parallel test's load counts against the server.
pytestmark = [pytest.mark.timeout(60), pytest.mark.alone]

#: A served client's reply may take this long while the attack goes on (the machine is
#: small and shared; before the fixes the attacks here stalled every client for seconds).
MAX_STALL_S = 1.0
BASE = ("--port", "0", "--metrics-port", "0")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One command server without a password or a store, shared by the attacks that
    change no setting."""
    server = start_server(tmp_path_factory.mktemp("plain"), "command", *BASE)
    yield server
    server.stop()


def exchange(port: int, payload: bytes, *, timeout_s: float = 5.0) -> bytes:
    """Send `payload` on a fresh connection; everything the server sends until it closes
    (or `timeout_s` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(payload)
        got = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
        return got


@dataclass
class Probe:
    """A well-behaved client sending PING in a loop from a thread, timing every reply."""

    client: redis.Redis
    latencies: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.latencies) < 100_000:
            started = time.monotonic()
            try:
                assert self.client.ping() is True
            except (redis.RedisError, AssertionError) as exc:
                self.errors.append(exc)
                return
            self.latencies.append(time.monotonic() - started)
            time.sleep(0.005)

    def check(self) -> None:
        """Served all along: no error, some replies, none slower than MAX_STALL_S."""
        assert not self.errors, self.errors
        assert self.latencies, "the probe got no reply at all"
        assert max(self.latencies) < MAX_STALL_S, f"a reply took {max(self.latencies):.2f} s"


def probe(host_port: tuple[str, int], **kwargs: object) -> Probe:
    host, port = host_port
    return Probe(redis.Redis(host=host, port=port, socket_timeout=10, **kwargs))  # type: ignore[arg-type]


def attack(rounds: int, seconds: float, attackers: int, one: Callable[[], None]) -> int:
    """Run `one` attack in `attackers` threads, each at most `rounds` times and `seconds`
    long in all; how many attacks were made."""
    made: list[int] = []
    deadline = time.monotonic() + seconds

    def loop() -> None:
        count = 0
        while count < rounds and time.monotonic() < deadline:
            one()
            count += 1
        made.append(count)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(attackers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 15)
    return sum(made)


# -- the parser ----------------------------------------------------------------------------

HUGE_ARRAY = b"*2147483647\r\n"
HUGE_ARRAY_REPLY = (
    b"-ERR Protocol error: invalid multibulk length (2147483647 exceeds limit 65536)\r\n"
)


def test_huge_array_header_is_refused_at_once_and_others_are_served(
    plain: ServerProcess,
) -> None:
    """Three clients looping on `*2147483647` (once a stall of seconds each) get Redis's
    refusal and a close; a fourth is served throughout."""
    port = plain.listeners["command"][1]
    replies: list[bytes] = []

    def one() -> None:
        replies.append(exchange(port, HUGE_ARRAY))

    with probe(plain.listeners["command"]) as served:
        made = attack(rounds=30, seconds=3.0, attackers=3, one=one)
    served.check()
    assert made >= 3
    assert set(replies) == {HUGE_ARRAY_REPLY}  # and the server closed each


def test_nested_huge_array_header_is_refused(plain: ServerProcess) -> None:
    port = plain.listeners["command"][1]
    with probe(plain.listeners["command"]) as served:
        for payload in (b"*1\r\n*2147483647\r\n", b"*1\r\n>2147483647\r\n"):
            started = time.monotonic()
            assert exchange(port, payload).startswith(b"-ERR Protocol error: expected '$'")
            assert time.monotonic() - started < MAX_STALL_S
    served.check()


def test_a_flood_of_empty_arrays_is_skipped(plain: ServerProcess) -> None:
    """Thousands of `*0` (each once a level of recursion) then a command: the command is
    answered, with nothing logged."""
    port = plain.listeners["command"][1]
    before = plain.log().count("Traceback")
    reply = exchange(port, b"*0\r\n" * 20_000 + b"*1\r\n$4\r\nQUIT\r\n")
    assert reply == b"+OK\r\n"
    assert plain.log().count("Traceback") == before


def test_ingest_control_port_refuses_huge_headers_and_slows_guessing(tmp_path: Path) -> None:
    """The ingest control port shares the parser and the AUTH throttle: the same refusal
    for `*2147483647`, guesses answered ever slower, and it keeps serving."""
    from tests.integration.test_ingest import Ingest

    ingest = Ingest(tmp_path, x=1)
    server = start_server(tmp_path, "ingest", *ingest.args("--control-token", "s3cret"))
    try:
        control = ingest.sys_base + 2
        with probe(("127.0.0.1", control), protocol=2, password="s3cret") as served:
            replies: list[bytes] = []
            attack(
                rounds=10,
                seconds=2.0,
                attackers=3,
                one=lambda: replies.append(exchange(control, HUGE_ARRAY)),
            )
            with socket.create_connection(("127.0.0.1", control), timeout=5) as sock:
                sock.sendall(b"".join(command(b"AUTH", b"guess%d" % i) for i in range(100)))
                sock.settimeout(0.2)
                got = b""
                started = time.monotonic()
                while time.monotonic() - started < 1.0:
                    with contextlib.suppress(TimeoutError):
                        got += sock.recv(65536)
            # A CONFIG GET glob as long as an argument may be (once handed to fnmatch,
            # which compiles and caches every new pattern) is refused from its length.
            glob = b"*a" * 30_000 + b"b"
            refused = exchange(
                control,
                command(b"AUTH", b"s3cret") + command(b"CONFIG", b"GET", glob) + command(b"QUIT"),
            )
        served.check()
        assert set(replies) == {
            b"-ERR Protocol error: invalid multibulk length (2147483647 exceeds limit 64)\r\n"
        }
        assert 1 <= got.count(b"-WRONGPASS") <= 5  # delays 0, 0.05, 0.1, 0.2, 0.4
        assert refused == b"+OK\r\n-ERR pattern of 60001 bytes exceeds limit 256\r\n+OK\r\n"
    finally:
        server.stop()


# -- globs -----------------------------------------------------------------------------------


def command(*args: bytes) -> bytes:
    return encode_command(list(args))


def test_config_get_with_a_huge_glob_is_refused_at_once(plain: ServerProcess) -> None:
    """A 4 MiB CONFIG GET pattern (once seconds of regex compiling) is refused from its
    length; each attacker's next pattern differs, so no cache helps."""
    port = plain.listeners["command"][1]
    replies: list[bytes] = []
    count = iter(range(1_000_000))

    def one() -> None:
        pattern = b"*" * (4 << 20) + b"%d" % next(count)
        replies.append(exchange(port, command(b"CONFIG", b"GET", pattern) + command(b"QUIT")))

    with probe(plain.listeners["command"]) as served:
        made = attack(rounds=5, seconds=3.0, attackers=3, one=one)
    served.check()
    assert made >= 3
    for reply in replies:
        assert re.fullmatch(
            rb"-ERR pattern of 419430\d+ bytes exceeds limit 256\r\n\+OK\r\n", reply
        )


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A command server keeping keys in its own store directory, with 300 long keys."""
    tmp = tmp_path_factory.mktemp("stored")
    server = start_server(tmp, "command", *BASE, "--store-dir", str(tmp / "store"))
    host, port = server.listeners["command"]
    with redis.Redis(host=host, port=port, socket_timeout=10) as r:
        r.mset({b"a" * 1000 + b"%04d" % i: b"v" for i in range(300)})
    yield server
    server.stop()


def test_scan_with_pathological_patterns_leaves_others_served(stored: ServerProcess) -> None:
    """SCAN MATCH patterns built to make a matcher retry its stars, over the longest keys,
    from three looping clients: each SCAN does bounded work and others are served."""
    host, port = stored.listeners["command"]
    patterns = [
        b"*a" * 1000 + b"b",
        b"*" + b"[ab]" * 500 + b"c*",
        b"*?" * 1000 + b"b",
        b"[" * 2048,
    ]
    pages: list[int] = []

    def one() -> None:
        with redis.Redis(host=host, port=port, socket_timeout=10) as r:
            for pattern in patterns:
                _, keys = r.scan(0, match=pattern, count=10_000)
                pages.append(len(keys))

    with probe(stored.listeners["command"]) as served:
        made = attack(rounds=20, seconds=3.0, attackers=3, one=one)
    served.check()
    assert made >= 3
    assert set(pages) == {0}
    with (
        redis.Redis(host=host, port=port, socket_timeout=10) as r,
        pytest.raises(redis.ResponseError, match=r"^pattern of 2049 bytes exceeds limit 2048$"),
    ):
        r.scan(0, match=b"*" * 2049)


# -- replies ---------------------------------------------------------------------------------


def test_mget_of_one_big_value_many_times_is_refused(stored: ServerProcess) -> None:
    """`MGET big big ...` (a few KB sent, once gigabytes built) is refused once the reply
    would pass max-reply-bytes, and the server's memory stays near that bound."""
    host, port = stored.listeners["command"]
    with redis.Redis(host=host, port=port, socket_timeout=10) as r:
        r.set(b"big", b"v" * (1 << 20))
    errors: list[str] = []

    def one() -> None:
        with redis.Redis(host=host, port=port, socket_timeout=20) as r:
            try:
                r.mget([b"big"] * 1000)
            except redis.ResponseError as exc:
                errors.append(str(exc))

    with probe(stored.listeners["command"]) as served:
        made = attack(rounds=3, seconds=5.0, attackers=3, one=one)
    served.check()
    assert len(errors) == made >= 3
    assert set(errors) == {
        "reply of more than 67109904 bytes exceeds limit 67108864 (CONFIG SET max-reply-bytes)"
    }
    with redis.Redis(host=host, port=port, socket_timeout=10) as r:
        rss = int(r.info("memory")["used_memory_rss"])
        assert r.mget([b"big", b"nope"]) == [b"v" * (1 << 20), None]
    assert rss < 600 << 20, f"rss {rss >> 20} MiB"


# -- settings and AUTH -----------------------------------------------------------------------


def test_config_set_cannot_lock_clients_out(tmp_path: Path) -> None:
    """A rate that would starve every client is refused; one merely low never holds up
    the administrative commands, so the rate can always be set back."""
    server = start_server(tmp_path, "command", *BASE, "--rate-limit", "1000")
    try:
        with redis.Redis(*server.listeners["command"], socket_timeout=10) as r:
            with pytest.raises(redis.ResponseError, match=r"must be 0 \(off\) or at least 0.1"):
                r.config_set("rate-limit", "1e-300")
            assert r.config_set("rate-limit", "0.1") is True
            assert r.ping() is True  # the burst's one token
            with pytest.raises(redis.ResponseError, match=r"rate limit of 0.1 commands/s exceeded"):
                r.ping()
            assert r.info("stats")["rate_limited_commands"] >= 1
            assert r.config_set("rate-limit", "0") is True
            assert r.ping() is True
    finally:
        server.stop()


def test_password_guessing_is_slowed_then_cut_off(tmp_path: Path) -> None:
    """A thousand pipelined guesses (once answered in well under a second): the replies
    come ever slower, the connection closes after ten, and others are served meanwhile."""
    server = start_server(tmp_path, "command", *BASE, "--requirepass", "s3cret")
    try:
        port = server.listeners["command"][1]
        guesses = b"".join(command(b"AUTH", b"guess%d" % i) for i in range(1000))
        with (
            probe(server.listeners["command"], password="s3cret") as served,
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ):
            sock.sendall(guesses)
            started = time.monotonic()
            sock.settimeout(0.2)
            got = b""
            while time.monotonic() - started < 1.5:
                with contextlib.suppress(TimeoutError):
                    got += sock.recv(65536)
        served.check()
        # 1.5 s allows the first six replies at most (delays 0, 0.05, 0.1, 0.2, 0.4, 0.8).
        assert 1 <= got.count(b"-WRONGPASS") <= 6
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"".join(command(b"AUTH", b"again%d" % i) for i in range(12)))
            sock.settimeout(20)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.count(b"-WRONGPASS") == 10  # then the close
        with redis.Redis(*server.listeners["command"], password="s3cret") as r:
            assert r.info("stats")["auth_failures"] >= 11
    finally:
        server.stop()


# -- names -----------------------------------------------------------------------------------


def test_long_client_names_are_refused(plain: ServerProcess) -> None:
    """Names as long as an argument may be (8 MiB each, kept for the connection's life
    and copied into every CLIENT LIST) are refused; the connection stays usable."""
    port = plain.listeners["command"][1]
    name = b"n" * (8 << 20)
    replies: list[bytes] = []

    def one() -> None:
        replies.append(
            exchange(
                port,
                command(b"CLIENT", b"SETNAME", name)
                + command(b"CLIENT", b"SETINFO", b"LIB-NAME", name)
                + command(b"HELLO", b"2", b"SETNAME", name)
                + command(b"CLIENT", b"GETNAME")
                + command(b"QUIT"),
                timeout_s=10,
            )
        )

    with probe(plain.listeners["command"]) as served:
        made = attack(rounds=3, seconds=3.0, attackers=2, one=one)
    served.check()
    assert made >= 2
    refusal = b" of 8388608 bytes exceeds limit 256\r\n"
    assert set(replies) == {
        b"-ERR client name"
        + refusal
        + b"-ERR lib-name"
        + refusal
        + b"-ERR client name"
        + refusal
        + b"$-1\r\n+OK\r\n"
    }


# -- the connection layer ----------------------------------------------------------------


def test_a_slowloris_client_is_closed_on_the_command_port(tmp_path: Path) -> None:
    """Clients trickling a command a byte at a time are answered and closed once the
    request deadline passes (set low here with --request-timeout); others are served."""
    server = start_server(tmp_path, "command", *BASE, "--request-timeout", "1")
    port = server.listeners["command"][1]
    try:
        with probe(server.listeners["command"]) as served:
            sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
            partial = command(b"SET", b"k", b"v" * 100)[:-20]
            started = time.monotonic()
            got = [b""] * len(sockets)
            closed = [False] * len(sockets)
            sent = 0
            while not all(closed) and time.monotonic() - started < 6.0:
                for i, sock in enumerate(sockets):
                    if closed[i]:
                        continue
                    with contextlib.suppress(OSError):
                        if sent < len(partial):
                            sock.sendall(partial[sent : sent + 1])
                        sock.settimeout(0.05)
                        try:
                            chunk = sock.recv(4096)
                        except TimeoutError:
                            continue
                        got[i] += chunk
                        closed[i] = not chunk
                sent += 1
            elapsed = time.monotonic() - started
            for sock in sockets:
                sock.close()
        served.check()
        assert all(closed), got
        assert set(got) == {b"-ERR request not received whole within 1 s\r\n"}
        assert elapsed < 4.0  # the deadline, plus the sweep's second and the linger
    finally:
        server.stop()


def test_pipelined_gets_of_a_big_value_never_read_cost_one_budget(
    stored: ServerProcess,
) -> None:
    """Clients pipelining 200 GETs of a 1 MiB value and reading nothing: each batch
    stops at the first write the peer does not take, so the server's memory does not
    grow by the batch's 200 MiB (before, it built every reply, then joined them)."""
    host, port = stored.listeners["command"]
    with redis.Redis(host=host, port=port, socket_timeout=10) as r:
        r.set(b"big", b"v" * (1 << 20))
        peak_before = int(r.info("memory")["used_memory_peak"])
    flood = command(b"GET", b"big") * 200
    holding: list[socket.socket] = []

    def one() -> None:
        sock = socket.create_connection((host, port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(flood)
        holding.append(sock)

    with probe(stored.listeners["command"]) as served:
        made = attack(rounds=2, seconds=3.0, attackers=2, one=one)
        time.sleep(1.0)  # the server has read every flood and run what it will
        with redis.Redis(host=host, port=port, socket_timeout=10) as r:
            peak = int(r.info("memory")["used_memory_peak"])
            clients = r.client_list()
    for sock in holding:
        sock.close()
    served.check()
    assert made == 4
    assert len(clients) >= 4  # the flooders are held, waiting for their peers to read
    assert peak - peak_before < 64 << 20, f"peak grew {(peak - peak_before) >> 20} MiB"


def test_a_pipeline_of_costly_commands_lets_others_in(stored: ServerProcess) -> None:
    """A client pipelining 300 SCANs made to cost their whole match budget (about 10 ms
    each: 3 s of work) hands the loop back between turns, so another client waits about
    a turn, not the whole pipeline."""
    host, port = stored.listeners["command"]
    scan = command(b"SCAN", b"0", b"MATCH", b"*a" * 1000 + b"b", b"COUNT", b"10000")
    count = 300
    replies = [0]

    def greedy() -> None:
        with socket.create_connection((host, port), timeout=20) as sock:
            sock.sendall(scan * count)
            got = b""
            deadline = time.monotonic() + 30
            while got.count(b"*2\r\n") < count and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            replies[0] = got.count(b"*2\r\n")

    thread = threading.Thread(target=greedy, daemon=True)
    latencies: list[float] = []
    with redis.Redis(host=host, port=port, socket_timeout=10) as r:
        r.ping()
        thread.start()
        time.sleep(0.2)  # the pipeline is being served
        while thread.is_alive() and len(latencies) < 200:
            started = time.monotonic()
            assert r.ping() is True
            latencies.append(time.monotonic() - started)
            time.sleep(0.01)
    thread.join(30)
    assert replies[0] == count
    assert len(latencies) >= 5, "the pipeline ended before the other client got a turn"
    assert max(latencies) < 0.5, f"a PING waited {max(latencies):.2f} s"
