"""The ingest server as a real process: uploads with the real client, hostile input, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import xxhash
import zstandard

from postoffice.core.framing import encode_parts
from postoffice.ingest.client import IngestClient, SendResult
from postoffice.ingest.errors import AssemblyError, BadNameError, ErrorCode
from postoffice.ingest.messages import Ack, ErrorReply, FileId, Query, Status, UploadState
from postoffice.ingest.protocol import NEED_DATA, MessageDecoder, encode, encode_chunk
from tests.integration.conftest import ServerProcess, free_port_block
from tests.integration.rawclient import RawClient

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]


class Ingest:
    """Where one ingest server under test lives."""

    def __init__(self, tmp_path: Path, x: int = 3) -> None:
        self.tmp = tmp_path
        self.sys_base = free_port_block(4)
        self.data_base = free_port_block(8)
        # The server refuses a sys range inside the 64 ports data ports may grow to.
        while self.sys_base <= self.data_base + 63 and self.data_base <= self.sys_base + 3:
            self.data_base = free_port_block(8)
        self.x = x
        self.data_dir = tmp_path / "var"
        self.files = self.data_dir / "files"

    def args(self, *extra: str) -> list[str]:
        return [
            "--sys-base",
            str(self.sys_base),
            "--data-base",
            str(self.data_base),
            "--x",
            str(self.x),
            "--data-dir",
            str(self.data_dir),
            "--cleanup-interval",
            "3600",
            *extra,
        ]

    def client(self, **kwargs: object) -> IngestClient:
        return IngestClient(
            "127.0.0.1",
            self.sys_base,
            work_dir=self.tmp / "work",
            **kwargs,  # type: ignore[arg-type]
        )

    def control(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.sys_base + 2, socket_timeout=10, protocol=2, **kwargs)  # type: ignore[arg-type]


def make_file(path: Path, size: int, *, text: bool = False) -> Path:
    if text:
        lines = (
            f"2026-11-22T04:{i % 60:02d}:00Z INFO request id={i} path=/x/{i % 97} ok\n"
            for i in range(size // 50 + 1)
        )
        path.write_bytes("".join(lines).encode()[:size])
    else:
        path.write_bytes(os.urandom(size))
    return path


async def send(ingest: Ingest, path: Path, **kwargs: object) -> SendResult:
    async with ingest.client(**kwargs) as client:
        return await client.send(path)


def raw_chunk(
    file_id: bytes,
    index: int,
    total: int,
    data: bytes,
    *,
    name: str = "raw.bin",
    size: int | None = None,
    request_id: int = 1,
    payload: bytes | None = None,
) -> bytes:
    """A CHUNK frame of `payload` (its digest goes in the chunk; by default `data` is the
    whole payload, as in a one-chunk upload)."""
    return encode_chunk(
        file_id=FileId(file_id),
        index=index,
        total=total,
        size=size if size is not None else len(data) * total,
        name=name,
        payload_digest=xxhash.xxh3_128_digest(data if payload is None else payload),
        data=data,
        request_id=request_id,
    )


def zstd_pieces(count: int) -> tuple[list[bytes], int]:
    """A real zstd payload cut into `count` pieces, and its size: a first piece alone keeps
    a streaming assembly waiting for the next, instead of failing it as garbage would."""
    payload = zstandard.ZstdCompressor(level=1).compress(os.urandom(100 * count))
    step = -(-len(payload) // count)
    return [payload[i : i + step] for i in range(0, len(payload), step)], len(payload)


def exchange(port: int, wire: bytes, replies: int) -> list[tuple[int, object]]:
    """Send raw frames to a data port and read `replies` messages back."""
    decoder = MessageDecoder()
    got: list[tuple[int, object]] = []
    with RawClient.connect(port) as raw:
        raw.send(wire)
        while len(got) < replies:
            block = raw.recv()
            if not block:
                break
            decoder.feed(block)
            while (event := decoder.next_event()) is not NEED_DATA:
                got.append(event)
    return got


def test_round_trip_byte_for_byte(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    for name, size, text in (
        ("random.bin", 3_000_000, False),
        ("app.log", 2_000_000, True),
        ("tiny.txt", 10, True),
    ):
        source = make_file(tmp_path / name, size, text=text)
        result = asyncio.run(send(ingest, source, chunk_size=256 * 1024))
        assert (ingest.files / name).read_bytes() == source.read_bytes()
        assert result.digest == xxhash.xxh3_128_digest(source.read_bytes())
        assert result.size == size
    assert sorted(p.name for p in ingest.files.iterdir()) == ["app.log", "random.bin", "tiny.txt"]


def test_large_chunks_over_several_links_round_trip(serve: Serve, tmp_path: Path) -> None:
    # 4 MiB chunks, as the benchmark sends them: their payloads are received straight into
    # buffers of their own, and their patches written with O_DIRECT while resident.
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    source = make_file(tmp_path / "big.bin", 21 * 1024 * 1024 + 12_345)
    result = asyncio.run(send(ingest, source, chunk_size=4 * 1024 * 1024, parallel=3))
    assert (ingest.files / "big.bin").read_bytes() == source.read_bytes()
    assert result.digest == xxhash.xxh3_128_digest(source.read_bytes())


def test_existing_zst_goes_as_it_is(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    original = make_file(tmp_path / "data.csv", 500_000, text=True)
    packed = tmp_path / "data.csv.zst"
    packed.write_bytes(zstandard.ZstdCompressor(level=9).compress(original.read_bytes()))
    result = asyncio.run(send(ingest, packed, chunk_size=64 * 1024))
    assert result.name == "data.csv"
    assert (ingest.files / "data.csv").read_bytes() == original.read_bytes()


def test_out_of_order_duplicates_and_several_ports(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    original = b"".join(b"hello ingest %d\n" % i for i in range(10_000))
    payload = zstandard.ZstdCompressor().compress(original)
    pieces = [payload[i : i + 1000] for i in range(0, len(payload), 1000)]
    total = len(pieces)
    assert total >= 5
    file_id = os.urandom(16)
    ports = [ingest.data_base + i for i in range(ingest.x)]
    order = list(reversed(range(total)))
    for n, index in enumerate(order):
        wire = raw_chunk(
            file_id,
            index,
            total,
            pieces[index],
            name="hello.txt",
            size=len(payload),
            request_id=n + 1,
            payload=payload,
        )
        reply = exchange(ports[n % len(ports)], wire + wire, 2)  # every chunk twice
        assert isinstance(reply[0][1], Ack)
        assert isinstance(reply[1][1], Ack)
        assert reply[1][1].duplicate
    deadline = time.monotonic() + 20
    while not (ingest.files / "hello.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (ingest.files / "hello.txt").read_bytes() == original


def test_conflicting_bytes_and_corrupt_chunks_are_refused(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    file_id = os.urandom(16)
    port = ingest.data_base
    payload = zstandard.ZstdCompressor(level=1).compress(os.urandom(300))
    half = len(payload) // 2
    pieces = [payload[:half], payload[half:]]
    size = len(payload)
    first = exchange(port, raw_chunk(file_id, 0, 2, pieces[0], size=size, payload=payload), 1)
    assert isinstance(first[0][1], Ack)
    other_bytes = bytes([pieces[0][0] ^ 1]) + pieces[0][1:]
    other = exchange(
        port, raw_chunk(file_id, 0, 2, other_bytes, size=size, request_id=7, payload=payload), 1
    )
    assert other[0][0] == 7
    reply = other[0][1]
    assert isinstance(reply, ErrorReply)
    assert reply.code is ErrorCode.CONFLICT
    # A chunk whose bytes do not match its digest: refused, the connection stays usable.
    # Self-checked (no frame CRC), then with a frame CRC that matches the corrupt payload.
    bad = bytearray(raw_chunk(file_id, 1, 2, pieces[1], size=size, request_id=8, payload=payload))
    bad[-1] ^= 0xFF
    crc_framed = encode_parts(0x01, 0, 6, bytes(bad[24:]))
    good = raw_chunk(file_id, 1, 2, pieces[1], size=size, request_id=9, payload=payload)
    replies = exchange(port, bytes(bad) + crc_framed + good, 3)
    assert [r[0] for r in replies] == [8, 6, 9]
    for _, reply in replies[:2]:
        assert isinstance(reply, ErrorReply)
        assert reply.code is ErrorCode.CHECKSUM
    assert isinstance(replies[2][1], Ack)


def test_garbage_and_oversized_frames_do_not_stop_other_uploads(
    serve: Serve, tmp_path: Path
) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    port = ingest.data_base
    garbage = exchange(port, b"GET / HTTP/1.1\r\n\r\n", 1)
    assert isinstance(garbage[0][1], ErrorReply)
    assert garbage[0][1].code is ErrorCode.BAD_FRAME
    huge = encode_parts(0x01, 0, 1, b"")[:16] + (64 * 1024 * 1024).to_bytes(4, "big") + b"\0" * 4
    refused = exchange(port, huge, 1)
    assert isinstance(refused[0][1], ErrorReply)
    assert "exceeds limit" in refused[0][1].message
    source = make_file(tmp_path / "still.bin", 300_000)
    asyncio.run(send(ingest, source, chunk_size=64 * 1024))
    assert (ingest.files / "still.bin").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "nul\0byte", "x" * 300, " pad"])
def test_hostile_names_are_refused(serve: Serve, tmp_path: Path, name: str) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    wire = raw_chunk(os.urandom(16), 0, 1, b"x", name=name)
    reply = exchange(ingest.data_base, wire, 1)[0][1]
    assert isinstance(reply, ErrorReply)
    assert reply.code in (ErrorCode.BAD_NAME, ErrorCode.BAD_FRAME, ErrorCode.BAD_MESSAGE)
    assert not any(tmp_path.rglob("escape"))
    assert list(ingest.files.iterdir()) == []


def test_client_refuses_a_hostile_name_before_sending(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    source = make_file(tmp_path / "ok.bin", 10)

    async def go() -> None:
        async with ingest.client() as client:
            await client.send(source, name="../../etc/passwd")

    with pytest.raises(BadNameError):
        asyncio.run(go())


def test_decompression_bomb_is_refused(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args("--max-output-bytes", str(10 * 1024 * 1024)))
    bomb = tmp_path / "bomb.bin.zst"
    compressor = zstandard.ZstdCompressor(level=19)
    bomb.write_bytes(compressor.compress(b"\0" * (200 * 1024 * 1024)))
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(AssemblyError, match="exceeds limit"):
        asyncio.run(send(ingest, bomb, chunk_size=64 * 1024))
    assert list(ingest.files.iterdir()) == []


def test_many_concurrent_uploads(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    sources = [make_file(tmp_path / f"f{i}.bin", 50_000 + i * 997) for i in range(20)]

    async def go() -> list[SendResult]:
        return await asyncio.gather(*(send(ingest, s, chunk_size=16 * 1024) for s in sources))

    results = asyncio.run(go())
    assert len(results) == 20
    for source in sources:
        assert (ingest.files / source.name).read_bytes() == source.read_bytes()


def test_resume_after_the_server_is_killed(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    first = serve("ingest", *ingest.args())
    source = make_file(tmp_path / "big.bin", 4_000_000)
    payload = zstandard.ZstdCompressor(level=1).compress(source.read_bytes())
    packed = tmp_path / "big.bin.zst"
    packed.write_bytes(payload)

    # kill -9 the server once at least 4 chunks are acknowledged: every acknowledged chunk
    # must be there after the restart, so the resumed upload skips at least those.
    acked: list[int] = []

    async def interrupted() -> int:
        got_four = asyncio.Event()

        def progress(done: int, total: int) -> None:
            acked.append(done)
            if done >= 4 * 256 * 1024:
                got_four.set()

        async with ingest.client(chunk_size=256 * 1024, parallel=2) as client:
            task = asyncio.ensure_future(client.send(packed, progress=progress))
            await asyncio.wait_for(got_four.wait(), 20)
            at_kill = max(acked) // (256 * 1024)
            first.proc.send_signal(signal.SIGKILL)
            with pytest.raises(Exception):  # noqa: B017,PT011  (the client sees the server die)
                await task
        return at_kill

    acknowledged = asyncio.run(interrupted())
    first.proc.wait(10)
    # The assembly was streaming when the server died: at most a hidden staging file.
    assert [p.name for p in ingest.files.iterdir() if not p.name.startswith(".")] == []
    serve("ingest", *ingest.args())
    result = asyncio.run(send(ingest, packed, chunk_size=256 * 1024))
    assert acknowledged >= 4
    assert result.skipped_chunks >= acknowledged
    assert (ingest.files / "big.bin").read_bytes() == source.read_bytes()
    assert [p.name for p in ingest.files.iterdir()] == ["big.bin"]


def test_control_port_with_redis_py(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args("--control-token", "s3cret"))
    with pytest.raises(redis.AuthenticationError):
        ingest.control().ping()
    control = ingest.control(password="s3cret")
    assert control.ping() is True
    status = control.execute_command("STATUS")  # type: ignore[no-untyped-call]
    assert status[status.index(b"x") + 1] == 3
    file_id = os.urandom(16)
    pieces, size = zstd_pieces(3)
    exchange(ingest.data_base, raw_chunk(file_id, 0, 3, pieces[0], size=size), 1)
    uploads = control.execute_command("UPLOADS")  # type: ignore[no-untyped-call]
    assert any(file_id.hex().encode() in line for line in uploads)
    missing = control.execute_command("MISSING", file_id.hex())  # type: ignore[no-untyped-call]
    assert missing == [b"1-2"]
    assert control.execute_command("ABORT", file_id.hex()) == b"OK"  # type: ignore[no-untyped-call]
    with pytest.raises(redis.ResponseError, match="unknown upload"):
        control.execute_command("ABORT", file_id.hex())  # type: ignore[no-untyped-call]
    assert control.execute_command("CONFIG", "SET", "ttl", "120") == b"OK"  # type: ignore[no-untyped-call]
    with pytest.raises(redis.ResponseError, match="setting 'x' must be between 1 and 64, got 0"):
        control.execute_command("CONFIG", "SET", "x", "0")  # type: ignore[no-untyped-call]


def test_scale_x_up_and_down_under_load(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path, x=2)
    serve("ingest", *ingest.args())
    control = ingest.control()
    sources = [make_file(tmp_path / f"s{i}.bin", 400_000) for i in range(6)]

    async def go() -> list[SendResult]:
        uploads = [asyncio.ensure_future(send(ingest, s, chunk_size=32 * 1024)) for s in sources]
        await asyncio.sleep(0.05)
        await asyncio.to_thread(control.execute_command, "CONFIG", "SET", "x", "5")
        await asyncio.sleep(0.05)
        await asyncio.to_thread(control.execute_command, "CONFIG", "SET", "x", "1")
        return await asyncio.gather(*uploads)

    asyncio.run(go())
    for source in sources:
        assert (ingest.files / source.name).read_bytes() == source.read_bytes()
    with urllib.request.urlopen(f"http://127.0.0.1:{ingest.sys_base}/info", timeout=5) as resp:
        assert b'"x": 1' in resp.read()


def test_ttl_cleanup_with_a_short_ttl(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args("--ttl", "1", "--cleanup-interval", "0.2"))  # the last flag wins
    pieces, size = zstd_pieces(2)
    exchange(ingest.data_base, raw_chunk(os.urandom(16), 0, 2, pieces[0], size=size), 1)
    source = make_file(tmp_path / "old.bin", 1000)
    asyncio.run(send(ingest, source))
    assert (ingest.files / "old.bin").exists()
    deadline = time.monotonic() + 15
    patches = ingest.data_dir / "ingest" / "patches"
    while time.monotonic() < deadline and (
        (ingest.files / "old.bin").exists() or any(patches.iterdir())
    ):
        time.sleep(0.1)
    assert not (ingest.files / "old.bin").exists()
    assert not any(patches.iterdir())


def test_sigterm_drains_and_exits_zero(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    server = serve("ingest", *ingest.args())
    source = make_file(tmp_path / "last.bin", 200_000)
    asyncio.run(send(ingest, source))
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert (ingest.files / "last.bin").read_bytes() == source.read_bytes()


def test_resume_after_the_client_is_killed(serve: Serve, tmp_path: Path) -> None:
    from tests.integration.conftest import POSTOFFICE, env_without_postoffice

    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    source = make_file(tmp_path / "resume.bin", 6_000_000)
    env = env_without_postoffice() | {"TMPDIR": str(tmp_path / "work")}
    (tmp_path / "work").mkdir()
    patches = ingest.data_dir / "ingest" / "patches"
    client = subprocess.Popen(
        [
            *POSTOFFICE,
            "ingest",
            "send",
            str(source),
            "--sys-base",
            str(ingest.sys_base),
            "--chunk-size",
            "65536",
            "--parallel",
            "1",
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while len(list(patches.rglob("patch_*.bin"))) < 10 and time.monotonic() < deadline:
        assert client.poll() is None, "the client finished before it could be killed"
        time.sleep(0.01)
    client.kill()
    client.wait(10)
    # Chunks the server was storing when the client died still commit: count the
    # committed ones (ids.list lines) once that count has settled.
    stored, settled = -1, time.monotonic()
    while time.monotonic() - settled < 0.5 and time.monotonic() < deadline + 10:
        count = sum(len(f.read_bytes().splitlines()) for f in patches.rglob("ids.list"))
        if count != stored:
            stored, settled = count, time.monotonic()
        time.sleep(0.05)
    assert stored >= 10
    result = asyncio.run(send(ingest, source, chunk_size=65536, parallel=2))
    assert result.skipped_chunks >= stored
    assert result.sent_chunks + result.skipped_chunks == result.chunks
    assert (ingest.files / "resume.bin").read_bytes() == source.read_bytes()


def test_telemetry_streams_events(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    serve("ingest", *ingest.args())
    with RawClient.connect(ingest.sys_base + 1) as raw:
        raw.send(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        head = raw.read_until(b'"hello"')
        assert head.startswith(b"HTTP/1.1 200")
        assert b"application/x-ndjson" in head
        source = make_file(tmp_path / "watched.bin", 100_000)
        asyncio.run(send(ingest, source, chunk_size=32 * 1024))
        seen = head + raw.read_until(b'"published"')
    for event in (b'"chunk_stored"', b'"payload_complete"', b'"published"'):
        assert event in seen
    assert b'"name": "watched.bin"' in seen
    with urllib.request.urlopen(f"http://127.0.0.1:{ingest.sys_base + 1}/metrics") as resp:
        metrics = resp.read().decode()
    assert "postoffice_ingest_published_total 1.0" in metrics


def test_sigterm_mid_upload_drains_then_resume_completes(serve: Serve, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path)
    server = serve("ingest", *ingest.args())
    source = make_file(tmp_path / "drain.bin", 8_000_000)
    patches = ingest.data_dir / "ingest" / "patches"

    async def interrupted() -> None:
        async with ingest.client(chunk_size=65536, parallel=4) as client:
            task = asyncio.ensure_future(client.send(source))
            deadline = time.monotonic() + 30
            while len(list(patches.rglob("patch_*.bin"))) < 8 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(Exception):  # noqa: B017,PT011  (the server went away)
                await task

    asyncio.run(interrupted())
    assert server.proc.wait(30) == 0
    assert "ingest stopped" in server.log()
    assert not (ingest.files / "drain.bin").exists()  # never a partial file
    serve("ingest", *ingest.args())
    result = asyncio.run(send(ingest, source, chunk_size=65536))
    assert result.skipped_chunks >= 8
    assert (ingest.files / "drain.bin").read_bytes() == source.read_bytes()


def test_kill_9_among_one_chunk_uploads_loses_no_acknowledged_file(
    serve: Serve, tmp_path: Path
) -> None:
    """One-chunk uploads are published before their ACK: each send that returned must
    find its file whole after a kill -9, and no visible file may be partial."""
    ingest = Ingest(tmp_path)
    first = serve("ingest", *ingest.args())
    sources = [make_file(tmp_path / f"s{i:03d}.log", 3000 + i, text=True) for i in range(300)]

    async def interrupted() -> list[Path]:
        done: list[Path] = []
        async with ingest.client(parallel=4) as client:

            async def one(path: Path) -> None:
                await client.send(path)
                done.append(path)
                if len(done) == 40:
                    first.proc.send_signal(signal.SIGKILL)

            await asyncio.gather(*(one(p) for p in sources), return_exceptions=True)
        return done

    acknowledged = asyncio.run(interrupted())
    first.proc.wait(10)
    assert 40 <= len(acknowledged) < len(sources)
    visible = {p.name for p in ingest.files.iterdir() if not p.name.startswith(".")}
    for name in visible:
        assert (ingest.files / name).read_bytes() == (tmp_path / name).read_bytes()
    assert {p.name for p in acknowledged} <= visible
    # After the restart, re-sending everything publishes the rest; the acknowledged ones
    # are known as published and not sent again.
    serve("ingest", *ingest.args())

    async def resend() -> list[SendResult]:
        async with ingest.client(parallel=4) as client:
            return list(await asyncio.gather(*(client.send(p) for p in sources)))

    results = asyncio.run(resend())
    by_name = {r.name: r for r in results}
    for path in acknowledged:
        assert by_name[path.name].sent_chunks == 0
    assert sorted(p.name for p in ingest.files.iterdir()) == sorted(p.name for p in sources)
    for path in sources:
        assert (ingest.files / path.name).read_bytes() == path.read_bytes()


def test_bad_one_chunk_uploads_fail_alone_among_concurrent_good_ones(
    serve: Serve, tmp_path: Path
) -> None:
    """One-chunk uploads are published in batches: a corrupt chunk, a payload that is not
    zstd, a bomb and a large output sent among good uploads each get their own answer, the
    good ones are published, and all of them survive a kill -9."""
    ingest = Ingest(tmp_path)
    limit = 16 * 1024 * 1024
    server = serve("ingest", *ingest.args("--max-output-bytes", str(limit)))
    sources = [make_file(tmp_path / f"g{i:02d}.log", 4096, text=True) for i in range(60)]
    compressor = zstandard.ZstdCompressor(level=3)
    corrupt = bytearray(
        raw_chunk(os.urandom(16), 0, 1, compressor.compress(b"x" * 500), request_id=1)
    )
    corrupt[-1] ^= 0xFF
    not_zstd = raw_chunk(os.urandom(16), 0, 1, b"PK\x03\x04 not zstd", name="zip.bin", request_id=2)
    bomb = raw_chunk(
        os.urandom(16),
        0,
        1,
        compressor.compress(b"\0" * (limit * 4)),
        name="bomb.bin",
        request_id=3,
    )
    large_content = b"\0" * (8 * 1024 * 1024)
    large_id = os.urandom(16)
    large = raw_chunk(
        large_id, 0, 1, compressor.compress(large_content), name="large.bin", request_id=4
    )

    async def go() -> tuple[list[SendResult], list[tuple[int, object]]]:
        async with ingest.client(parallel=4) as client:
            sends = asyncio.gather(*(client.send(p) for p in sources))
            raw = asyncio.to_thread(
                exchange, ingest.data_base, bytes(corrupt) + not_zstd + bomb + large, 4
            )
            return await asyncio.gather(sends, raw)

    results, replies = asyncio.run(go())
    by_id = dict(replies)
    assert isinstance(by_id[1], ErrorReply)
    assert by_id[1].code is ErrorCode.CHECKSUM
    assert isinstance(by_id[2], ErrorReply)
    assert by_id[2].code is ErrorCode.ASSEMBLY
    assert "not a zstd frame" in by_id[2].message
    assert isinstance(by_id[3], ErrorReply)
    assert by_id[3].code is ErrorCode.ASSEMBLY
    assert f"exceeds limit {limit}" in by_id[3].message
    assert isinstance(by_id[4], Ack)
    assert by_id[4].complete
    assert len(results) == len(sources)
    expected = {p.name: p.read_bytes() for p in sources} | {"large.bin": large_content}
    visible = sorted(p.name for p in ingest.files.iterdir())
    assert visible == sorted(expected)
    for name, content in expected.items():
        assert (ingest.files / name).read_bytes() == content
    # Every acknowledged publish is durable: after a kill -9 the restarted server knows
    # them all and re-sending one transfers nothing.
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    serve("ingest", *ingest.args("--max-output-bytes", str(limit)))

    async def again() -> list[SendResult]:
        async with ingest.client(parallel=2) as client:
            return list(await asyncio.gather(*(client.send(p) for p in sources[:10])))

    assert all(r.sent_chunks == 0 for r in asyncio.run(again()))
    assert sorted(p.name for p in ingest.files.iterdir()) == sorted(expected)
    status = exchange(ingest.data_base, encode(Query(file_id=FileId(large_id)), 5), 1)[0][1]
    assert isinstance(status, Status)
    assert status.state is UploadState.PUBLISHED


def test_a_framed_upload_round_trips_and_resumes_after_a_kill_9(
    serve: Serve, tmp_path: Path
) -> None:
    """The client compresses a plain file one frame per chunk (FRAMED); the server is
    killed mid-upload, and the resumed upload publishes the file whole."""
    ingest = Ingest(tmp_path)
    first = serve("ingest", *ingest.args("--min-chunk-size", "0"))
    source = make_file(tmp_path / "app.log", 6_000_000)  # incompressible: 46 frames
    chunk = 128 * 1024
    acked: list[int] = []

    async def interrupted() -> None:
        got_some = asyncio.Event()

        def progress(done: int, total: int) -> None:
            acked.append(done)
            if done >= total // 3:
                got_some.set()

        async with ingest.client(chunk_size=chunk, parallel=2) as client:
            task = asyncio.ensure_future(client.send(source, progress=progress))
            await asyncio.wait_for(got_some.wait(), 20)
            first.proc.send_signal(signal.SIGKILL)
            with pytest.raises(Exception):  # noqa: B017,PT011  (the client sees the server die)
                await task

    asyncio.run(interrupted())
    first.proc.wait(10)
    assert [p.name for p in ingest.files.iterdir() if not p.name.startswith(".")] == []
    serve("ingest", *ingest.args("--min-chunk-size", "0"))
    result = asyncio.run(send(ingest, source, chunk_size=chunk))
    assert result.skipped_chunks > 0
    assert result.chunks == -(-6_000_000 // chunk)  # one frame per 128 KiB of content
    assert (ingest.files / "app.log").read_bytes() == source.read_bytes()
    assert [p.name for p in ingest.files.iterdir()] == ["app.log"]
