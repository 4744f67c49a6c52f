"""The cluster benchmark's tus 1.0 load client: aiohttp on asyncio, many uploads in flight.

Small files go as creation-with-upload (one POST carrying the body); a large file is
created, then sent with PATCH. The failover run kills the instance mid-PATCH and resumes.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Final, final
from urllib.parse import urlsplit

import aiohttp
from benchkit import BenchError
from common import MIB, RUN_TIMEOUT_S

TUS_VERSION: Final = "1.0.0"
OCTETS: Final = "application/offset+octet-stream"
READ_BYTES: Final = MIB  # one read of the file into a PATCH body
#: A resuming client asks for the offset again after a 409 (tus-js-client retries so, 4
#: times by default); past this many in a row it gives up.
MAX_CONFLICTS: Final = 5


class OffsetConflict(BenchError):
    """The peer answered 409: the upload's offset is not the one the PATCH was sent at."""


def _metadata(name: str) -> str:
    return "filename " + base64.b64encode(name.encode()).decode()


def _upload_url(creation_url: str, location: str) -> str:
    """The upload's absolute URL on the instance at `creation_url` (the peer answers a
    relative Location, so any instance can be asked for it)."""
    parts = urlsplit(creation_url)
    return f"{parts.scheme}://{parts.netloc}{location}"


def upload_key(location: str) -> str:
    """The upload id, which @tus/s3-store also uses as the object's key."""
    return location.rstrip("/").rsplit("/", 1)[1]


def session(connections: int) -> aiohttp.ClientSession:
    """A session with up to `connections` connections per instance, bounded timeouts."""
    timeout = aiohttp.ClientTimeout(total=RUN_TIMEOUT_S, sock_connect=10.0)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=connections)
    return aiohttp.ClientSession(
        timeout=timeout, connector=connector, headers={"Tus-Resumable": TUS_VERSION}
    )


async def _expect(reply: aiohttp.ClientResponse, status: int, what: str) -> None:
    if reply.status != status:
        body = (await reply.text())[:300]
        error = OffsetConflict if reply.status == 409 else BenchError
        raise error(f"{what}: expected HTTP {status}, got {reply.status}: {body!r}")


async def create_with_upload(
    client: aiohttp.ClientSession, creation_url: str, name: str, body: bytes
) -> str:
    """POST the whole file (tus creation-with-upload); its Location once it is all there.

    Raises BenchError when the peer does not take all of it.
    """
    headers = {
        "Upload-Length": str(len(body)),
        "Upload-Metadata": _metadata(name),
        "Content-Type": OCTETS,
    }
    async with client.post(creation_url, data=body, headers=headers) as reply:
        await _expect(reply, 201, f"creating {name}")
        offset = int(reply.headers.get("Upload-Offset", "-1"))
        if offset != len(body):
            raise BenchError(f"creating {name}: offset {offset} after {len(body)} bytes")
        return reply.headers["Location"]


