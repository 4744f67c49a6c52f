"""The ingest client: compress a file, upload its chunks over the data ports, verify the publish.

Ingest layer, I/O shell (asyncio streams) around the pure protocol module. `IngestClient`
is the Python API; `postoffice ingest send` is built on it. Preparing the payload (hash,
file id, Zstandard copy, chunk plan) lives in payload.py, the connections in links.py,
the ack port's side in watches.py.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, TypedDict, TypeVar, Unpack, final

from postoffice.core.config import check_port, check_range
from postoffice.core.errors import BrokenError, ConfigError, PostOfficeError
from postoffice.ingest.client.links import (
    PIPELINE_DEPTH,
    Connector,
    Link,
    NodeLinks,
    fetch_info,
    open_tcp,
)
from postoffice.ingest.client.payload import (
    PreparedFile,
    discard_work_copy,
    open_payload,
    plan_chunks,
    prepare,
    read_chunk_frame,
)
from postoffice.ingest.client.routing import (
    MAX_NODES,
    Address,
    check_redirect,
    failover_backoff_s,
    failover_order,
    parse_moved,
)
from postoffice.ingest.client.watches import AckWatches
from postoffice.ingest.errors import (
    ErrorCode,
    IngestError,
    IngestProtocolError,
    error_code,
    error_for,
)
from postoffice.ingest.messages import (
    MAX_CHUNK_BYTES,
    MAX_STATUS_RANGES,
    Ack,
    ErrorReply,
    FileId,
    Published,
    Query,
    Status,
    UploadState,
    file_id_hex,
)
from postoffice.ingest.ownership import Owner
from postoffice.ingest.protocol import encode

# Design
# ------
# `send(path)` runs five steps, each resumable by simply calling it again:
#
#   prepare    (thread, or inline for a file up to 256 KiB) payload.prepare: hash the
#              file, derive its file id (so a restarted client finds its earlier upload),
#              and compress it into the work dir, one frame per chunk (FRAMED), or reuse
#              the copy an earlier run left there (a .zst is only hashed, and its frame
#              headers read). See payload.py.
#   subscribe  SUBSCRIBE on the ack port, then PING. The server replays PUBLISHED or
#              FAILED to a late subscriber, so the events that arrive before the PONG tell
#              how an *earlier* attempt ended; they are kept apart from this attempt's.
#              Sends that subscribe in the same loop iteration share one SUBSCRIBE (up to
#              MAX_SUBSCRIBE_IDS ids) and one PING (watches.py).
#   plan       QUERY on a data link; STATUS's missing ranges say which chunks to send.
#   send       parallel * PIPELINE_DEPTH workers take indexes from one queue; worker w
#              uses link w % parallel (links go round-robin over the data ports), so a
#              link has at most PIPELINE_DEPTH chunks in flight and memory holds at most
#              that many chunk frames. A one-chunk upload needs no workers: it goes over
#              the next link in turn, where up to SMALL_PIPELINE_DEPTH small chunks (of
#              any sends) may be in flight besides the large ones, and small frames
#              written in one loop iteration leave in one write (links.py). Replies are
#              matched to requests by request id.
#   wait       the final event for the id: FAILED raises, PUBLISHED is checked against
#              our own payload digest (the server decompressed exactly what we sent) and,
#              for a file we compressed, our own content size and digest.
#
# A link that drops is reconnected by the next request that needs it; a chunk is tried
# 1 + MAX_RETRIES times in all (drops, timeouts, and the retryable error codes).
#
# Several nodes (a cluster): each upload has a route, the node its chunks and QUERYs go
# to (`_Run.node`, first the node that answered GET /info). A MOVED reply names the
# upload's owner: the route moves there (cached per file id while its sends run) and the
# request goes again, at most MAX_REDIRECTS times per request (routing.py). A node that
# stops answering (refused, reset, no reply within timeout_s) is not retried: the upload
# fails over at once, QUERYing it on the other listed nodes in turn (following MOVED),
# in rounds with backoff, within `failover_s` in all; the node that answers STATUS is
# the new route, and only the chunks it lists as missing are sent (those in flight to
# the dead node among them). The ack link moves to another node's ack port when its
# node drops: in a cluster every node delivers every final event (watches.py).

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ClientOptions",
    "IngestClient",
    "SendResult",
    "error_for",
    "send_files",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CHUNK_SIZE: Final = 4 * 1024 * 1024
MAX_PARALLEL: Final = 256  # connections per client; each is a socket on both ends
MAX_RETRIES: Final = 3
RETRY_BACKOFF_S: Final = (0.1, 0.2, 0.4)  # before retry 1, 2, 3
RETRYABLE: Final = frozenset({ErrorCode.CHECKSUM, ErrorCode.STORAGE, ErrorCode.SHUTTING_DOWN})
"""Error codes that say "this attempt failed", not "this chunk is wrong": sent again."""

# Reading and framing a chunk up to this size (or opening and removing a payload this
# small) costs less than handing it to a thread.
_INLINE_BYTES: Final = 256 * 1024

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResult:
    """What one `send` did: `size` and `digest` (XXH3-128) are of the published
    (decompressed) file, `compressed_size` and `payload_digest` of what went over the
    wire; `skipped_chunks` were already on the server (a resumed upload); `replaced` says
    the server replaced a file of that name."""

    path: Path
    name: str
    file_id: FileId
    size: int
    digest: bytes
    payload_digest: bytes
    compressed_size: int
    chunks: int
    sent_chunks: int
    skipped_chunks: int
    seconds: float
    replaced: bool


def _is_small(path: Path) -> bool:
    """Whether `path` is small enough to prepare on the loop (a thread hop costs more).

    A file that cannot be stat'ed is prepared on a thread, which reports the error.
    """
    try:
        return os.stat(path).st_size <= _INLINE_BYTES
    except OSError:
        return False


@dataclass(slots=True, kw_only=True)
class _Run:
    """Shared state of one send's workers."""

    prepared: PreparedFile
    fd: int
    progress: ProgressFn | None
    done_bytes: int
    sent: int = 0
    node: NodeLinks  # where this upload's chunks and QUERYs go (moved by MOVED, failover)
    stop: bool = False  # an ACK said the upload is already published

    def acked(self, index: int) -> None:
        self.sent += 1
        total = self.prepared.payload_size
        self.done_bytes = min(total, self.done_bytes + self.prepared.chunk_length(index))
        if self.progress is not None:
            self.progress(self.done_bytes, total)


