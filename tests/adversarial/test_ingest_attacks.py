"""Attacks on a real ingest server process: what a hostile client on loopback can try on
its data, ack and control ports, and the refusals docs/security.md promises.

Each test starts its own server (tests/integration/conftest.py's start_server), makes a
bounded attack, checks the attacker's answer, and checks that an honest client is still
served: a real IngestClient upload published byte for byte, or a control PING answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash
import zstandard

from postoffice.ingest.client import IngestClient, SendResult
from postoffice.ingest.client import payload as payload_module
from postoffice.ingest.errors import ConflictError, ErrorCode
from postoffice.ingest.messages import (
    Ack,
    ErrorReply,
    Failed,
    FileId,
    Message,
    Ping,
    Pong,
    Query,
    Status,
    Subscribe,
    Subscribed,
)
from postoffice.ingest.protocol import NEED_DATA, MessageDecoder, encode, encode_chunk
from tests.integration.conftest import ServerProcess, start_server
from tests.integration.test_ingest import Ingest, send

pytestmark = pytest.mark.timeout(60)

#: How long an honest client waits for one answer before it calls the server stuck.
ANSWER_S = 2.0


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[Ingest]:
    """A running ingest server (one data port), stopped when the test ends."""
    place = Ingest(tmp_path, x=1)
    server = start_server(tmp_path, "ingest", *place.args())
    try:
        yield place
    finally:
        server.stop()


def start(tmp_path: Path, place: Ingest, *extra: str) -> ServerProcess:
    return start_server(tmp_path, "ingest", *place.args(*extra))


class Raw:
    """A blocking raw client of one binary port: frames out, the server's messages in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S * 5)
        self.decoder = MessageDecoder()

    def send(self, wire: bytes) -> None:
        self.sock.sendall(wire)

    def next(self) -> tuple[int, Message]:
        while (event := self.decoder.next_event()) is NEED_DATA:
            block = self.sock.recv(65536)
            assert block, "the server closed the connection"
            self.decoder.feed(block)
        return event

    def close(self) -> None:
        self.sock.close()


def honest_upload(place: Ingest, name: str, size: int = 300_000) -> None:
    """An honest client uploads a file with the real client: it must be published whole."""
    source = place.tmp / name
    source.write_bytes(os.urandom(size))
    asyncio.run(send(place, source, chunk_size=64 * 1024, timeout_s=20.0))
    assert (place.files / name).read_bytes() == source.read_bytes()


def hidden_files(place: Ingest) -> list[str]:
    return sorted(p.name for p in place.files.iterdir() if p.name.startswith("."))


# -- the control port -----------------------------------------------------------------------


def test_control_port_answers_others_while_huge_multibulk_headers_arrive(
    ingest: Ingest,
) -> None:
    """`*2147483647\\r\\n` announces two billion arguments; a parser that makes room for
    them first stalls the process. Other control clients must go on being answered."""
    stop = threading.Event()
    sent = 0
    refusals: list[bytes] = []

    def attack() -> None:
        nonlocal sent
        deadline = time.monotonic() + 3.0
        while not stop.is_set() and time.monotonic() < deadline and sent < 200:
            try:
                with socket.create_connection(
                    ("127.0.0.1", ingest.sys_base + 2), timeout=ANSWER_S
                ) as attacker:
                    attacker.sendall(b"*2147483647\r\n")
                    sent += 1
                    refusals.append(attacker.recv(4096))
            except OSError:
                continue  # a stalled server: the honest client's check says so

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        with socket.create_connection(("127.0.0.1", ingest.sys_base + 2), timeout=5) as honest:
            honest.settimeout(ANSWER_S)
            for _ in range(20):
                honest.sendall(b"PING\r\n")
                try:
                    assert honest.recv(64) == b"+PONG\r\n"
                except TimeoutError:
                    pytest.fail(f"PING unanswered for {ANSWER_S} s during the attack")
                time.sleep(0.05)
    finally:
        stop.set()
        attacker.join(timeout=10)
    assert sent > 0
    assert refusals
    assert all(r.startswith(b"-ERR Protocol error") for r in refusals), refusals


# -- decompression bombs --------------------------------------------------------------------