async def upload_many(
    creation_urls: Sequence[str], files: Sequence[tuple[str, bytes]], in_flight: int
) -> list[str]:
    """Every file by creation-with-upload, `in_flight` at a time, file i to instance
    i mod len(creation_urls); their Locations, in order."""
    locations = [""] * len(files)
    next_index = 0

    async def worker(client: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < len(files):
            index = next_index
            next_index += 1
            name, body = files[index]
            url = creation_urls[index % len(creation_urls)]
            locations[index] = await create_with_upload(client, url, name, body)

    async with session(in_flight) as client:
        await asyncio.gather(*(worker(client) for _ in range(in_flight)))
    return locations


async def create(client: aiohttp.ClientSession, creation_url: str, name: str, size: int) -> str:
    """POST an empty upload of `size` bytes; its Location."""
    headers = {"Upload-Length": str(size), "Upload-Metadata": _metadata(name)}
    async with client.post(creation_url, headers=headers) as reply:
        await _expect(reply, 201, f"creating {name}")
        return reply.headers["Location"]


async def head_offset(client: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """The HTTP status of a HEAD and the Upload-Offset it gave (-1 without one)."""
    async with client.head(url) as reply:
        return reply.status, int(reply.headers.get("Upload-Offset", "-1"))


@final
class Progress:
    """Bytes a PATCH body has handed to the connection, and an event once they pass a mark."""

    __slots__ = ("mark", "reached", "sent")

    def __init__(self, mark: int | None = None) -> None:
        self.sent = 0
        self.mark = mark
        self.reached = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Progress sent={self.sent} mark={self.mark} reached={self.reached.is_set()}>"

    def add(self, count: int) -> None:
        self.sent += count
        if self.mark is not None and self.sent >= self.mark:
            self.reached.set()


async def _file_body(
    path: Path, offset: int, length: int, progress: Progress
) -> AsyncIterator[bytes]:
    """`length` bytes of the file from `offset`, counted into `progress` as they go out."""
    with path.open("rb") as source:
        source.seek(offset)
        left = length
        while left > 0:
            block = source.read(min(READ_BYTES, left))
            if not block:
                raise BenchError(f"{path} ended {left} bytes early")
            left -= len(block)
            progress.add(len(block))
            yield block


async def patch(
    client: aiohttp.ClientSession,
    url: str,
    path: Path,
    offset: int,
    length: int,
    progress: Progress | None = None,
) -> int:
    """PATCH `length` bytes of the file from `offset`; the offset the peer answers.

    Raises BenchError on any status but 204, aiohttp.ClientError when the connection breaks.
    """
    headers = {
        "Upload-Offset": str(offset),
        "Content-Type": OCTETS,
        "Content-Length": str(length),
    }
    body = _file_body(path, offset, length, progress if progress is not None else Progress())
    async with client.patch(url, data=body, headers=headers) as reply:
        await _expect(reply, 204, f"PATCH at {offset}")
        return int(reply.headers["Upload-Offset"])


async def upload_large(
    creation_url: str, path: Path, size: int, name: str, patch_bytes: int
) -> str:
    """Create the upload of the file (`size` bytes) and PATCH it in pieces of `patch_bytes`
    (the last shorter); its Location."""
    async with session(1) as client:
        location = await create(client, creation_url, name, size)
        url = _upload_url(creation_url, location)
        offset = 0
        while offset < size:
            answered = await patch(client, url, path, offset, min(patch_bytes, size - offset))
            if answered <= offset:
                raise BenchError(f"{name}: PATCH at {offset} answered offset {answered}")
            offset = answered
        return location


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Failover:
    """What a tus client saw when the instance holding its upload died mid-PATCH."""

    location: str
    size: int
    sent_before_kill: int  # bytes the client had handed to its socket when the kill came
    first_patch_error: str  # how the PATCH to the killed instance ended
    survivor_head_status: int
    survivor_offset: int  # -1: the survivor gave none
    served: bool  # the survivor took the rest of the upload
    kill_to_head_s: float
    kill_to_first_patch_s: float | None  # until the survivor accepted its first PATCH
    kill_to_done_s: float | None
    refused: str  # why the survivor refused it ("" when it served it)
    #: 409s the survivor answered, each followed by a HEAD and a PATCH from its new offset
    #: (the killed instance's last part can land in S3 after the first HEAD).
    offset_conflicts: int


async def failover(
    first_url: str,
    survivor_url: str,
    path: Path,
    size: int,
    name: str,
    kill: Callable[[], None],
    resume_patch_bytes: int,
) -> Failover:
    """Create the upload on the first instance and PATCH the whole file there; once half
    of it has gone out, `kill()` that instance. Then, as a tus client resumes: HEAD on the
    survivor for the offset, PATCH the rest in pieces of `resume_patch_bytes`.

    Raises BenchError when the PATCH to the first instance ends before the kill.
    """
    progress = Progress(mark=size // 2)
    async with session(2) as client:
        location = await create(client, first_url, name, size)
        doomed = asyncio.create_task(
            patch(client, _upload_url(first_url, location), path, 0, size, progress)
        )
        halfway = asyncio.create_task(progress.reached.wait())
        await asyncio.wait({doomed, halfway}, return_when=asyncio.FIRST_COMPLETED)
        if doomed.done():
            halfway.cancel()
            doomed.result()  # raises what went wrong, if anything did
            raise BenchError(f"{name}: the PATCH ended before half of it was sent")
        sent_before_kill = progress.sent
        kill()
        killed_at = time.monotonic()
        try:
            await doomed
            error = "none: the killed instance answered the PATCH"
        except (TimeoutError, aiohttp.ClientError, BenchError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]

        url = _upload_url(survivor_url, location)
        status, offset = await head_offset(client, url)
        head_at = time.monotonic()
        survivor_offset = offset
        first_at: float | None = None
        refused = ""
        if status != 200 or not 0 <= offset <= size:
            refused = f"HEAD answered {status} with offset {offset}"
        conflicts = in_a_row = 0
        while not refused and offset < size:
            try:
                answered = await patch(
                    client, url, path, offset, min(resume_patch_bytes, size - offset)
                )
            except OffsetConflict as exc:
                conflicts += 1
                in_a_row += 1
                if in_a_row > MAX_CONFLICTS:
                    refused = f"{exc} ({in_a_row} times in a row)"
                    break
                _, offset = await head_offset(client, url)
                continue
            except BenchError as exc:
                refused = str(exc)
                break
            in_a_row = 0
            if first_at is None:
                first_at = time.monotonic()
            offset = answered
        done_at = time.monotonic() if not refused else None
    return Failover(
        location=location,
        size=size,
        sent_before_kill=sent_before_kill,
        first_patch_error=error,
        survivor_head_status=status,
        survivor_offset=survivor_offset,
        served=not refused,
        kill_to_head_s=round(head_at - killed_at, 4),
        kill_to_first_patch_s=None if first_at is None else round(first_at - killed_at, 4),
        kill_to_done_s=None if done_at is None else round(done_at - killed_at, 3),
        refused=refused,
        offset_conflicts=conflicts,
    )


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TwoWriters:
    """What happened when a second instance was asked to write an upload that the first
    one was still receiving (an instance that is slow or cut off, not dead)."""

    location: str
    size: int
    sent_to_first: int  # bytes the first PATCH had sent when the second one began
    second_offset: int  # the offset the second instance gave (HEAD)
    second_status: int  # its answer to a PATCH from that offset
    first_outcome: str  # how the first PATCH ended
    final_offsets: tuple[int, int]  # HEAD on each instance afterwards


async def two_writers(
    first_url: str, second_url: str, path: Path, size: int, name: str, patch_bytes: int
) -> TwoWriters:
    """Create the upload on the first instance and PATCH the whole file there; once a
    quarter has gone out, HEAD and PATCH `patch_bytes` on the second instance while the
    first PATCH is still running. Nothing is killed."""
    progress = Progress(mark=size // 4)
    async with session(2) as client:
        location = await create(client, first_url, name, size)
        first = asyncio.create_task(
            patch(client, _upload_url(first_url, location), path, 0, size, progress)
        )
        quarter = asyncio.create_task(progress.reached.wait())
        await asyncio.wait({first, quarter}, return_when=asyncio.FIRST_COMPLETED)
        if first.done():
            quarter.cancel()
            first.result()
            raise BenchError(f"{name}: the PATCH ended before a quarter of it was sent")
        sent_to_first = progress.sent
        second = _upload_url(second_url, location)
        _, offset = await head_offset(client, second)
        status = -1
        if 0 <= offset < size:
            headers = {
                "Upload-Offset": str(offset),
                "Content-Type": OCTETS,
                "Content-Length": str(min(patch_bytes, size - offset)),
            }
            body = _file_body(path, offset, min(patch_bytes, size - offset), Progress())
            async with client.patch(second, data=body, headers=headers) as reply:
                status = reply.status
                await reply.read()
        try:
            answered = await first
            outcome = f"204, offset {answered}"
        except (TimeoutError, aiohttp.ClientError, BenchError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"[:200]
        _, on_first = await head_offset(client, _upload_url(first_url, location))
        _, on_second = await head_offset(client, second)
    return TwoWriters(
        location=location,
        size=size,
        sent_to_first=sent_to_first,
        second_offset=offset,
        second_status=status,
        first_outcome=outcome,
        final_offsets=(on_first, on_second),
    )
