"""The --workers parts without processes: settings, ids, the channel's shell, the
server-wide commands over a fake cluster, and a worker's answers to its primary."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from postoffice.command.cluster import (
    client_list_reply,
    info_sections,
    killed_one_reply,
    killed_reply,
)
from postoffice.command.commands import cmd_client, cmd_config, cmd_info
from postoffice.command.config import CommandConfig, settings_from_json, settings_json
from postoffice.command.errors import CommandError, WorkerUnavailableError
from postoffice.command.keyspace import Answer, Deferred, settle
from postoffice.command.link import Link
from postoffice.command.server import changed_config
from postoffice.command.worker import WorkerCalls
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import ConfigError
from postoffice.core.resp import OK, Bulk, Error, Integer, Reply, encode_command
from tests.command.test_server import Harness
from tests.fakes import FakeTransport

# -- settings --------------------------------------------------------------------------


def test_workers_default_to_one_and_are_range_checked() -> None:
    assert CommandConfig().workers == 1
    with pytest.raises(ConfigError, match=r"^setting 'workers' must be between 1 and 64, got 0$"):
        CommandConfig(workers=0)


def test_the_worker_timeout_is_off_or_at_least_a_second() -> None:
    assert CommandConfig().worker_timeout_s == 30.0
    assert CommandConfig(worker_timeout_s=0).worker_timeout_s == 0  # no heartbeat
    assert CommandConfig(worker_timeout_s=1).worker_timeout_s == 1
    with pytest.raises(ConfigError, match=r"^setting 'worker_timeout_s' must be 0 \(off\)"):
        CommandConfig(worker_timeout_s=0.5)
    with pytest.raises(ConfigError, match="worker_timeout_s"):
        CommandConfig(worker_timeout_s=-1)


def test_workers_with_a_store_directory_is_refused_naming_both() -> None:
    with pytest.raises(
        ConfigError, match=r"^settings 'workers' \(2\) and 'store_dir' cannot be combined: "
    ):
        CommandConfig(workers=2, store_dir=Path("s"))
    assert CommandConfig(workers=2, store="127.0.0.1:7400").workers == 2


@pytest.mark.parametrize(("clients", "workers", "share"), [(100, 1, 100), (100, 3, 34), (4, 2, 2)])
def test_each_worker_admits_a_share_of_max_connections(
    clients: int, workers: int, share: int
) -> None:
    assert CommandConfig(max_connections=clients, workers=workers).clients_per_worker == share


def test_settings_survive_the_trip_to_a_worker() -> None:
    config = CommandConfig(
        port=7000,
        workers=3,
        threads=2,
        requirepass="pw",
        tls_cert=Path("/c.pem"),
        tls_key=Path("/k.pem"),
        rate_limit_per_s=2.5,
        metrics_port=None,
    )
    assert settings_from_json(settings_json(config)) == config


def test_config_set_refuses_what_is_fixed_at_start() -> None:
    config = CommandConfig(workers=2)
    with pytest.raises(CommandError, match=r"'workers'\) - can't set immutable config$"):
        changed_config(config, [("workers", "3")])
    assert changed_config(config, [("timeout", "5")]).idle_timeout_s == 5.0


# -- connection ids --------------------------------------------------------------------


class _Conn:
    conn_id = 0


def test_connection_ids_follow_the_stride() -> None:
    manager = ConnectionManager(ConnectionLimits(), first_id=3, id_step=4)
    ids = []
    for _ in range(3):
        conn = _Conn()
        assert manager.admit(conn) is None  # type: ignore[arg-type]  # only conn_id is used
        ids.append(conn.conn_id)
    assert ids == [3, 7, 11]
    with pytest.raises(ConfigError, match=r"^setting 'id_step' must be at least 1, got 0$"):
        ConnectionManager(ConnectionLimits(), id_step=0)


# -- the channel's shell, two ends over in-memory transports ----------------------------


class Pair:
    """Two Links wired to each other through FakeTransports; `pump` moves the bytes."""

    def __init__(self, answer: object = None) -> None:
        self.lost: list[str] = []
        self.notices: list[tuple[str, dict[str, object]]] = []

        def on_call(op: str, args: dict[str, object]) -> object:
            if op == "boom":
                raise CommandError("refused here")
            if op == "later":
                return self._later(args)
            if op == "setty":
                return {1, 2}
            return {"op": op, "args": args}

        self.left = Link("worker 1", on_call=on_call, on_notice=self._note, on_lost=self._lost)
        self.right = Link("the primary", on_call=on_call, on_notice=self._note, on_lost=self._lost)
        self.left_t = FakeTransport(self.left)
        self.right_t = FakeTransport(self.right)
        self.left.connection_made(self.left_t)
        self.right.connection_made(self.right_t)

    async def _later(self, args: dict[str, object]) -> object:
        await asyncio.sleep(0)
        return ["late", args]

    def _note(self, event: str, args: dict[str, object]) -> None:
        self.notices.append((event, args))

    def _lost(self) -> None:
        self.lost.append("lost")

    async def pump(self) -> None:
        for _ in range(4):
            await asyncio.sleep(0)
            self.right.data_received(self.left_t.take()) if self.left_t.written else None
            self.left.data_received(self.right_t.take()) if self.right_t.written else None


async def test_a_call_is_answered_by_request_id() -> None:
    pair = Pair()
    first = pair.left.call("info", {"a": 1}, timeout_s=5, label="INFO")
    second = pair.left.call("later", {"b": 2}, timeout_s=5, label="INFO")
    await pair.pump()
    assert await first == {"op": "info", "args": {"a": 1}}
    assert await second == ["late", {"b": 2}]


async def test_an_answer_json_cannot_hold_becomes_a_failure() -> None:
    pair = Pair()
    future = pair.left.call("setty", {}, timeout_s=5, label="INFO")
    await pair.pump()
    with pytest.raises(CommandError, match=r"^channel message cannot be encoded as JSON: "):
        await future
    bad = pair.left.call("info", {"x": {1, 2}}, timeout_s=5, label="INFO")
    with pytest.raises(CommandError, match=r"^INFO cannot be asked of worker 1: channel message"):
        await bad


async def test_a_refusal_arrives_as_a_command_error() -> None:
    pair = Pair()
    future = pair.left.call("boom", {}, timeout_s=5, label="CONFIG SET")
    await pair.pump()
    with pytest.raises(CommandError, match=r"^refused here$"):
        await future


async def test_an_unanswered_call_fails_with_the_peer_and_the_deadline() -> None:
    pair = Pair()
    future = pair.left.call("info", {}, timeout_s=0.01, label="CLIENT LIST")  # never pumped
    with pytest.raises(
        WorkerUnavailableError, match=r"^worker 1 did not answer CLIENT LIST within 0.01 s$"
    ):
        await future


async def test_a_lost_channel_fails_what_is_pending_and_refuses_new_calls() -> None:
    pair = Pair()
    future = pair.left.call("info", {}, timeout_s=5, label="INFO")
    pair.left.connection_lost(None)
    with pytest.raises(WorkerUnavailableError, match=r"^worker 1 went away before answering"):
        await future
    assert pair.lost == ["lost"]
    later = pair.left.call("info", {}, timeout_s=5, label="INFO")
    with pytest.raises(WorkerUnavailableError, match=r"^worker 1 is not running \(INFO\)$"):
        await later
    assert pair.left.notify("shutdown") is False


async def test_notices_are_one_way() -> None:
    pair = Pair()
    assert pair.right.notify("listening", {"port": 1})
    await pair.pump()
    assert pair.notices == [("listening", {"port": 1})]
    assert pair.right_t.written == b""  # nothing came back


async def test_broken_framing_closes_the_channel() -> None:
    pair = Pair()
    pair.left.data_received(b"GET / HTTP/1.1\r\n")
    await asyncio.sleep(0)
    assert pair.left_t.closed
    assert pair.lost == ["lost"]


# -- the server-wide commands over a fake cluster --------------------------------------


class FakeCluster:
    """Answers at once with canned values and records what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, object]] = []
        self.killed = 1

    def _done(self, op: str, args: object, value: object) -> asyncio.Future[object]:
        self.asked.append((op, args))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(value)
        return future

    def client_lines(self, ids: list[int] | None) -> asyncio.Future[object]:
        return self._done("clients", ids, ["id=1 addr=a", "id=2 addr=b"])

    def kill_clients(
        self, *, conn_id: int | None, addr: str | None, skip_id: int | None, caller_id: int | None
    ) -> asyncio.Future[object]:
        return self._done("kill", (conn_id, addr, skip_id, caller_id), self.killed)

    def info(self) -> asyncio.Future[object]:
        return self._done("info", None, {"server": {"workers": 2}, "stats": {"x": 1}})

    def config_set(self, pairs: list[tuple[str, str]]) -> asyncio.Future[object]:
        return self._done("config_set", pairs, None)

    def reset_stats(self) -> asyncio.Future[object]:
        return self._done("reset_stats", None, None)

    def config_rewrite(self) -> asyncio.Future[object]:
        return self._done("config_rewrite", None, None)


