"""`command serve --workers N`: a primary and N worker processes on one port, real clients."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import redis
import trustme

from tests.integration.conftest import (
    POSTOFFICE,
    ServerProcess,
    env_without_postoffice,
    run_redis_benchmark_set_get,
)
from tests.integration.rawclient import RawClient

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]
BASE = ("--port", "0", "--metrics-port", "0")
MAX_TRIES = 200  # connections opened at most to find one on a given worker
CLIENTS = 36  # spread by the kernel: all on 2 of 3 workers has odds of 3 * (2/3)**36


def call(r: redis.Redis, *args: object) -> object:
    """A raw command through redis-py (whose execute_command is untyped)."""
    return r.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py


def connect(port: int, **kwargs: object) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=10, **kwargs)  # type: ignore[arg-type]


def worker_of(conn_id: int, workers: int) -> int:
    """Worker i of N hands out the ids i+1, i+1+N, ... (ARCHITECTURE.md)."""
    return (conn_id - 1) % workers


def one_per_worker(port: int, workers: int, **kwargs: object) -> dict[int, redis.Redis]:
    """A redis-py client held by each worker: connect until every worker has one."""
    found: dict[int, redis.Redis] = {}
    for _ in range(MAX_TRIES):
        r = connect(port, **kwargs)
        index = worker_of(int(r.client_id()), workers)
        if index in found:
            r.close()
        else:
            found[index] = r
        if len(found) == workers:
            return found
    raise AssertionError(f"connections reached only workers {sorted(found)} of {workers}")


def raw_on(port: int, workers: int, index: int, hello: bytes = b"") -> tuple[RawClient, int]:
    """A raw connection that worker `index` holds (`hello` sent first), and its id."""
    for _ in range(MAX_TRIES):
        raw = RawClient.connect(port)
        raw.send(hello + b"CLIENT ID\r\n")
        reply = raw.read_lines(2 if hello else 1)[-1]
        assert reply.startswith(b":"), reply
        if worker_of(int(reply[1:]), workers) == index:
            return raw, int(reply[1:])
        raw.close()
    raise AssertionError(f"no connection reached worker {index}")


def password_asked_everywhere(port: int, workers: int, password: bytes) -> dict[int, int]:
    """Check that a new client of every worker gets NOAUTH until it AUTHs with `password`;
    return the id each worker gave."""
    ids: dict[int, int] = {}
    for _ in range(MAX_TRIES):
        with RawClient.connect(port) as raw:
            raw.send(b"PING\r\nAUTH " + password + b"\r\nCLIENT ID\r\n")
            first, ok, conn_id = raw.read_lines(3)
            assert (first, ok) == (b"-NOAUTH Authentication required.", b"+OK")
            ids.setdefault(worker_of(int(conn_id[1:]), workers), int(conn_id[1:]))
        if len(ids) == workers:
            return ids
    raise AssertionError(f"connections reached only workers {sorted(ids)} of {workers}")


def roster(r: redis.Redis) -> dict[str, dict[str, object]]:
    """INFO workers, as redis-py parses `worker0:pid=1,state=listening,...`."""
    return {k: v for k, v in r.info("workers").items() if isinstance(v, dict)}


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def sets_a_key(r: redis.Redis) -> bool:
    """Whether SET works through this client (TRYAGAIN until its worker reaches the store)."""
    try:
        return r.set("probe", "1") is True
    except redis.ResponseError:
        return False


def gone(pid: int) -> bool:
    """Whether no process (not even a zombie) has `pid` any more."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.fixture