def _bomb(output_bytes: int) -> bytes:
    """Zeros compressed at about 30000:1, streamed so the output never exists here."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(output_bytes // len(zeros))]
    return b"".join([*parts, compressor.flush()])


def test_zstd_bombs_fail_at_once_and_leave_no_output(ingest: Ingest) -> None:
    """A 2 GiB bomb of about 70 KB, as one chunk and as many: refused with ASSEMBLY well
    before the size limit (the ratio), its partial output removed at once."""
    bomb = _bomb(2 * 1024**3)
    assert len(bomb) < 100_000
    data = Raw(ingest.data_base)
    acks = Raw(ingest.sys_base + 3)
    try:
        many = FileId(os.urandom(16))
        acks.send(encode(Subscribe(file_ids=(many,)), 1))
        assert isinstance(acks.next()[1], Subscribed)
        began = time.monotonic()
        one = FileId(os.urandom(16))
        data.send(
            encode_chunk(
                file_id=one,
                index=0,
                total=1,
                size=len(bomb),
                name="bomb1",
                payload_digest=xxhash.xxh3_128_digest(bomb),
                data=bomb,
                request_id=1,
            )
        )
        request_id, reply = data.next()
        assert request_id == 1
        assert isinstance(reply, ErrorReply)
        assert reply.code is ErrorCode.ASSEMBLY
        assert "exceeds ratio limit 100" in reply.message
        step = 8 * 1024
        pieces = [bomb[i : i + step] for i in range(0, len(bomb), step)]
        for index, piece in enumerate(pieces):
            data.send(
                encode_chunk(
                    file_id=many,
                    index=index,
                    total=len(pieces),
                    size=len(bomb),
                    name="bomb2",
                    payload_digest=xxhash.xxh3_128_digest(bomb),
                    data=piece,
                    request_id=10 + index,
                )
            )
        while True:
            _, event = acks.next()
            if isinstance(event, Failed):
                break
        assert event.code is ErrorCode.ASSEMBLY
        assert "exceeds ratio limit 100" in event.message
        assert time.monotonic() - began < 10
    finally:
        data.close()
        acks.close()
    assert not (ingest.files / "bomb1").exists()
    assert not (ingest.files / "bomb2").exists()
    assert hidden_files(ingest) == []
    honest_upload(ingest, "after-the-bombs.bin")


# -- two contents under one file id -----------------------------------------------------------


def test_two_clients_racing_with_one_file_id_publish_exactly_one_content(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real clients upload different files under the same file id (forced, as a buggy
    or hostile client would): in every round one of them gets CONFLICT and the file
    published is the other's, byte for byte. The rounds: the second client starts once
    the first has a chunk acknowledged (so its pipelined chunks land on indexes the first
    has not sent yet), or both start at once; many chunks, or one."""
    rounds = [("staggered", 400_000), ("staggered", 400_000), ("at once", 400_000)]
    rounds.append(("at once", 3_000))
    for number, (start, size) in enumerate(rounds):
        file_id = FileId(os.urandom(16))
        monkeypatch.setattr(payload_module, "derive_file_id", lambda *_, fid=file_id, **__: fid)
        name = f"contested-{number}.bin"
        sources = []
        for side in ("a", "b"):
            source = ingest.tmp / side / name
            source.parent.mkdir(exist_ok=True)
            source.write_bytes(os.urandom(size))
            sources.append(source)

        async def race(sources: list[Path], staggered: bool) -> list[object]:
            first_acked = asyncio.Event()
            clients = [
                IngestClient(
                    "127.0.0.1",
                    ingest.sys_base,
                    chunk_size=16 * 1024,
                    parallel=1 if side == "a" else 4,
                    timeout_s=20.0,
                    work_dir=ingest.tmp / f"work-{side}",
                )
                for side in ("a", "b")
            ]

            async def second(client: IngestClient) -> SendResult:
                if staggered:
                    async with asyncio.timeout(20):
                        await first_acked.wait()
                return await client.send(sources[1])

            async with clients[0] as a, clients[1] as b:
                return list(
                    await asyncio.gather(
                        a.send(sources[0], progress=lambda *_: first_acked.set()),
                        second(b),
                        return_exceptions=True,
                    )
                )

        results = asyncio.run(race(sources, start == "staggered"))
        won = [i for i, r in enumerate(results) if isinstance(r, SendResult)]
        assert len(won) == 1, (start, size, results)
        lost = results[1 - won[0]]
        assert isinstance(lost, ConflictError), lost
        published = (ingest.files / name).read_bytes()
        assert xxhash.xxh3_128_digest(published) == xxhash.xxh3_128_digest(
            sources[won[0]].read_bytes()
        )
    monkeypatch.undo()
    honest_upload(ingest, "after-the-race.bin")