class ClientOptions(TypedDict, total=False):
    """IngestClient's arguments, for `send_files`."""

    host: str
    sys_base: int
    data_base: int
    ports: int | None
    chunk_size: int
    parallel: int
    timeout_s: float
    work_dir: Path | None
    connect: Connector | None
    framed: bool
    nodes: Sequence[Address] | None
    failover_s: float


@final
class IngestClient:
    """Uploads files to an ingest server; use as `async with IngestClient(...) as client`.

    Entering discovers the data ports (GET /info on the health port, sys_base) unless
    `ports` is given (then data_base .. data_base+ports-1), and opens the ack connection
    (sys_base+3). `parallel` connections in all are spread round-robin over the data
    ports. `timeout_s` bounds a connect, each reply, and the wait for the publish.
    `connect` replaces asyncio.open_connection (tests). With `framed` (the default) a
    file is compressed as one zstd frame per `chunk_size` bytes of content and sent as
    FRAMED chunks, which the server decompresses on all its cores (payload.py says when
    it falls back to one frame). Raises ConfigError for bad arguments; entering raises
    BrokenError when the server cannot be reached.

    `nodes`, a list of (host, health port) addresses, makes it a client of a cluster (in
    place of `host` and `sys_base`): it starts at the first node that answers, follows
    MOVED replies to an upload's owner, fails over to the other nodes when one stops
    answering (within `failover_s` in all per failover), and watches the outcome on any
    live node's ack port. One node listed behaves as `host` and `sys_base`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        sys_base: int = 7000,
        data_base: int = 7100,
        *,
        ports: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        parallel: int = 4,
        timeout_s: float = 60.0,
        work_dir: Path | None = None,
        connect: Connector | None = None,
        framed: bool = True,
        nodes: Sequence[Address] | None = None,
        failover_s: float = 30.0,
    ) -> None:
        if nodes is not None:
            if not 1 <= len(nodes) <= MAX_NODES:
                raise ConfigError(
                    f"'nodes' lists {len(nodes)} addresses, expected 1 to {MAX_NODES}"
                )
            if ports is not None and len(nodes) > 1:
                raise ConfigError("'ports' names one node's data ports: not with several nodes")
            host, sys_base = nodes[0]
        addresses = tuple(nodes) if nodes is not None else ((host, sys_base),)
        for _, health_port in addresses:
            check_port("sys_base", health_port)
            check_port("sys_base", health_port + 3)
        check_range("failover_s", failover_s, 0, None)
        if ports is not None:
            check_range("ports", ports, 1, 1024)
            check_range("data_base", data_base, 1, 65535)
            check_port("data_base", data_base + ports - 1)
        check_range("chunk_size", chunk_size, 1, MAX_CHUNK_BYTES)
        check_range("parallel", parallel, 1, MAX_PARALLEL)
        check_range("timeout_s", timeout_s, 0.001, None)
        self.host = host
        self.sys_base = sys_base
        self.data_base = data_base
        self.chunk_size = chunk_size
        self.parallel = parallel
        self.timeout_s = timeout_s
        self.work_dir = work_dir
        self.framed = framed
        self.data_ports: tuple[int, ...] = (
            tuple(range(data_base, data_base + ports)) if ports is not None else ()
        )
        self.failover_s = failover_s
        self._connect: Connector = connect if connect is not None else open_tcp
        #: The listed nodes, in order; the first is where uploads start until entering
        #: finds which answers (`_home`).
        self._nodes = [NodeLinks(h, p) for h, p in addresses]
        self._home = self._nodes[0]
        #: Every node known, listed or named by a MOVED, by address.
        self._known = {node.address: node for node in self._nodes}
        self._failover = len(self._nodes) > 1
        #: The node a MOVED or a failover routed a file id to, while its sends run.
        self._owners: dict[FileId, NodeLinks] = {}
        self._acks = AckWatches(
            host,
            sys_base + 3,
            connect=self._connect,
            timeout_s=timeout_s,
            reach=self._reach_acks if nodes is not None else None,
        )
        self._ack_node = self._home  # the node whose ack port the ack link goes to
        self._next_link = 0  # the link the next one-chunk upload goes over
        self.files_sent = 0

    def __repr__(self) -> str:
        return (
            f"<IngestClient {self.host}:{self.sys_base} data_ports={list(self.data_ports)} "
            f"parallel={self.parallel} files_sent={self.files_sent}>"
        )

    async def __aenter__(self) -> IngestClient:
        if self.data_ports:
            self._open(self._home, self.data_ports)
        else:
            failure: BrokenError | None = None
            for node in self._nodes:  # the first node that answers is home
                try:
                    await self._discover(node)
                except BrokenError as exc:
                    failure = failure or exc
                    continue
                self._home = self._ack_node = node
                break
            else:
                assert failure is not None
                raise failure
            self.data_ports = self._home.data_ports
        await self._acks.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection."""
        await asyncio.gather(
            self._acks.link.close(), *(node.close() for node in self._known.values())
        )

    async def send(
        self, path: Path, *, name: str | None = None, progress: ProgressFn | None = None
    ) -> SendResult:
        """Upload one file and return once the server has published it and we checked it.

        Sending the same file again resumes: only the chunks the server lacks are sent.
        `name` overrides the published name; `progress(done, total)` gets compressed bytes
        after each acknowledged chunk. Raises BadNameError, StorageError (local files),
        AssemblyError (the server could not publish it), the IngestError subclass of a
        refused chunk, IngestError when the published checksum is not ours or no publish
        came within timeout_s, BrokenError when the server stays unreachable.
        """
        began = time.monotonic()
        path = Path(path)
        if _is_small(path):
            prepared = prepare(
                path,
                chunk_size=self.chunk_size,
                work_dir=self.work_dir,
                name=name,
                framed=self.framed,
            )
        else:
            prepared = await asyncio.to_thread(
                prepare,
                path,
                chunk_size=self.chunk_size,
                work_dir=self.work_dir,
                name=name,
                framed=self.framed,
            )
        hex_id = file_id_hex(prepared.file_id)
        acks = self._acks
        watch = acks.watch(prepared.file_id)
        try:
            await self._retrying(f"subscribe {hex_id}", lambda: acks.subscribe(prepared.file_id))
            earlier, watch.final = watch.final, None
            if isinstance(earlier, Published):
                published, sent = earlier, 0  # an earlier attempt finished the job
            else:
                sent = await self._upload(prepared, progress)
                published = await acks.wait_published(
                    watch,
                    prepared.name,
                    timeout_s=self.timeout_s,
                    reconnect=lambda: self._retrying("reconnect to the ack port", acks.ready),
                )
        finally:
            acks.unwatch(watch)
            if not acks.watching(prepared.file_id):
                self._owners.pop(prepared.file_id, None)
        if published.payload_digest != prepared.payload_digest:
            raise IngestError(
                f"published payload digest {published.payload_digest.hex()} of {prepared.name}"
                f" does not match ours {prepared.payload_digest.hex()}: the server "
                "decompressed other bytes than we sent"
            )
        if prepared.digest is not None and (
            published.size != prepared.size or published.digest != prepared.digest
        ):
            raise IngestError(
                f"published digest {published.digest.hex()} ({published.size} bytes) of "
                f"{prepared.name} does not match ours {prepared.digest.hex()} "
                f"({prepared.size} bytes)"
            )
        if prepared.payload_size <= _INLINE_BYTES:
            discard_work_copy(prepared)
        else:
            await asyncio.to_thread(discard_work_copy, prepared)
        total = prepared.total
        result = SendResult(
            path=path,
            name=published.name,
            file_id=prepared.file_id,
            size=published.size,
            digest=published.digest,
            payload_digest=published.payload_digest,
            compressed_size=prepared.payload_size,
            chunks=total,
            sent_chunks=sent,
            skipped_chunks=max(0, total - sent),
            seconds=time.monotonic() - began,
            replaced=published.replaced,
        )
        self.files_sent += 1
        log.info(
            "published file=%s file_id=%s bytes=%d chunks=%d sent=%d skipped=%d seconds=%.3f",
            result.name,
            hex_id,
            result.size,
            total,
            sent,
            result.skipped_chunks,
            result.seconds,
        )
        return result

    # -- steps of send ---------------------------------------------------------------------

    async def _upload(self, prepared: PreparedFile, progress: ProgressFn | None) -> int:
        """Send what the server lacks; return how many chunks were sent."""
        if prepared.data is not None:
            fd = -1  # the payload is in memory
        elif prepared.payload_size <= _INLINE_BYTES:
            fd = open_payload(prepared.payload)
        else:
            fd = await asyncio.to_thread(open_payload, prepared.payload)
        try:
            run = _Run(
                prepared=prepared,
                fd=fd,
                progress=progress,
                done_bytes=0,
                node=self._owners.get(prepared.file_id, self._home),
            )
            status: Status | None
            try:
                if prepared.total == 1:
                    # One chunk: no need to ask what is missing. A chunk the server already
                    # has is answered DUPLICATE or PUBLISHED, which ends the upload as well.
                    status = None
                    indexes: tuple[int, ...] = (0,)
                else:
                    status = await self._query_status(run)
                    indexes = plan_chunks(status, total=prepared.total, size=prepared.payload_size)
            except BrokenError as exc:
                if not self._failover:
                    raise
                status = await self._fail_over(run, exc)
                indexes = plan_chunks(status, total=prepared.total, size=prepared.payload_size)
            pending = sum(prepared.chunk_length(i) for i in indexes)
            run.done_bytes = max(0, prepared.payload_size - pending)
            if progress is not None:
                progress(run.done_bytes, prepared.payload_size)
            while True:
                try:
                    if indexes:
                        await self._send_chunks(run, indexes)
                    # A STATUS lists at most MAX_STATUS_RANGES ranges: ask again for the rest.
                    if run.stop or status is None or len(status.missing) < MAX_STATUS_RANGES:
                        return run.sent
                    status = await self._query_status(run)
                    if status.state is not UploadState.UPLOADING:
                        return run.sent
                except BrokenError as exc:
                    if not self._failover:
                        raise
                    # The new node's STATUS, whatever its state, says what to send.
                    status = await self._fail_over(run, exc)
                indexes = plan_chunks(status, total=prepared.total, size=prepared.payload_size)
        finally:
            if fd >= 0:
                os.close(fd)

    async def _send_chunks(self, run: _Run, indexes: tuple[int, ...]) -> None:
        queue = collections.deque(indexes)
        workers = min(len(indexes), self.parallel * PIPELINE_DEPTH)
        if workers == 1:  # one chunk (a small file): no tasks to spread it over
            self._next_link = (self._next_link + 1) % self.parallel
            await self._worker(self._next_link, queue, run)
            return
        await _all_or_nothing(self._worker(w % self.parallel, queue, run) for w in range(workers))

    async def _worker(self, slot: int, queue: collections.deque[int], run: _Run) -> None:
        """Send chunks from `queue` over link `slot` of the upload's node, while any are left."""
        while queue and not run.stop:
            await self._send_chunk(slot, queue.popleft(), run)

    async def _send_chunk(self, slot: int, index: int, run: _Run) -> None:
        prepared = run.prepared
        what = f"chunk {index} of {prepared.name} ({file_id_hex(prepared.file_id)})"
        attempt = hops = 0
        while True:
            link = run.node.links[slot]
            small = prepared.chunk_length(index) <= _INLINE_BYTES
            try:
                async with link.small_in_flight if small else link.in_flight:
                    await link.ensure()
                    request_id = link.next_id()
                    if small:
                        frame = read_chunk_frame(prepared, run.fd, index, request_id)
                    else:
                        frame = await asyncio.to_thread(
                            read_chunk_frame, prepared, run.fd, index, request_id
                        )
                    reply = await link.call(frame, request_id)
            except BrokenError as exc:
                if self._failover:
                    raise  # the upload fails over (QUERY on the other nodes), not this chunk
                failure: PostOfficeError = exc
            else:
                match reply:
                    case Ack(file_id=file_id, index=acked) if (
                        file_id == prepared.file_id and acked == index
                    ):
                        run.stop = run.stop or reply.published
                        run.acked(index)
                        return
                    case ErrorReply(code=ErrorCode.MOVED, message=message):
                        owner = parse_moved(message)
                        check_redirect(what, hops, owner)
                        hops += 1
                        self._follow(run, owner)
                        continue
                    case ErrorReply(code=ErrorCode.SHUTTING_DOWN, message=message) if (
                        self._failover
                    ):
                        # The node drains (it stops, or hands its uploads over): look for
                        # the upload on the others rather than wait for it here.
                        raise BrokenError(f"{what}: {message}")
                    case ErrorReply(code=code, message=message) if code in RETRYABLE:
                        failure = error_for(code, f"{what}: {message}")
                    case ErrorReply(code=code, message=message):
                        raise error_for(code, f"{what}: {message}")
                    case _:
                        raise IngestProtocolError(f"{what}: expected its ack, got {reply!r}")
            if attempt == MAX_RETRIES:
                raise failure
            log.info("retrying %s attempt=%d error=%r", what, attempt + 1, str(failure))
            await asyncio.sleep(RETRY_BACKOFF_S[attempt])
            attempt += 1

    async def _query_status(self, run: _Run) -> Status:
        """The upload's STATUS: QUERY, retried after a drop on a single node; in a cluster
        a drop fails over instead (BrokenError goes up at once)."""
        if self._failover:
            return await self._query(run)
        return await self._retrying("query", lambda: self._query(run))

    async def _query(self, run: _Run) -> Status:
        """QUERY the upload on its node, following MOVED replies (run.node moves)."""
        file_id = run.prepared.file_id
        hops = 0
        while True:
            node = run.node
            if not node.links:
                await self._discover(node)
            link = node.links[0]
            await link.ensure()
            request_id = link.next_id()
            reply = await link.call(encode(Query(file_id=file_id), request_id), request_id)
            match reply:
                case Status(file_id=fid) if fid == file_id:
                    return reply
                case ErrorReply(code=ErrorCode.MOVED, message=message):
                    owner = parse_moved(message)
                    check_redirect(f"query of {file_id_hex(file_id)}", hops, owner)
                    hops += 1
                    self._follow(run, owner)
                case ErrorReply(code=ErrorCode.SHUTTING_DOWN, message=message) if self._failover:
                    # The node drains and hands its uploads over: fail over to the others.
                    raise BrokenError(f"query of {file_id_hex(file_id)}: {message}")
                case ErrorReply(code=code, message=message):
                    raise error_for(code, f"query of {file_id_hex(file_id)}: {message}")
                case _:
                    raise IngestProtocolError(
                        f"expected status of {file_id_hex(file_id)}, got {reply!r}"
                    )

    async def _fail_over(self, run: _Run, error: BrokenError) -> Status:
        """Find a node that answers for the upload, its node having stopped answering:
        QUERY it on the listed nodes in turn (following MOVED), in rounds with backoff,
        for at most failover_s in all; a retryable refusal (STORAGE: a claim not decided
        yet) counts as no answer. Returns that node's STATUS; run.node is that node.
        Raises BrokenError when none answered in time, what `_query` raises otherwise.
        """
        prepared = run.prepared
        what = f"{prepared.name} ({file_id_hex(prepared.file_id)})"
        failed = run.node
        log.info(
            "failing over file_id=%s node=%s:%d error=%r",
            file_id_hex(prepared.file_id),
            failed.host,
            failed.health_port,
            str(error),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover_s
        last: PostOfficeError = error
        for round_ in itertools.count():
            for node in failover_order(self._nodes, failed):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                run.node = node
                try:
                    async with asyncio.timeout(min(remaining, self.timeout_s)):
                        status = await self._query(run)
                except BrokenError as exc:
                    last = exc
                    continue
                except TimeoutError:
                    last = BrokenError(f"{node.host}:{node.health_port} did not answer in time")
                    continue
                except IngestError as exc:
                    # A node that cannot decide the claim yet (its cluster store electing a
                    # leader) says STORAGE: the takeover is still to come, ask again.
                    if error_code(exc) not in RETRYABLE:
                        raise
                    last = exc
                    continue
                self._owners[prepared.file_id] = run.node
                if self._ack_node is failed and node is not failed:
                    # A node cut off by the network sends no FIN or RST: the ack link to it
                    # stays open and silent. Move it to the node that answered, which
                    # replays the final events of every watched id on the new SUBSCRIBE.
                    self._ack_node = node
                    port = node.health_port + 3 if node.ack_port is None else node.ack_port
                    self._acks.link.retarget(node.host, (port,))
                log.info(
                    "failed over file_id=%s node=%s:%d state=%s",
                    file_id_hex(prepared.file_id),
                    run.node.host,
                    run.node.health_port,
                    status.state.name,
                )
                return status
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BrokenError(
                    f"no node answered for {what} within {self.failover_s} s: {last}"
                ) from error
            await asyncio.sleep(min(failover_backoff_s(round_), remaining))
        raise AssertionError("unreachable")

    def _follow(self, run: _Run, owner: Owner) -> None:
        """Route the upload to the node a MOVED reply named (known or new)."""
        node = self._known.get((owner.host, owner.health_port))
        if node is None:
            if len(self._known) >= 2 * MAX_NODES:
                raise IngestError(
                    f"moved to {owner.node} at {owner.host}:{owner.health_port}, past "
                    f"{2 * MAX_NODES} nodes known: the cluster is not one"
                )
            node = NodeLinks(owner.host, owner.health_port)
            self._known[node.address] = node
        if not node.links:
            self._open(node, owner.data_ports)
        log.debug(
            "moved file_id=%s node=%s at=%s:%d",
            file_id_hex(run.prepared.file_id),
            owner.node,
            owner.host,
            owner.health_port,
        )
        run.node = node
        self._owners[run.prepared.file_id] = node

    async def _discover(self, node: NodeLinks) -> None:
        """Read the node's ports (GET /info) and make its links; raises BrokenError."""
        info = await fetch_info(
            node.host, node.health_port, timeout_s=self.timeout_s, connect=self._connect
        )
        node.ack_port = info.ack_port
        self._open(node, info.data_ports)

    async def _reach_acks(self, link: Link) -> None:
        """Connect the ack link to a live node's ack port: the node it was on, then the
        listed others in turn (in a cluster each delivers every final event). Raises
        the last BrokenError when none can be reached."""
        current = self._ack_node
        failure: BrokenError | None = None
        for node in (current, *failover_order(self._nodes, current)[:-1]):
            if node.ack_port is None and node is not current:
                try:
                    await self._discover(node)
                except BrokenError as exc:
                    failure = exc
                    continue
            port = node.health_port + 3 if node.ack_port is None else node.ack_port
            if (link.host, link.port) != (node.host, port):
                link.retarget(node.host, (port,))
            try:
                await link.ensure()
            except BrokenError as exc:
                failure = exc
                continue
            self._ack_node = node
            return
        assert failure is not None
        raise failure

    def _open(self, node: NodeLinks, ports: tuple[int, ...]) -> None:
        node.open(ports, parallel=self.parallel, connect=self._connect, timeout_s=self.timeout_s)

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op`, again after a BrokenError, up to MAX_RETRIES times with backoff."""
        for attempt in range(MAX_RETRIES + 1):
            try:
                return await op()
            except BrokenError as exc:
                if attempt == MAX_RETRIES:
                    raise
                log.info("retrying %s attempt=%d error=%r", what, attempt + 1, str(exc))
                await asyncio.sleep(RETRY_BACKOFF_S[attempt])
        raise AssertionError("unreachable")


async def _all_or_nothing(coros: Iterable[Awaitable[None]]) -> None:
    """Run `coros` together; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def send_files(
    paths: Iterable[Path | str], **client_kwargs: Unpack[ClientOptions]
) -> list[SendResult]:
    """Upload `paths` one after the other through one IngestClient(**client_kwargs)."""
    async with IngestClient(**client_kwargs) as client:
        return [await client.send(Path(p)) for p in paths]