def settled(answer: Answer) -> Reply:
    assert isinstance(answer, Deferred)
    return settle(answer)


@pytest.fixture
async def clustered() -> tuple[Harness, FakeCluster]:
    harness = Harness(workers=2)
    cluster = FakeCluster()
    harness.server.cluster = cluster
    return harness, cluster


async def test_client_list_and_kill_ask_the_cluster(clustered: tuple[Harness, FakeCluster]) -> None:
    harness, cluster = clustered
    conn, _ = harness.connect()
    server = harness.server
    reply = settled(cmd_client(server, conn, [b"CLIENT", b"LIST", b"ID", b"2", b"1 3"]))
    assert reply == Bulk(data=b"id=1 addr=a\nid=2 addr=b\n")
    assert settled(cmd_client(server, conn, [b"CLIENT", b"KILL", b"ID", b"9"])) == Integer(value=1)
    assert cluster.asked == [
        ("clients", [1, 2, 3]),
        ("kill", (9, None, conn.conn_id, conn.conn_id)),
    ]
    cluster.killed = 0
    old_form = settled(cmd_client(server, conn, [b"CLIENT", b"KILL", b"1.2.3.4:5"]))
    assert old_form == Error(code="ERR", message="No such client")


async def test_config_set_applies_here_then_in_the_others(
    clustered: tuple[Harness, FakeCluster],
) -> None:
    harness, cluster = clustered
    conn, _ = harness.connect()
    answer = cmd_config(harness.server, conn, [b"CONFIG", b"SET", b"timeout", b"9"])
    assert harness.server.config.idle_timeout_s == 9.0  # before the others answered
    assert settled(answer) == OK
    assert cluster.asked == [("config_set", [("timeout", "9")])]
    with pytest.raises(CommandError, match="expected a number"):
        cmd_config(harness.server, conn, [b"CONFIG", b"SET", b"timeout", b"x"])
    assert len(cluster.asked) == 1  # a bad value never leaves the worker
    assert settled(cmd_config(harness.server, conn, [b"CONFIG", b"RESETSTAT"])) == OK