# -- huge totals, a QUERY flood, names at the limit ---------------------------------------------


def test_a_query_flood_on_a_huge_sparse_upload_does_not_stall_the_server(ingest: Ingest) -> None:
    """A CHUNK with total 2**32-1 is OUT_OF_RANGE; one with total 2**24 (the limit, its
    chunks of the minimum length) is taken, and then a flood of QUERY for it: each STATUS
    costs what was committed, not a walk over 2**24 indexes, so another client's PING is
    answered all along."""
    file_id = FileId(os.urandom(16))
    length = 16 * 1024  # the default minimum chunk length of an upload past 16 chunks

    def chunk(total: int, index: int, request_id: int) -> bytes:
        return encode_chunk(
            file_id=file_id,
            index=index,
            total=total,
            size=total * length,
            name="huge.bin",
            payload_digest=bytes(16),
            data=b"x" * length,
            request_id=request_id,
        )

    attacker = Raw(ingest.data_base)
    honest = Raw(ingest.data_base)
    try:
        attacker.send(chunk(2**32 - 1, 5, 1))
        refused = attacker.next()
        assert refused[0] == 1
        assert isinstance(refused[1], ErrorReply)
        assert refused[1].code is ErrorCode.OUT_OF_RANGE
        attacker.send(chunk(2**24, 5, 2))
        assert isinstance(attacker.next()[1], Ack)
        queries = 200
        attacker.send(b"".join(encode(Query(file_id=file_id), 10 + n) for n in range(queries)))
        honest.sock.settimeout(ANSWER_S)
        for n in range(5):
            honest.send(encode(Ping(), 100 + n))
            try:
                assert honest.next() == (100 + n, Pong())
            except TimeoutError:
                pytest.fail(f"PING unanswered for {ANSWER_S} s during the QUERY flood")
        for _ in range(queries):
            _, status = attacker.next()
            assert isinstance(status, Status)
            assert status.missing == ((0, 4), (6, 2**24 - 1))
    finally:
        attacker.close()
        honest.close()


def test_names_at_the_limit_are_published_and_one_byte_more_is_refused(ingest: Ingest) -> None:
    """255 bytes of UTF-8 (three-byte characters, so the staging name is cut on a
    character boundary) is published; 256 is BAD_NAME; the server goes on."""
    content = zstandard.ZstdCompressor().compress(b"a name at the limit\n")
    longest = "\u6587" * 85  # 255 bytes
    data = Raw(ingest.data_base)
    try:
        for request_id, name in ((1, longest), (2, longest + "a")):
            data.send(
                encode_chunk(
                    file_id=FileId(os.urandom(16)),
                    index=0,
                    total=1,
                    size=len(content),
                    name=name,
                    payload_digest=xxhash.xxh3_128_digest(content),
                    data=content,
                    request_id=request_id,
                )
            )
        replies = dict(data.next() for _ in range(2))
    finally:
        data.close()
    assert isinstance(replies[1], Ack)
    assert replies[1].complete
    assert isinstance(replies[2], ErrorReply)
    assert replies[2].code is ErrorCode.BAD_NAME
    assert (ingest.files / longest).read_bytes() == b"a name at the limit\n"
    assert hidden_files(ingest) == []
    honest_upload(ingest, "after-the-names.bin")


# -- the ack port -----------------------------------------------------------------------------


def test_ack_port_bounds_subscriptions_and_a_client_that_never_reads(ingest: Ingest) -> None:
    """One connection may watch 65,536 file ids: the SUBSCRIBE past that is TOO_LARGE and
    the connection goes on. A client that sends PINGs and never reads the PONGs is slowed
    by TCP (the server stops reading it), and an honest upload goes through meanwhile."""
    greedy = Raw(ingest.sys_base + 3)
    silent = socket.create_connection(("127.0.0.1", ingest.sys_base + 3), timeout=ANSWER_S)
    try:
        batches = [tuple(FileId(os.urandom(16)) for _ in range(1024)) for _ in range(65)]
        greedy.send(
            b"".join(encode(Subscribe(file_ids=ids), n + 1) for n, ids in enumerate(batches))
        )
        replies = [greedy.next() for _ in batches]
        assert all(isinstance(message, Subscribed) for _, message in replies[:64])
        request_id, refused = replies[64]
        assert request_id == 65
        assert isinstance(refused, ErrorReply)
        assert refused.code is ErrorCode.TOO_LARGE
        assert refused.message == (
            "subscriptions of 66560 file ids on one connection exceed limit 65536"
        )
        greedy.send(encode(Ping(), 99))
        assert greedy.next() == (99, Pong())

        pings = encode(Ping(), 1) * 4096  # 96 KiB a write
        written = 0
        silent.setblocking(False)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and written < 64 * 1024 * 1024:
            try:
                written += silent.send(pings)
            except BlockingIOError:
                break  # the server stopped reading us: TCP holds the rest back
        assert written < 64 * 1024 * 1024
        honest_upload(ingest, "while-nobody-reads.bin")
    finally:
        greedy.close()
        silent.close()