def stopped_worker() -> Iterator[list[int]]:
    """Pids the test SIGSTOPs; each is sent SIGCONT at the end, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGCONT)


def test_server_wide_commands_see_every_worker(serve: Serve) -> None:
    server = serve("command", *BASE, "--workers", "3")
    port = server.port
    clients = [connect(port) for _ in range(CLIENTS)]
    ids = {int(c.client_id()) for c in clients}
    assert {worker_of(i, 3) for i in ids} == {0, 1, 2}, "the kernel spread them over all 3"
    admin = clients[0]
    listed = {int(c["id"]) for c in admin.client_list()}
    assert listed == ids
    only = call(admin, "CLIENT", "LIST", "ID", *sorted(ids)[:2])
    assert isinstance(only, bytes)
    assert only.count(b"\n") == 2
    workers = roster(admin)
    assert sorted(workers) == ["worker0", "worker1", "worker2"]
    assert sum(int(str(w["clients"])) for w in workers.values()) == CLIENTS
    assert all(w["state"] == "listening" for w in workers.values())
    assert len({w["pid"] for w in workers.values()}) == 3
    info = admin.info()
    assert info["connected_clients"] == CLIENTS
    assert info["workers"] == 3
    assert info["process_id"] == server.proc.pid
    assert info["total_connections_received"] == CLIENTS

    assert admin.config_resetstat()
    for c in clients:
        assert c.ping() is True
    stats = admin.info("commandstats")
    assert stats["cmdstat_ping"]["calls"] == CLIENTS  # summed over three workers
    assert admin.info("stats")["total_commands_processed"] >= CLIENTS

    # CLIENT KILL ID reaches the worker that holds the client.
    mine = worker_of(int(admin.client_id()), 3)
    other = next(i for i in range(3) if i != mine)
    victim, victim_id = raw_on(port, 3, other)
    assert admin.client_kill_filter(_id=str(victim_id)) == 1
    assert victim.read_until_eof() == b""  # closed by its worker
    victim.close()
    assert victim_id not in {int(c["id"]) for c in admin.client_list()}
    target = next(c for c in clients[1:] if worker_of(int(c.client_id()), 3) != mine)
    addr = next(c["addr"] for c in admin.client_list() if int(c["id"]) == target.client_id())
    assert call(admin, "CLIENT", "KILL", addr) == b"OK"
    with pytest.raises(redis.ResponseError, match="No such client"):
        call(admin, "CLIENT", "KILL", "127.0.0.1:1")
    # A client killing itself gets its answer through the primary, then is closed.
    me, my_id = raw_on(port, 3, other)
    me.send(b"CLIENT KILL ID %d SKIPME no\r\nPING\r\n" % my_id)
    # Closed after the reply; the PING behind it is not run.
    assert me.read_until_eof() == b":1\r\n"
    me.close()

    assert admin.config_get("workers") == {"workers": "3"}
    with pytest.raises(redis.ResponseError, match="can't set immutable config"):
        admin.config_set("workers", 4)

    host, metrics_port = server.listeners["metrics"]
    body = ""

    def metrics_count_what_info_counts() -> bool:
        # The raw connections closed above leave their workers' counts when each worker
        # reads their EOF, so the two reads agree once no close is still under way.
        nonlocal body
        active = admin.info("clients")["connected_clients"]
        with urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        return f"postoffice_command_connections_active {float(active)}" in body

    wait_for("/metrics to count the connections INFO counts", metrics_count_what_info_counts)
    assert "postoffice_command_workers_listening 3.0" in body
    with urllib.request.urlopen(f"http://{host}:{metrics_port}/readyz", timeout=5) as resp:
        assert resp.status == 200

    # CONFIG SET from one worker applies in all: a new client anywhere must AUTH.
    assert admin.config_set("requirepass", "s3cret")
    password_asked_everywhere(port, 3, b"s3cret")
    assert admin.ping() is True  # a client already authenticated stays so, as in Redis
    for c in clients:
        c.close()


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark missing")
def test_redis_benchmark_with_a_store_behind_every_worker(serve: Serve, tmp_path: Path) -> None:
    store = serve("store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "s"))
    server = serve("command", *BASE, "--workers", "2", "--store", f"127.0.0.1:{store.port}")
    per_worker = one_per_worker(server.port, 2)
    for linked in per_worker.values():  # each worker has a store link of its own
        wait_for("the store link", partial(sets_a_key, linked))
    r = per_worker[0]
    assert per_worker[1].get("probe") == b"1"
    assert r.delete("probe") == 1  # the benchmark counts the keys
    run_redis_benchmark_set_get(server.port, r)
    served = [int(str(w["commands"])) for w in roster(r).values()]
    assert all(count > 100 for count in served), served  # both workers carried the load


def test_workers_on_one_store_see_each_others_expiries(serve: Serve, tmp_path: Path) -> None:
    """Each worker writes the store, so none trusts its own view of the expiries: a SET
    through one clears the expiry another gave the key, and a GET sees another's expiry."""
    store = serve("store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "s"))
    server = serve("command", *BASE, "--workers", "2", "--store", f"127.0.0.1:{store.port}")
    first, second = one_per_worker(server.port, 2).values()
    for linked in (first, second):
        wait_for("the store link", partial(sets_a_key, linked))
    assert first.set("k", "old", ex=1000) is True
    assert second.set("k", "new") is True
    assert first.ttl("k") == -1
    assert first.get("k") == b"new"
    assert second.set("gone", "v") is True
    assert second.get("gone") == b"v"
    assert first.set("gone", "v", px=1) is True
    passed = time.time() + 0.005
    wait_for("the expiry to pass", lambda: time.time() > passed)
    assert second.get("gone") is None  # read in its own right, not dropped by `first`


def test_killed_worker_is_restarted_with_the_current_settings(serve: Serve) -> None:
    server = serve("command", *BASE, "--workers", "2")
    port = server.port
    survivor = one_per_worker(port, 2)[1]
    doomed, _ = raw_on(port, 2, 0)
    assert survivor.config_set("requirepass", "s3cret")
    assert survivor.config_set("timeout", 77)
    doomed.send(b"ECHO counted\r\n" * 300)  # worker 0 counts these before it dies
    assert doomed.read_lines(600)[-2:] == [b"$7", b"counted"]

    def counted() -> tuple[int, int]:
        total = int(survivor.info("stats")["total_commands_processed"])
        echoes = int(survivor.info("commandstats")["cmdstat_echo"]["calls"])
        return total, echoes

    time.sleep(1.5)  # a heartbeat or more: the primary has worker 0's counts
    total_before, echoes_before = counted()
    assert echoes_before == 300
    pid = int(str(roster(survivor)["worker0"]["pid"]))
    os.kill(pid, signal.SIGKILL)
    wait_for("worker 0 to die", lambda: gone(pid))
    try:
        assert doomed.read_until_eof() == b""  # its clients' connections went with it
    except ConnectionResetError:
        pass
    doomed.close()
    # The port keeps answering (the other worker takes every new connection) and the
    # other worker's clients keep being served while worker 0 is down.
    for _ in range(20):
        fresh = connect(port, password="s3cret")
        assert fresh.ping() is True
        fresh.close()
        assert survivor.ping() is True

    def restarted() -> bool:
        entry = roster(survivor)["worker0"]
        return entry["state"] == "listening" and entry["pid"] not in (0, pid)

    wait_for("worker 0 to be restarted", restarted)
    entry = roster(survivor)["worker0"]
    assert entry["restarts"] == 1
    assert entry["last_exit"] == "signal_SIGKILL"
    assert "worker exited worker=0 reason='signal SIGKILL'" in server.log()
    # What the dead worker had counted is still in the totals.
    total_after, echoes_after = counted()
    assert total_after >= total_before
    assert echoes_after == echoes_before
    assert survivor.config_resetstat()
    assert "cmdstat_echo" not in survivor.info("commandstats")  # RESETSTAT zeroes it too
    raw, conn_id = raw_on(port, 2, 0, hello=b"AUTH s3cret\r\n")  # the new process
    assert conn_id > 1_000_000_000  # a new id range: ids are never handed out twice
    raw.send(b"CONFIG GET timeout\r\n")
    assert raw.read_lines(5) == [b"*2", b"$7", b"timeout", b"$2", b"77"]
    raw.close()
    password_asked_everywhere(port, 2, b"s3cret")  # the restarted worker asks for it too


def test_a_worker_that_does_not_answer_costs_an_error_not_a_hang(
    serve: Serve, stopped_worker: list[int]
) -> None:
    server = serve("command", *BASE, "--workers", "2")
    per_worker = one_per_worker(server.port, 2)
    asker = per_worker[0]
    pid = int(str(roster(asker)["worker1"]["pid"]))
    stopped_worker.append(pid)
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(redis.ResponseError, match=rf"^worker 1 \(pid {pid}\) did not answer"):
        asker.client_list()
    assert time.monotonic() - started < 4.5
    assert asker.ping() is True  # the worker's own loop never waited
    os.kill(pid, signal.SIGCONT)
    wait_for("worker 1 to answer again", lambda: len(asker.client_list()) == 2)


def test_a_hung_worker_is_killed_and_restarted(serve: Serve, stopped_worker: list[int]) -> None:
    # The watchdog also covers a worker's start: the timeout must exceed the slowest start
    # (a process's imports take seconds on a loaded 2-core runner), or the replacement is
    # itself killed as hung before it listens, and again, and the roster never settles.
    server = serve("command", *BASE, "--workers", "2", "--worker-timeout", "6")
    per_worker = one_per_worker(server.port, 2)
    watcher = per_worker[0]
    pid = int(str(roster(watcher)["worker1"]["pid"]))
    stopped_worker.append(pid)
    os.kill(pid, signal.SIGSTOP)  # hung: alive, but its loop answers nothing

    def replaced() -> bool:
        try:
            entry = roster(watcher)["worker1"]
        except redis.ResponseError:  # INFO asks the hung worker too, until it is gone
            return False
        return entry["state"] == "listening" and entry["pid"] not in (0, pid)

    wait_for("the hung worker to be replaced", replaced, timeout_s=30)
    assert gone(pid)
    entry = roster(watcher)["worker1"]
    assert entry["restarts"] == 1
    assert str(entry["last_exit"]).startswith("hung_for_")
    assert f"worker hung, killing it worker=1 pid={pid}" in server.log()
    assert len(one_per_worker(server.port, 2)) == 2  # both halves of the port serve again
    assert watcher.ping() is True


@pytest.mark.parametrize("how", ["sigterm", "shutdown"])
def test_stop_drains_every_worker_and_exits_zero(serve: Serve, how: str) -> None:
    server = serve("command", *BASE, "--workers", "2", "--threads", "2")
    per_worker = one_per_worker(server.port, 2)
    pids = [int(str(w["pid"])) for w in roster(per_worker[0]).values()]
    replies: list[object] = []
    sleeper = threading.Thread(
        target=lambda: replies.append(call(per_worker[1], "DEBUG", "SLEEP", "1"))
    )
    sleeper.start()
    wait_for("the sleep to start", lambda: per_worker[0].info("threads")["worker_busy"] == 1)
    if how == "sigterm":
        server.proc.send_signal(signal.SIGTERM)
    else:
        assert call(per_worker[0], "SHUTDOWN") is True  # OK, then the connection closes
    sleeper.join(10)
    assert replies == [b"OK"]  # the reply in flight on the other worker was delivered
    assert server.proc.wait(15) == 0
    assert all(gone(pid) for pid in pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.listeners["command"], timeout=1)


def test_workers_stop_when_the_primary_is_killed(serve: Serve) -> None:
    server = serve("command", *BASE, "--workers", "2")
    per_worker = one_per_worker(server.port, 2)
    pids = [int(str(w["pid"])) for w in roster(per_worker[0]).values()]
    server.proc.kill()
    server.proc.wait(10)
    # Each worker sees its channel close and drains like a SIGTERM'ed server.
    wait_for("the workers to stop", lambda: all(gone(pid) for pid in pids))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.listeners["command"], timeout=1)