async def test_config_rewrite_is_left_to_the_primary(
    clustered: tuple[Harness, FakeCluster],
) -> None:
    harness, cluster = clustered
    conn, _ = harness.connect()
    assert settled(cmd_config(harness.server, conn, [b"CONFIG", b"REWRITE"])) == OK
    assert cluster.asked == [("config_rewrite", None)]


async def test_info_renders_the_merged_sections(clustered: tuple[Harness, FakeCluster]) -> None:
    harness, _ = clustered
    conn, _ = harness.connect()
    reply = settled(cmd_info(harness.server, conn, [b"INFO", b"server"]))
    assert reply == Bulk(data=b"# Server\r\nworkers:2\r\n")


@pytest.mark.parametrize(
    ("make", "answer"),
    [
        (client_list_reply, {"not": "lines"}),
        (client_list_reply, [1]),
        (killed_reply, "3"),
        (killed_one_reply, None),
        (info_sections, {"server": 1}),
    ],
)
def test_answers_of_the_wrong_shape_are_refused(
    make: Callable[[object], object], answer: object
) -> None:
    with pytest.raises(CommandError, match=r"^bad answer from the other workers: "):
        make(answer)


# -- a worker's answers to its primary ----------------------------------------------------


async def test_a_worker_answers_about_its_own_clients() -> None:
    harness = Harness(workers=2)
    calls = WorkerCalls()
    with pytest.raises(CommandError, match="still starting"):
        calls.answer("clients", {})
    calls.server = harness.server
    _, t1 = harness.connect(50001)
    second, _ = harness.connect(50002)
    lines = calls.answer("clients", {"ids": [second.conn_id]})
    assert isinstance(lines, list)
    assert len(lines) == 1
    assert lines[0].startswith(f"id={second.conn_id} addr=127.0.0.1:50002 ")
    assert calls.answer("kill", {"addr": "127.0.0.1:50001", "skip_id": second.conn_id}) == 1
    assert t1.closed
    assert calls.answer("kill", {"conn_id": second.conn_id, "skip_id": second.conn_id}) == 0
    assert calls.answer("config_set", {"pairs": [["maxclients", "50"]]}) is None
    assert harness.server.manager.limits.max_connections == 25  # its share of 50
    info = calls.answer("info", {})
    assert isinstance(info, dict)
    assert info["clients"]["maxclients"] == 50
    with pytest.raises(CommandError, match=r"^worker call field 'pairs' is 'x'"):
        calls.answer("config_set", {"pairs": "x"})
    with pytest.raises(CommandError, match=r"^unknown worker call 'nope'$"):
        calls.answer("nope", {})
    harness.server.pool.close()


