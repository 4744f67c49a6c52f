"""The ingest server's side of the cluster: chunks put into S3 before their commit, uploads
adopted from S3, publishes to S3 recorded once, and events relayed between the nodes.

I/O shell on the server's event loop; imported only in cluster mode (it brings nats, obstore).
"""

# Design
# ------
# The server makes one ClusteredNode when --cluster is given and wires four seams:
#   - Intake.replicate: a chunk, once verified, is put at chunks/<hex>/<i> with the
#     upload's fields as the object's metadata, and only then committed locally, so an
#     ACK means both copies exist; a put that fails refuses the chunk with STORAGE. The
#     first chunk of an upload this node does not hold adopts it first, unless it is
#     the upload's only chunk (S3 can hold nothing more of it).
#   - Assemblies.outputs (S3Outputs): an assembly that writes its output in order (the
#     streaming one, the one from the patches) tees each block, once written, into a
#     multipart upload at files/<name>, from its writer thread;
#   - Assemblies.record: the publish completes that upload (or, for a FRAMED upload,
#     written at offsets by many threads, one the assembled file is read back into);
#     its completion is the publish. Then the published record is created (once,
#     whoever wins), the local record written, and the local copy in files/ removed: a
#     cluster node publishes to S3 only. The chunk objects go after. This runs on the
#     assembly's thread, which waits for the loop's S3 calls.
#   - the EventHub's listeners: this node's PUBLISHED and FAILED go out on the events
#     stream; every node's come back to `on_event`, which hands them to the ack port and
#     /events unless this node already did (its own, or one it holds the outcome of).
# Adoption (a QUERY or first CHUNK of an upload held nowhere here) lists chunks/<hex>/,
# reads each chunk missing locally with its metadata, verifies it against its digest and
# commits it as if a client had sent it, so STATUS names only what is still missing.

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Final, TypeVar, final
from urllib.parse import quote, unquote

from postoffice.core.framing import FrameError
from postoffice.core.workers import WorkerPool
from postoffice.ingest.assembler import Assemblies
from postoffice.ingest.chunkdigest import verify_chunk
from postoffice.ingest.cluster import (
    Cluster,
    ClusterConfig,
    ClusterError,
    ClusterOwnership,
    FileWriter,
    LostReason,
    Owner,
    PublishedRecord,
)
from postoffice.ingest.errors import IngestError
from postoffice.ingest.events import AckHub, EventHub
from postoffice.ingest.messages import (
    Chunk,
    Failed,
    FileId,
    Published,
    Status,
    UploadState,
    file_id_hex,
)
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.protocol import MessageDecoder, encode
from postoffice.ingest.published import PublishedInfo
from postoffice.ingest.reports import published_message
from postoffice.ingest.storage import ChunkStore, StoreResult

log = logging.getLogger(__name__)

#: Bytes of the assembled file read and handed to the multipart upload at a time.
UPLOAD_BLOCK_BYTES: Final = 8 * 1024 * 1024
#: How long a thread waits for one S3 or KV step of a publish run on the loop.
STEP_TIMEOUT_S: Final = 120.0
#: Remote outcomes remembered for late subscribers and QUERYs (the oldest go first).
MAX_REMEMBERED: Final = 10_000
#: Chunks of an upload being adopted that are read from S3 at once.
ADOPT_CONCURRENCY: Final = 4
#: How long a closing node waits for its events still being published.
CLOSE_EVENTS_S: Final = 5.0

_T = TypeVar("_T")
_NODE_CHARS: Final = re.compile(r"[^A-Za-z0-9_.-]")

# The chunk object's metadata: the fields of the CHUNK besides its data.
_META_NAME: Final = "po-name"
_META_TOTAL: Final = "po-total"
_META_SIZE: Final = "po-size"
_META_PAYLOAD_DIGEST: Final = "po-payload-digest"
_META_DIGEST: Final = "po-digest"
_META_CONTENT_SIZE: Final = "po-content-size"
_META_CONTENT_OFFSET: Final = "po-content-offset"