# -- uploads in progress, tiny chunks, slow frames, failed ids --------------------------------


def test_uploads_in_progress_and_tiny_chunks_are_bounded(tmp_path: Path) -> None:
    """Each upload in progress costs a directory and two files, each chunk a file: an
    attacker opening uploads past --max-uploads gets BUSY, one cutting an upload into
    one-byte chunks gets OUT_OF_RANGE, and neither leaves more on disk than the limits;
    a one-chunk upload and the control port are still served."""
    place = Ingest(tmp_path, x=1)
    server = start(tmp_path, place, "--max-uploads", "20")
    attacker = Raw(place.data_base)
    # The first half of a real zstd payload: each upload waits for its second chunk.
    payload = zstandard.ZstdCompressor(level=1).compress(os.urandom(200))
    try:
        wire = b"".join(
            encode_chunk(
                file_id=FileId(os.urandom(16)),
                index=0,
                total=2,
                size=len(payload),
                name=f"open{n}.bin",
                payload_digest=xxhash.xxh3_128_digest(payload),
                data=payload[:100],
                request_id=n + 1,
            )
            for n in range(40)
        )
        attacker.send(wire)
        replies = dict(attacker.next() for _ in range(40))
        acked = [r for r in replies.values() if isinstance(r, Ack)]
        busy = [r for r in replies.values() if isinstance(r, ErrorReply)]
        assert len(acked) == 20
        assert len(busy) == 20
        assert all(r.code is ErrorCode.BUSY for r in busy)
        assert all(r.message.endswith("20 uploads in progress, limit 20") for r in busy)
        patches = place.data_dir / "ingest" / "patches"
        assert len(list(patches.iterdir())) == 20
        # Tiny chunks: OUT_OF_RANGE from the header, nothing stored.
        with place.control() as control:
            control.config_set("max-uploads", 21)
        tiny = FileId(os.urandom(16))
        attacker.send(
            b"".join(
                encode_chunk(
                    file_id=tiny,
                    index=n,
                    total=2**24,
                    size=2**40,
                    name="tiny.bin",
                    payload_digest=bytes(16),
                    data=b"y",
                    request_id=100 + n,
                )
                for n in range(200)
            )
        )
        refused = [attacker.next()[1] for _ in range(200)]
        assert all(isinstance(r, ErrorReply) and r.code is ErrorCode.OUT_OF_RANGE for r in refused)
        assert "below the minimum 16384" in refused[0].message  # type: ignore[union-attr]
        assert len(list(patches.iterdir())) == 20
        # Others are served: a one-chunk upload, and the control port.
        honest_upload(place, "one-chunk.bin", size=20_000)
        with place.control() as control:
            assert control.ping()
            assert control.config_get("max-uploads") == {"max-uploads": "21"}
    finally:
        attacker.close()
        server.stop()