class PendingCluster(FakeCluster):
    """A fake cluster whose CLIENT KILL stays unanswered until the test answers it."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[asyncio.Future[object]] = []

    def kill_clients(
        self, *, conn_id: int | None, addr: str | None, skip_id: int | None, caller_id: int | None
    ) -> asyncio.Future[object]:
        self.asked.append(("kill", (conn_id, addr, skip_id, caller_id)))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future


async def test_a_client_killing_itself_across_workers_gets_its_answer_then_closes() -> None:
    harness = Harness(workers=2)
    cluster = PendingCluster()
    harness.server.cluster = cluster
    calls = WorkerCalls()
    calls.server = harness.server
    conn, t = harness.connect(50001)
    me = str(conn.conn_id).encode()
    kill = encode_command([b"CLIENT", b"KILL", b"ID", me, b"SKIPME", b"no"])
    conn.data_received(kill + encode_command([b"PING"]))
    assert cluster.asked == [("kill", (conn.conn_id, None, None, conn.conn_id))]
    # The primary asks this worker (the caller's) too: it counts it, but closes it only
    # once the answer gathered from every worker is out.
    assert calls.answer("kill", {"conn_id": conn.conn_id, "caller_id": conn.conn_id}) == 1
    assert not t.closed
    cluster.pending[0].set_result(1)
    await asyncio.sleep(0)
    assert t.take() == b":1\r\n"  # and not the PING's reply
    assert t.closed
    assert conn.close_reason == "killed by CLIENT KILL"


async def test_a_kill_of_the_caller_arriving_after_its_answer_closes_it_at_once() -> None:
    harness = Harness(workers=2)
    calls = WorkerCalls()
    calls.server = harness.server
    conn, t = harness.connect(50001)
    conn.data_received(encode_command([b"PING"]))
    assert t.take() == b"+PONG\r\n"  # idle again: no reply of its own to wait for
    assert calls.answer("kill", {"conn_id": conn.conn_id, "caller_id": conn.conn_id}) == 1
    assert t.closed
