"""The ingest server's binary connections: data ports (chunks in, acks out) and the ack port.

Both feed the pure MessageDecoder and hand each message to the server. A data connection
keeps up to `max_in_flight` chunks being stored at once (their ACKs carry the request id,
so they may leave in any order); past that it stops reading until one finishes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, final

from postoffice.core.framing import FrameError
from postoffice.core.transport import BaseProtocol, ConnInput
from postoffice.ingest.errors import ErrorCode, IngestError, ShuttingDownError
from postoffice.ingest.messages import (
    Chunk,
    ErrorReply,
    FileId,
    Message,
    Ping,
    Pong,
    Query,
    Subscribe,
    Subscribed,
)
from postoffice.ingest.protocol import NEED_DATA, MessageDecoder, encode
from postoffice.ingest.receive import ReceivingDecoder, ReceivingProtocol

if TYPE_CHECKING:
    from postoffice.ingest.server import IngestServer

log = logging.getLogger(__name__)

#: Past this many bytes queued for a slow ack subscriber, it is dropped: events must not
#: pile up in memory for a client that stopped reading.
MAX_SUBSCRIBER_BACKLOG_BYTES: Final = 8 * 1024 * 1024


class _FramedConnection(BaseProtocol):
    """Shared shell: decode frames, answer bad messages with ERROR, close on bad framing."""

    def __init__(self, server: IngestServer) -> None:
        super().__init__(server.data_manager)
        self.server = server
        # Chunk hashes are checked on the I/O threads (IngestServer.accept_chunk), not here.
        self.decoder = MessageDecoder(
            max_chunk_bytes=server.config.max_chunk_bytes, verify_chunks=False
        )
        # Messages sent in this loop iteration, written together at its end: a batch of
        # publishes answers many chunks and events at once, and each write is a syscall.
        self._outbox: list[bytes] | None = None

    def reject(self, reason: str) -> None:
        self.send(ErrorReply(code=ErrorCode.TOO_LARGE, message=reason), 0)
        self.close(reason)

    def send(self, message: Message, request_id: int) -> None:
        """Encode and queue one message; it leaves with the others sent in this loop
        iteration, in order, in one write."""
        data = encode(message, request_id)
        outbox = self._outbox
        if outbox is None:
            self._outbox = [data]
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            outbox.append(data)

    def flush(self) -> None:
        """Write the queued messages now."""
        outbox, self._outbox = self._outbox, None
        if outbox:
            self.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))

    def close(self, reason: str, *, linger: bool = True) -> None:
        self.flush()  # the replies queued so far (an ERROR saying why, often) go first
        super().close(reason, linger=linger)

    def _drain_messages(self) -> bool:
        """Handle every complete message; False once the connection is closing."""
        decoder = self.decoder
        while True:
            try:
                event = decoder.next_event()
            except FrameError as exc:
                self.server.protocol_errors += 1
                log.info("bad frame conn=%s error=%r", self, str(exc))
                self.server.events.emit("protocol_error", peer=self.peer, error=str(exc))
                # The request id is known when the header was readable (a length or
                # CRC-32 error); a bad magic, version or reserved field leaves it unknown.
                request_id = 0 if exc.request_id is None else exc.request_id
                self.send(ErrorReply(code=ErrorCode.BAD_FRAME, message=str(exc)), request_id)
                self.close("bad frame")
                return False
            except IngestError as exc:
                # The frame was whole, so framing holds: refuse this message, keep going.
                self.server.protocol_errors += 1
                self.server.events.emit(
                    "message_refused", peer=self.peer, code=exc.code.name, error=str(exc)
                )
                self.send(ErrorReply(code=exc.code, message=str(exc)), decoder.last_request_id or 0)
                continue
            if event is NEED_DATA:
                return True
            request_id, message = event
            self.requests += 1
            self.handle(request_id, message)
            if self.transport is None or self.close_reason:
                return False

    def handle(self, request_id: int, message: Message) -> None:
        raise NotImplementedError


@final
class DataConnection(_FramedConnection):
    """A data port client: CHUNK, QUERY and PING."""

    def __init__(self, server: IngestServer, port_index: int) -> None:
        super().__init__(server)
        self.port_index = port_index
        self._in_flight = 0
        # Set when its port closes or the server drains: chunks in flight are finished
        # and answered, new ones are refused, and the connection closes once none is left.
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Large chunk payloads are received straight into their own buffer (receive.py).
        self.decoder = self.receiver = ReceivingDecoder(
            max_chunk_bytes=server.config.max_chunk_bytes, verify_chunks=False
        )
        #: What the listener hands the transport: it reads into the receiver's buffers.
        self.protocol = ReceivingProtocol(self, self.receiver)

    def on_connect(self) -> None:
        self.server.data_connections[self.port_index].add(self)

    def on_close(self) -> None:
        # Chunks being stored run to the end (their replies are dropped): one that commits
        # must still be announced on the ack port and started on its assembly, and that
        # happens after the store, in the task a cancel would cut short.
        self.server.data_connections[self.port_index].discard(self)

    def on_data(self, data: bytes) -> ConnInput | None:
        self.decoder.feed(data)
        if not self._drain_messages():
            return ConnInput.IDLE
        self.receiver.take_over()
        return self._outcome()

    def payload_received(self, nbytes: int) -> None:
        """`nbytes` more of a large payload arrived in its own buffer (receive.py)."""
        if not self.receiver.payload_complete:
            self.bytes_in += nbytes
            self.last_active = self.manager.clock()
            return
        self.data_received(b"")  # the chunk is whole: handle it as bytes are handled
        self.bytes_in += nbytes

    def _outcome(self) -> ConnInput | None:
        if self._in_flight:
            return None
        return ConnInput.PARTIAL if self.decoder.buffered_bytes else ConnInput.IDLE

    def can_idle_close(self) -> bool:
        return not self._in_flight and super().can_idle_close()

    def shutdown_requested(self) -> None:
        """The port closes (CONFIG SET x) or the server drains: "in flight" means the chunks
        handed to the server before now; they finish and are answered, every chunk after
        them is refused with SHUTTING_DOWN, and the connection closes once none is left.
        (Closing only after a batch with nothing in flight, as the base class does, waits
        for ever on a client that keeps sending.)"""
        self.draining = True
        if not self._in_flight:
            self.close("server shutdown")

    def handle(self, request_id: int, message: Message) -> None:
        match message:
            case Chunk() if self.draining:
                error = ShuttingDownError(f"data port is closing, chunk {message.index} not stored")
                self._refused(message, error)
                self.send(ErrorReply(code=error.code, message=str(error)), request_id)
            case Chunk():
                self._in_flight += 1
                if self._in_flight >= self.server.config.max_in_flight:
                    self.pause_reading()
                task = asyncio.ensure_future(self._store(request_id, message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            case Query(file_id=file_id):
                self.send(self.server.query(file_id), request_id)
            case Ping():
                self.send(Pong(), request_id)
            case _:
                self.send(
                    ErrorReply(
                        code=ErrorCode.BAD_MESSAGE,
                        message=f"{type(message).__name__.lower()} is not accepted on a data port",
                    ),
                    request_id,
                )

    def _refused(self, chunk: Chunk, exc: IngestError) -> None:
        self.server.events.emit(
            "chunk_refused",
            file_id=chunk.file_id.hex(),
            index=chunk.index,
            code=exc.code.name,
            error=str(exc),
        )

    async def _store(self, request_id: int, chunk: Chunk) -> None:
        try:
            reply: Message = await self.server.accept_chunk(chunk)
        except IngestError as exc:
            reply = ErrorReply(code=exc.code, message=str(exc))
            self._refused(chunk, exc)
        except Exception as exc:
            log.exception("chunk failed conn=%s file_id=%s", self, chunk.file_id.hex())
            reply = ErrorReply(code=ErrorCode.STORAGE, message=f"internal error: {exc!r}")
        self._in_flight -= 1
        self.send(reply, request_id)
        if self._in_flight < self.server.config.max_in_flight:
            self.resume_reading()
        if not self._in_flight and self.transport is not None:
            if self.draining:
                self.close("server shutdown")
                return
            self.batch_done(ConnInput.PARTIAL if self.decoder.buffered_bytes else ConnInput.IDLE)


@final
class AckConnection(_FramedConnection):
    """An ack port client: SUBSCRIBE to file ids, then receive their events."""

    def __init__(self, server: IngestServer) -> None:
        super().__init__(server)
        self.watching: set[FileId] = set()

    def on_data(self, data: bytes) -> ConnInput | None:
        self.decoder.feed(data)
        self._drain_messages()
        return ConnInput.PARTIAL if self.decoder.buffered_bytes else ConnInput.IDLE

    def on_close(self) -> None:
        self.server.acks.unsubscribe(self)

    def can_idle_close(self) -> bool:
        return False  # a subscriber waits quietly for its PUBLISHED event

    def handle(self, request_id: int, message: Message) -> None:
        match message:
            case Subscribe(file_ids=file_ids):
                self.watching.update(file_ids)
                self.server.acks.subscribe(self, file_ids)
                self.send(Subscribed(file_ids=file_ids), request_id)
                for file_id in file_ids:
                    done = self.server.published_message(file_id)
                    if done is not None:
                        self.send(done, 0)
            case Ping():
                self.send(Pong(), request_id)
            case _:
                self.send(
                    ErrorReply(
                        code=ErrorCode.BAD_MESSAGE,
                        message=f"{type(message).__name__.lower()} is not accepted on the ack port",
                    ),
                    request_id,
                )

    def push(self, message: Message) -> None:
        """Send an event, dropping a subscriber that stopped reading."""
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > MAX_SUBSCRIBER_BACKLOG_BYTES:
            log.warning("ack subscriber too slow, dropped conn=%s", self)
            self.abort("subscriber too slow")
            return
        self.send(message, 0)


@final
class AckHub:
    """Which ack connections watch which file ids."""

    def __init__(self) -> None:
        self._by_file: dict[FileId, set[AckConnection]] = {}

    def subscribe(self, conn: AckConnection, file_ids: tuple[FileId, ...]) -> None:
        for file_id in file_ids:
            self._by_file.setdefault(file_id, set()).add(conn)

    def unsubscribe(self, conn: AckConnection) -> None:
        for file_id in conn.watching:
            watchers = self._by_file.get(file_id)
            if watchers is not None:
                watchers.discard(conn)
                if not watchers:
                    del self._by_file[file_id]

    def publish(self, file_id: FileId, message: Message) -> None:
        """Send `message` to every connection watching `file_id`."""
        for conn in list(self._by_file.get(file_id, ())):
            conn.push(message)

    @property
    def subscriptions(self) -> int:
        """File ids watched by at least one connection."""
        return len(self._by_file)