def test_a_slowloris_data_connection_is_closed_while_an_honest_upload_completes(
    tmp_path: Path,
) -> None:
    """Connections that announce a chunk and trickle its bytes held their slots and their
    partial frames for ever; with --request-timeout 1 each gets ERROR and is closed, and
    an honest upload goes through meanwhile."""
    place = Ingest(tmp_path, x=1)
    server = start(tmp_path, place, "--request-timeout", "1")
    frame = encode_chunk(
        file_id=FileId(os.urandom(16)),
        index=0,
        total=1,
        size=1_000_000,
        name="slow.bin",
        payload_digest=bytes(16),
        data=bytes(1_000_000),
        request_id=7,
    )
    slow = [Raw(place.data_base) for _ in range(5)]
    closed_after: list[float] = []
    try:
        began = time.monotonic()
        for raw in slow:
            raw.send(frame[:200])
        done = threading.Event()

        def trickle() -> None:
            offset = 200
            while not done.is_set() and time.monotonic() - began < 10 and offset < 400:
                for raw in slow:
                    with contextlib.suppress(OSError):
                        raw.send(frame[offset : offset + 1])
                offset += 1
                time.sleep(0.1)

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            honest_upload(place, "beside-the-slow-ones.bin")
            for raw in slow:
                raw.sock.settimeout(10)
                request_id, reply = raw.next()
                assert request_id == 0
                assert isinstance(reply, ErrorReply)
                assert reply.message == "request not received whole within 1 s"
                assert raw.sock.recv(1) == b""  # closed
                closed_after.append(time.monotonic() - began)
        finally:
            done.set()
            trickler.join(timeout=10)
    finally:
        for raw in slow:
            raw.close()
        server.stop()
    assert max(closed_after) < 8


def test_garbage_under_a_known_file_id_does_not_lock_its_owner_out(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker who knows a file id sends garbage under it: the upload fails, and the
    server refused that id until a restart, so its owner could never upload. Now the
    owner's real client (another payload digest) publishes its file."""
    file_id = FileId(os.urandom(16))
    data = Raw(ingest.data_base)
    try:
        for request_id, total in ((1, 1), (2, 1)):
            data.send(
                encode_chunk(
                    file_id=file_id,
                    index=0,
                    total=total,
                    size=4,
                    name="victim.bin",
                    payload_digest=xxhash.xxh3_128_digest(b"junk"),
                    data=b"junk",
                    request_id=request_id,
                )
            )
            _, reply = data.next()
            assert isinstance(reply, ErrorReply)
            assert reply.code is ErrorCode.ASSEMBLY
        data.send(encode(Query(file_id=file_id), 3))
        _, status = data.next()
        assert isinstance(status, Status)
        assert status.state.name == "FAILED"
    finally:
        data.close()
    monkeypatch.setattr(payload_module, "derive_file_id", lambda *_, **__: file_id)
    honest_upload(ingest, "victim.bin")
    monkeypatch.undo()


def test_a_one_chunk_upload_is_published_before_its_ack_via_part(tmp_path: Path) -> None:
    """With --via-part, a one-chunk upload was acknowledged COMPLETE once stored, before
    its file existed: a client reading files/<name> on the ACK found nothing."""
    place = Ingest(tmp_path, x=1)
    server = start(tmp_path, place, "--via-part")
    data = Raw(place.data_base)
    try:
        for n in range(20):
            content = os.urandom(2000)
            payload = zstandard.ZstdCompressor().compress(content)
            data.send(
                encode_chunk(
                    file_id=FileId(os.urandom(16)),
                    index=0,
                    total=1,
                    size=len(payload),
                    name=f"quick{n}.bin",
                    payload_digest=xxhash.xxh3_128_digest(payload),
                    data=payload,
                    request_id=n + 1,
                )
            )
            _, ack = data.next()
            assert isinstance(ack, Ack)
            assert ack.complete
            assert (place.files / f"quick{n}.bin").read_bytes() == content
    finally:
        data.close()
        server.stop()


def test_ack_connections_watching_the_most_are_dropped_past_the_server_limit(
    ingest: Ingest,
) -> None:
    """Each watched file id costs the server about 370 bytes, and one connection may watch
    65,536: a thousand such connections would have cost 24 GB. The server watches at most
    262,144 in all; an honest client's SUBSCRIBE past that drops the connection watching
    the most, and its upload goes through."""
    greedy = [Raw(ingest.sys_base + 3) for _ in range(4)]
    try:
        for raw in greedy:
            batches = [tuple(FileId(os.urandom(16)) for _ in range(1024)) for _ in range(64)]
            raw.send(b"".join(encode(Subscribe(file_ids=b), n + 1) for n, b in enumerate(batches)))
            assert all(isinstance(raw.next()[1], Subscribed) for _ in batches)
        honest_upload(ingest, "past-the-watchers.bin")
        dropped = 0
        for raw in greedy:
            raw.sock.settimeout(0.5)
            try:
                dropped += raw.sock.recv(65536) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                dropped += 1
        assert dropped == 1
    finally:
        for raw in greedy:
            raw.close()