def default_node_name(health_port: int) -> str:
    """`<hostname>-<health port>`, the host name cut to what a node name allows."""
    host = _NODE_CHARS.sub("-", socket.gethostname().split(".")[0]).strip("-_.") or "node"
    return f"{host[:50]}-{health_port}"


def chunk_meta(chunk: Chunk) -> dict[str, str]:
    """The metadata a chunk object is put with: what a node adopting it needs to commit it
    (the name percent-encoded, as metadata is ASCII)."""
    meta = {
        _META_NAME: quote(chunk.name, safe=""),
        _META_TOTAL: str(chunk.total),
        _META_SIZE: str(chunk.size),
        _META_PAYLOAD_DIGEST: chunk.payload_digest.hex(),
        _META_DIGEST: chunk.digest.hex(),
    }
    if chunk.content_size is not None:
        meta[_META_CONTENT_SIZE] = str(chunk.content_size)
        meta[_META_CONTENT_OFFSET] = str(chunk.content_offset)
    return meta


def chunk_of(file_id: FileId, index: int, data: bytes, meta: dict[str, str]) -> Chunk:
    """The CHUNK that a chunk object and its metadata hold; ClusterError if the metadata is
    missing or does not parse (its digest is the caller's to verify)."""
    try:
        content_size = meta.get(_META_CONTENT_SIZE)
        return Chunk(
            file_id=file_id,
            index=index,
            total=int(meta[_META_TOTAL]),
            size=int(meta[_META_SIZE]),
            name=unquote(meta[_META_NAME], errors="strict"),
            payload_digest=bytes.fromhex(meta[_META_PAYLOAD_DIGEST]),
            digest=bytes.fromhex(meta[_META_DIGEST]),
            data=data,
            content_size=None if content_size is None else int(content_size),
            content_offset=int(meta.get(_META_CONTENT_OFFSET, "0")),
        )
    except (KeyError, ValueError) as exc:
        raise ClusterError(
            f"chunk {index} of {file_id_hex(file_id)} in S3 has bad metadata: {exc!r}"
        ) from None


def event_payload(message: Published | Failed) -> bytes:
    """An ack-port event as it goes on the events stream: its frame, as the ack port sends it."""
    return encode(message, 0)


def event_of(payload: bytes) -> Published | Failed:
    """The PUBLISHED or FAILED event a stream message carries; ClusterError otherwise."""
    decoder = MessageDecoder()
    try:
        decoder.feed(payload)
        decoded = decoder.next_event()
    except (IngestError, FrameError) as exc:
        raise ClusterError(f"event does not parse: {exc}") from exc
    event = decoded[1] if isinstance(decoded, tuple) else None
    if not isinstance(event, Published | Failed):
        raise ClusterError(f"event is {decoded!r}, not PUBLISHED or FAILED")
    return event