def test_tls_rate_limit_and_max_clients_in_every_worker(serve: Serve, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    server = serve(
        "command",
        *BASE,
        *("--workers", "2", "--tls-cert", str(cert_pem), "--tls-key", str(key_pem)),
        *("--rate-limit", "5", "--rate-limit-burst", "5", "--max-connections", "4"),
    )
    context = ssl.create_default_context(cafile=str(ca_pem))
    held: list[RawClient] = []
    refused = 0
    seen: set[int] = set()
    for _ in range(16):
        raw = RawClient(
            context.wrap_socket(
                socket.create_connection(server.listeners["command"], timeout=10),
                server_hostname="127.0.0.1",
            )
        )
        raw.send(b"CLIENT ID\r\n" + b"PING\r\n" * 9)
        first = raw.read_lines(1)
        if first == [b"-ERR max number of clients reached"]:
            refused += 1
            raw.close()
            continue
        more = first + raw.read_lines(9)
        assert more[1:5] == [b"+PONG"] * 4  # the burst of 5 (CLIENT ID took one)
        # At 5/s a token may refill between two TLS records, hardly more.
        assert more[5:].count(b"-RATELIMIT rate limit of 5 commands/s exceeded") >= 4
        seen.add(worker_of(int(more[0][1:]), 2))
        held.append(raw)
    # Each worker admits its share, ceil(4 / 2) = 2: at most 4 in all.
    assert 2 <= len(held) <= 4
    assert refused == 16 - len(held)
    assert seen == {0, 1}
    for raw in held:
        raw.close()


def test_workers_with_a_store_directory_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [*POSTOFFICE, "command", "serve", "--workers", "2", "--store-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=30,
        env=env_without_postoffice(),
    )
    assert done.returncode != 0
    assert "settings 'workers' (2) and 'store_dir' cannot be combined" in done.stderr
    assert not (tmp_path / "s").exists()