@final
class ClusteredNode:
    """This server as a node of the ingest cluster (see the design note). `open` joins,
    `close` leaves; the server wires `replicate`, `record`, `relay` and `on_event`."""

    def __init__(
        self,
        *,
        config: ClusterConfig,
        files_dir: Path,
        store: ChunkStore,
        pool: WorkerPool,
        assemblies: Assemblies,
        acks: AckHub,
        events: EventHub,
        known: Callable[[FileId], bool],
        failure: Callable[[FileId], Failed | None],
    ) -> None:
        self.config = config
        self.files_dir = files_dir
        self.store = store
        self.pool = pool
        self.assemblies = assemblies
        self.acks = acks
        self.events = events
        #: Whether this node already holds an upload's outcome (it told its subscribers).
        self.known = known
        #: The FAILED event this node holds for an upload, if any.
        self.failure = failure
        self.cluster: Cluster | None = None
        #: Who owns which upload (the server's Ownership seam), once open.
        self.ownership: ClusterOwnership | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.adopted = 0
        self._adopting: dict[FileId, asyncio.Task[int]] = {}
        self._remembered: OrderedDict[FileId, Published | Failed] = OrderedDict()
        self._looking: set[FileId] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Assemblies.outputs: the in-order assemblies' output streamed into S3.
        self.outputs = S3Outputs(self)

    def __repr__(self) -> str:
        return f"<ClusteredNode {self.cluster!r} adopted={self.adopted}>"

    @property
    def joined(self) -> Cluster:
        """The open Cluster; ClusterError before `open` and after `close`."""
        if self.cluster is None:
            raise ClusterError("this node is not in the cluster")
        return self.cluster

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self, me: Owner) -> None:
        """Join: NATS and S3 reached, heartbeat and events consumer running. Raises
        ClusterError naming which of NATS and S3 could not be reached."""
        self.loop = asyncio.get_running_loop()
        self.cluster = await Cluster.open(
            self.config, me, on_event=self.on_event, on_lost=self._claim_lost
        )
        self.ownership = ClusterOwnership(
            self.cluster.claims,
            self.cluster.nodes,
            published=self.cluster.published,
            holds=lambda file_id: self.store.info(file_id) is not None,
        )
        self.cluster.claims.on_handed_over = self.ownership.handed_over
        self.events.listeners.append(self.relay)

    def _claim_lost(self, file_id: FileId, reason: LostReason) -> None:
        if self.ownership is not None:
            self.ownership.lost(file_id, reason)

    async def hand_over(self) -> int:
        """Draining, once no chunk is in flight: hand every upload this node claims but
        has not all the chunks of to the others, which take it over at once (its chunks
        are in S3) instead of after this node has left. Uploads being assembled here stay
        ours. Returns how many were handed over; a failure is logged, and that upload is
        taken over once this node has gone, as before."""
        cluster = self.cluster
        if cluster is None or not cluster.connected:
            return 0
        handed = 0
        for file_id in cluster.claims.held():
            info = self.store.info(file_id)
            if info is not None and info.complete:
                continue
            try:
                if await cluster.claims.hand_over(file_id):
                    handed += 1
            except ClusterError as exc:
                log.warning("file_id=%s not handed over: %s", file_id_hex(file_id), exc)
        if handed:
            log.info("node=%s handed over uploads=%d", cluster.me.node, handed)
        return handed

    async def close(self) -> None:
        """Leave: the events still being published get a moment, then every task stops."""
        if self.relay in self.events.listeners:
            self.events.listeners.remove(self.relay)
        if self._tasks and self.cluster is not None and self.cluster.connected:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_EVENTS_S)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            await cluster.close()

    def status(self) -> dict[str, object]:
        """What STATUS and /info add in cluster mode: this node's name, the live nodes."""
        cluster = self.cluster
        if cluster is None:
            return {}
        return {"node": cluster.me.node, "nodes": cluster.nodes.table.live()}

    def _spawn(self, coro: Coroutine[Any, Any, object], what: str) -> None:
        """Run `coro` in the background, its failure logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("%s failed: %s", what, task.exception())

        task.add_done_callback(done)

    # -- chunks ------------------------------------------------------------------------

    async def replicate(self, chunk: Chunk) -> None:
        """Intake.replicate: adopt the upload if this is its first chunk here, then put the
        chunk into S3 (its data as received, not copied), unless it is committed here
        already. The only chunk of an upload adopts nothing. Raises ClusterError: the
        chunk is then not committed."""
        file_id = chunk.file_id
        info = self.store.info(file_id)
        if info is None:
            # S3 can hold nothing of a one-chunk upload that this chunk does not bring:
            # listing it would cost a request per small file for nothing
            if chunk.total > 1:
                await self.adopt(file_id)
        elif chunk.index in info.committed:
            return  # a duplicate: committed here, so put already
        cluster = self.joined
        await cluster.objects.put_chunk(file_id, chunk.index, chunk.data, chunk_meta(chunk))
        if not cluster.claims.owns(file_id):
            # The claim went while the put was in flight (the lease lapsed, say, on a link
            # that came back only to deliver the put): the upload is another node's, which
            # adopts this object or is sent the chunk again. Committing it here would keep
            # chunks of an upload this node answers MOVED for.
            raise ClusterError(
                f"chunk {chunk.index} of {file_id_hex(file_id)} not committed: this node "
                "lost the upload while putting it"
            )

    async def adopt(self, file_id: FileId) -> int:
        """Bring the upload's chunks that S3 holds and this node does not into the local
        store, as if a client had sent them; return how many. One adoption per upload runs
        at a time (callers share it). Raises ClusterError when S3 cannot be listed."""
        task = self._adopting.get(file_id)
        if task is None:
            task = asyncio.ensure_future(self._adopt(file_id))
            self._adopting[file_id] = task
            task.add_done_callback(lambda _: self._adopting.pop(file_id, None))
        return await asyncio.shield(task)

    async def _adopt(self, file_id: FileId) -> int:
        objects = self.joined.objects
        indexes = await objects.chunk_indexes(file_id)
        info = self.store.info(file_id)
        have = info.committed if info is not None else frozenset()
        wanted = [index for index in indexes if index not in have]
        if not wanted:
            return 0
        began = time.monotonic()
        gate = asyncio.Semaphore(ADOPT_CONCURRENCY)

        async def fetch(index: int) -> bool:
            async with gate:
                data, meta = await objects.get_chunk_meta(file_id, index)
            chunk = chunk_of(file_id, index, data, meta)
            try:
                result = await self.pool.submit(lambda: _verify_and_store(self.store, chunk))
            except IngestError as exc:
                # a chunk that does not match its digest or the upload is asked for again
                log.warning("file_id=%s chunk %d not adopted: %s", file_id_hex(file_id), index, exc)
                return False
            if not result.duplicate:
                self.assemblies.on_committed(
                    file_id,
                    complete=result.complete,
                    index=index,
                    framed=chunk.content_size is not None,
                )
            return not result.duplicate

        done = await asyncio.gather(*(fetch(index) for index in wanted))
        adopted = sum(done)
        self.adopted += adopted
        hex_id = file_id_hex(file_id)
        log.info(
            "adopted file_id=%s chunks=%d of %d in s3 seconds=%.3f",
            hex_id,
            adopted,
            len(indexes),
            time.monotonic() - began,
        )
        self.events.emit("upload_adopted", file_id=hex_id, chunks=adopted)
        return adopted

    async def query(
        self, file_id: FileId, local: Callable[[FileId], Status], *, adopt: bool = True
    ) -> Status:
        """A QUERY of an upload this node holds nothing of: PUBLISHED from the published
        record, else what `local` answers, after adopting the chunks S3 holds when
        `adopt` (the claim is this node's)."""
        record = await self.joined.published.get(file_id)
        if record is not None:
            return Status(
                file_id=file_id,
                state=UploadState.PUBLISHED,
                total=0,
                committed=0,
                size=record.size,
                name=record.name,
                missing=(),
            )
        if adopt:
            await self.adopt(file_id)
        return local(file_id)

    # -- publishing --------------------------------------------------------------------

    def record(self, done: PublishedInfo) -> PublishedInfo:
        """Assemblies.record, on the assembly's thread: put the assembled file into S3 (the
        publish), create the published record, write the local record, drop the local
        copy; return the publish as recorded (`replaced` when the bucket held the name,
        which the local rename cannot know). Raises ClusterError (the assembly is then
        retried) and what the store raises."""
        cluster = self.joined
        began = time.monotonic()
        path = self.files_dir / done.name
        stat = os.stat(path)
        writer = self.outputs.take(done.file_id)
        streamed = writer is not None and writer.written == done.size
        if writer is not None and not streamed:
            self.wait(writer.abort())
        if writer is None or not streamed:
            writer = self._read_back(path, done)
        # One HEAD per publish: whether the name was taken in the bucket (by any node)
        taken = self.wait(cluster.objects.file_size(done.name)) is not None
        done = dataclasses.replace(done, replaced=done.replaced or taken)
        self.wait(writer.complete())
        log.info(
            "file_id=%s put into s3 as %s bytes=%d streamed=%s seconds=%.3f",
            file_id_hex(done.file_id),
            writer.path,
            writer.written,
            streamed,
            time.monotonic() - began,
        )
        record = PublishedRecord(
            file_id=done.file_id,
            name=done.name,
            size=done.size,
            digest=done.digest,
            payload_digest=done.payload_digest,
            replaced=done.replaced,
            node=cluster.me.node,
        )
        stands = self.wait(cluster.published.record(record))
        if stands.node != record.node:
            log.info("file_id=%s was published by %s too", file_id_hex(done.file_id), stands.node)
        self.store.mark_published(done)
        try:
            # only the file this publish placed (a later publish of the name may replace it)
            if os.stat(path).st_ino == stat.st_ino:
                path.unlink()
        except FileNotFoundError:
            pass
        loop = self.loop
        assert loop is not None
        loop.call_soon_threadsafe(self._drop_chunks, done.file_id)
        return done

    def _read_back(self, path: Path, done: PublishedInfo) -> FileWriter:
        """A multipart upload of the assembled file read back from `path` (a FRAMED
        upload's, written at offsets by many threads), not yet completed."""
        writer: FileWriter = self.wait(self.joined.objects.open_file(done.name))
        try:
            with path.open("rb") as source:
                while block := source.read(UPLOAD_BLOCK_BYTES):
                    self.wait(writer.write(block))
            if writer.written != done.size:
                raise ClusterError(
                    f"{done.name}: {writer.written} bytes read back for S3, expected {done.size}"
                )
        except BaseException:
            self.wait(writer.abort())
            raise
        return writer

    def forget(self, file_id: FileId) -> None:
        """The upload expired here (TTL): if this node owns it, its chunks leave S3 and its
        claim is given back, in the background. Chunks this node kept of an upload another
        node took over are that node's: its objects in S3 stay."""
        cluster = self.cluster
        if cluster is not None and cluster.claims.owns(file_id):
            self._drop_chunks(file_id)

    def _drop_chunks(self, file_id: FileId) -> None:
        """The upload is over (published, failed or expired): its chunks leave S3 and its
        claim is given back."""
        if self.cluster is not None:
            self._spawn(
                self.cluster.objects.delete_chunks(file_id),
                f"deleting the chunks of {file_id_hex(file_id)}",
            )
        if self.ownership is not None:
            self._spawn(
                self.ownership.release(file_id), f"releasing the claim on {file_id_hex(file_id)}"
            )

    def wait(self, call: Awaitable[_T]) -> _T:
        """Run `call` on the loop from a worker thread and wait for it."""
        loop = self.loop
        assert loop is not None

        async def run() -> _T:
            return await call

        return asyncio.run_coroutine_threadsafe(run(), loop).result(STEP_TIMEOUT_S)

    # -- events ------------------------------------------------------------------------

    def relay(self, record: dict[str, object]) -> None:
        """An EventHub listener: this node's PUBLISHED and FAILED go on the events stream."""
        if record.get("remote") or record.get("event") not in ("published", "assembly_failed"):
            return
        file_id = FileId(bytes.fromhex(str(record["file_id"])))
        message: Published | Failed | None = None
        if record["event"] == "published":
            done = self.store.published(file_id)
            message = None if done is None else published_message(done)
        else:
            message = self.failure(file_id)
            # its chunks are dropped here; in S3 too, or another node would adopt them
            self._drop_chunks(file_id)
        if message is None or self.cluster is None:
            return
        self._spawn(
            self.cluster.events.publish(file_id, event_payload(message)),
            f"the event of {file_id_hex(file_id)}",
        )

    async def on_event(self, file_id: FileId, payload: bytes) -> None:
        """An event from the stream (any node's, ours too): to the ack port and /events,
        unless this node already told them."""
        try:
            event = event_of(payload)
        except ClusterError as exc:
            log.warning("file_id=%s event ignored: %s", file_id_hex(file_id), exc)
            return
        if event.file_id != file_id or self.known(file_id) or file_id in self._remembered:
            return
        self._remember(event)
        self.acks.publish(file_id, event)
        self._emit(event)

    def _emit(self, event: Published | Failed) -> None:
        hex_id = file_id_hex(event.file_id)
        if isinstance(event, Published):
            self.events.emit(
                "published",
                file_id=hex_id,
                name=event.name,
                size=event.size,
                digest=event.digest.hex(),
                payload_digest=event.payload_digest.hex(),
                replaced=event.replaced,
                remote=True,
            )
        else:
            self.events.emit(
                "assembly_failed",
                file_id=hex_id,
                code=event.code.name,
                error=event.message,
                remote=True,
            )

    def _remember(self, event: Published | Failed) -> None:
        remembered = self._remembered
        remembered[event.file_id] = event
        while len(remembered) > MAX_REMEMBERED:
            remembered.popitem(last=False)

    def final_event(self, file_id: FileId) -> Published | Failed | None:
        """For a late subscriber to an upload this node holds no outcome of: the event
        another node's relayed, else None now and PUBLISHED pushed later if the published
        record exists."""
        event = self._remembered.get(file_id)
        if event is not None:
            return event
        if self.cluster is not None and file_id not in self._looking:
            self._looking.add(file_id)
            self._spawn(self._look_up(file_id), f"the published record of {file_id_hex(file_id)}")
        return None

    async def _look_up(self, file_id: FileId) -> None:
        try:
            record = await self.joined.published.get(file_id)
        finally:
            self._looking.discard(file_id)
        if record is None or self.known(file_id) or file_id in self._remembered:
            return  # not published, or its event came meanwhile
        event = Published(
            file_id=file_id,
            name=record.name,
            size=record.size,
            digest=record.digest,
            payload_digest=record.payload_digest,
            replaced=record.replaced,
        )
        self._remember(event)
        self.acks.publish(file_id, event)


@final
class S3Outputs:
    """AssemblyOutputs of a cluster node: the output of an assembly that writes it in
    order streams into the multipart upload of its file as it is written; the publish
    (ClusteredNode.record) `take`s it and completes it, any other end aborts it."""

    def __init__(self, node: ClusteredNode) -> None:
        self._node = node
        self._writers: dict[FileId, FileWriter] = {}

    def __repr__(self) -> str:
        return f"<S3Outputs writing={len(self._writers)}>"

    async def open(self, info: PayloadInfo) -> Callable[[memoryview], None]:
        """Begin the multipart upload of `info`'s file; the tee that feeds it (from a
        worker thread, each block copied: the assembly reuses its buffers)."""
        writer = await self._node.joined.objects.open_file(info.name)
        stale = self._writers.pop(info.file_id, None)
        if stale is not None:
            await stale.abort()
        self._writers[info.file_id] = writer
        wait = self._node.wait

        def tee(block: memoryview) -> None:
            wait(writer.write(bytes(block)))

        return tee

    async def close(self, file_id: FileId) -> None:
        """The assembly ended: abort its upload unless the publish took it."""
        writer = self._writers.pop(file_id, None)
        if writer is not None:
            await writer.abort()

    def take(self, file_id: FileId) -> FileWriter | None:
        """The upload an assembly of `file_id` streamed into, for its publish (the dict
        is popped from the assembly's thread while the loop waits for that thread)."""
        return self._writers.pop(file_id, None)


def _verify_and_store(store: ChunkStore, chunk: Chunk) -> StoreResult:
    """Commit an adopted chunk after checking it against its digest (on an I/O thread)."""
    verify_chunk(chunk)
    return store.store_chunk(
        file_id=chunk.file_id,
        index=chunk.index,
        total=chunk.total,
        size=chunk.size,
        name=chunk.name,
        payload_digest=chunk.payload_digest,
        digest=chunk.digest,
        data=chunk.data,
        now=time.time(),
        content_size=chunk.content_size,
        content_offset=chunk.content_offset,
    )
