"""The ingest server's binary connections: DataConnection (data ports: chunks in, acks
out) and AckConnection (the ack port), and the seams they see their server through.

I/O shells: both feed the pure MessageDecoder and hand each message to their server.
"""

# Design
# ------
# A data connection keeps up to `max_in_flight` chunks being accepted at once (their ACKs
# carry the request id, so they may leave in any order); past that it stops reading
# until one finishes. A chunk handed to the server runs to its end even if the
# connection breaks meanwhile: only its reply is lost (intake.py). When its port closes
# or the server drains, the connection finishes the chunks in flight, refuses every
# later one with SHUTTING_DOWN, and closes once none is left.
#
# The connections know their server only as DataPortHost or AckPortHost, the Protocols
# below: what they ask of it and what they report to it (counted in its IngestStats).

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final, Generic, Protocol, TypeVar, final

from postoffice.core.connections import ConnectionManager
from postoffice.core.framing import FrameError
from postoffice.core.transport import BaseProtocol, ConnInput
from postoffice.ingest.errors import (
    ErrorCode,
    IngestError,
    IngestLimitError,
    ShuttingDownError,
    error_code,
)
from postoffice.ingest.events import AckHub
from postoffice.ingest.messages import (
    Ack,
    Chunk,
    ErrorReply,
    Failed,
    FileId,
    Message,
    Ping,
    Pong,
    Published,
    Query,
    Status,
    Subscribe,
    Subscribed,
)
from postoffice.ingest.protocol import NEED_DATA, MessageDecoder, encode
from postoffice.ingest.receive import ReceivingDecoder, ReceivingProtocol

__all__ = [
    "MAX_SERVER_SUBSCRIPTIONS",
    "MAX_SUBSCRIBER_BACKLOG_BYTES",
    "MAX_SUBSCRIPTIONS",
    "AckConnection",
    "AckPortHost",
    "DataConnection",
    "DataPortHost",
    "PortHost",
]

log = logging.getLogger(__name__)

#: Past this many bytes queued for a slow ack subscriber, it is dropped: events must not
#: pile up in memory for a client that stopped reading.
MAX_SUBSCRIBER_BACKLOG_BYTES: Final = 8 * 1024 * 1024
#: File ids one ack connection may watch at once: each costs the server a few hundred
#: bytes, so without a bound a client could grow its memory 20 times faster than it sends.
MAX_SUBSCRIPTIONS: Final = 65536
#: File ids watched by all ack connections together: each costs about 370 bytes, so a
#: thousand connections at MAX_SUBSCRIPTIONS each would have cost the server 24 GB. Past
#: it, the connection watching the most is dropped (AckHub.make_room).
MAX_SERVER_SUBSCRIPTIONS: Final = 262_144


class PortHost(Protocol):
    """What every binary connection needs of its server."""

    @property
    def data_manager(self) -> ConnectionManager:
        """Admits and tracks the data and ack connections."""
        ...

    @property
    def max_chunk_bytes(self) -> int:
        """The chunk data limit the decoders apply."""
        ...

    def bad_frame(self, peer: str, error: FrameError) -> None:
        """Report a broken frame; the connection closes."""
        ...

    def message_refused(self, peer: str, error: IngestError) -> None:
        """Report a well-framed message that did not parse; the connection goes on."""
        ...


class DataPortHost(PortHost, Protocol):
    """What a data connection needs of its server."""

    @property
    def max_in_flight(self) -> int:
        """Chunks per connection being accepted at once before it stops reading."""
        ...

    def accept_chunk(self, chunk: Chunk) -> Awaitable[Ack]:
        """The chunk's ACK once durable; raises the IngestError its ERROR reply says."""
        ...

    def answer_query(self, file_id: FileId) -> Status | Awaitable[Status]:
        """The STATUS reply to a QUERY, or an awaitable of it while a cluster decides who
        owns the upload; raises (or the awaitable raises) the IngestError its ERROR reply
        says (MOVED)."""
        ...

    def chunk_refused(self, chunk: Chunk, error: IngestError) -> None:
        """Report a chunk answered with ERROR."""
        ...


class AckPortHost(PortHost, Protocol):
    """What an ack-port connection needs of its server."""

    @property
    def acks(self) -> AckHub:
        """Who subscribed to which file ids."""
        ...

    def final_event(self, file_id: FileId) -> Published | Failed | None:
        """The final event of an upload that already ended, for a late subscriber."""
        ...


H = TypeVar("H", bound=PortHost)


class _FramedConnection(BaseProtocol, Generic[H]):
    """Shared shell: decode frames, answer bad messages with ERROR, close on bad framing."""

    def __init__(self, host: H) -> None:
        super().__init__(host.data_manager)
        self.host = host
        # Chunk digests are checked on the I/O threads (intake.py), not here.
        self.decoder = MessageDecoder(max_chunk_bytes=host.max_chunk_bytes, verify_chunks=False)
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
                self.host.bad_frame(self.peer, exc)
                # The request id is known when the header was readable (a length or
                # CRC-32 error); a bad magic, version or reserved field leaves it unknown.
                request_id = 0 if exc.request_id is None else exc.request_id
                self.send(ErrorReply(code=ErrorCode.BAD_FRAME, message=str(exc)), request_id)
                self.close("bad frame")
                return False
            except IngestError as exc:
                # The frame was whole, so framing holds: refuse this message, keep going.
                self.host.message_refused(self.peer, exc)
                self.send(
                    ErrorReply(code=error_code(exc), message=str(exc)), decoder.last_request_id or 0
                )
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

    def partial_bytes(self) -> int:
        return self.decoder.buffered_bytes


@final
class DataConnection(_FramedConnection[DataPortHost]):
    """A data port client: CHUNK, QUERY and PING."""

    def __init__(self, host: DataPortHost, port_index: int) -> None:
        super().__init__(host)
        self.port_index = port_index
        self._in_flight = 0
        # Tasks of the chunks being accepted, held so none is garbage-collected early.
        self._tasks: set[asyncio.Task[None]] = set()
        # Large chunk payloads are received straight into their own buffer (receive.py).
        self.decoder = self.receiver = ReceivingDecoder(
            max_chunk_bytes=host.max_chunk_bytes, verify_chunks=False
        )
        #: What the listener hands the transport: it reads into the receiver's buffers.
        self.protocol = ReceivingProtocol(self, self.receiver)

    def on_data(self, data: bytes) -> ConnInput | None:
        self.decoder.feed(data)
        if not self._drain_messages():
            return ConnInput.IDLE
        self.receiver.take_over()
        return self._outcome()

    def partial_bytes(self) -> int:
        return self.receiver.held_bytes

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

    def shutdown_requested(self) -> None:
        """The port closes (CONFIG SET x) or the server drains: "in flight" means the chunks
        handed to the server before now; they finish and are answered, every chunk after
        them is refused with SHUTTING_DOWN (`closing` is set), and the connection closes
        once none is left. Refusing, rather than leaving the chunks unread, answers a client
        that keeps sending instead of waiting for it for ever."""
        self.close_when_done("server shutdown")

    def handle(self, request_id: int, message: Message) -> None:
        match message:
            case Chunk() if self.closing:
                error = ShuttingDownError(f"data port is closing, chunk {message.index} not stored")
                self.host.chunk_refused(message, error)
                self.send(ErrorReply(code=error_code(error), message=str(error)), request_id)
            case Chunk():
                self._in_flight += 1
                if self._in_flight >= self.host.max_in_flight:
                    self.pause_reading()
                task = asyncio.ensure_future(self._accept(request_id, message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            case Query(file_id=file_id):
                try:
                    status = self.host.answer_query(file_id)
                except IngestError as exc:
                    self.send(ErrorReply(code=error_code(exc), message=str(exc)), request_id)
                    return
                if isinstance(status, Status):
                    self.send(status, request_id)
                    return
                task = asyncio.ensure_future(self._answer_query(request_id, status))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
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

    async def _answer_query(self, request_id: int, status: Awaitable[Status]) -> None:
        """Answer a QUERY once the cluster has decided who owns its upload."""
        reply: Message
        try:
            reply = await status
        except IngestError as exc:
            reply = ErrorReply(code=error_code(exc), message=str(exc))
        except Exception as exc:
            log.exception("query failed conn=%s", self)
            reply = ErrorReply(code=ErrorCode.STORAGE, message=f"internal error: {exc!r}")
        if self.transport is not None:
            self.send(reply, request_id)

    async def _accept(self, request_id: int, chunk: Chunk) -> None:
        try:
            reply: Message = await self.host.accept_chunk(chunk)
        except IngestError as exc:
            reply = ErrorReply(code=error_code(exc), message=str(exc))
            self.host.chunk_refused(chunk, exc)
        except Exception as exc:
            log.exception("chunk failed conn=%s file_id=%s", self, chunk.file_id.hex())
            reply = ErrorReply(code=ErrorCode.STORAGE, message=f"internal error: {exc!r}")
        self._in_flight -= 1
        self.send(reply, request_id)
        if self._in_flight < self.host.max_in_flight:
            self.resume_reading()
        if not self._in_flight and self.transport is not None:
            self.batch_done(ConnInput.PARTIAL if self.decoder.buffered_bytes else ConnInput.IDLE)


@final
class AckConnection(_FramedConnection[AckPortHost]):
    """An ack port client: SUBSCRIBE to file ids, then receive their events."""

    def __init__(self, host: AckPortHost) -> None:
        super().__init__(host)
        self.watching: set[FileId] = set()

    def on_data(self, data: bytes) -> ConnInput | None:
        self.decoder.feed(data)
        self._drain_messages()
        return ConnInput.PARTIAL if self.decoder.buffered_bytes else ConnInput.IDLE

    def on_close(self) -> None:
        self.host.acks.unsubscribe(self)

    def can_idle_close(self) -> bool:
        return False  # a subscriber waits quietly for its PUBLISHED event

    def handle(self, request_id: int, message: Message) -> None:
        match message:
            case Subscribe(file_ids=file_ids):
                acks = self.host.acks
                added = sum(fid not in self.watching for fid in set(file_ids))
                watching = len(self.watching) + added
                error = None
                if watching > MAX_SUBSCRIPTIONS:
                    error = IngestLimitError(
                        f"subscriptions of {watching} file ids on one connection exceed "
                        f"limit {MAX_SUBSCRIPTIONS}"
                    )
                elif not acks.make_room(self, added):
                    error = IngestLimitError(
                        f"subscriptions of {acks.watched + added} file ids on the server "
                        f"exceed limit {acks.limit}"
                    )
                if error is not None:
                    self.host.message_refused(self.peer, error)
                    self.send(ErrorReply(code=error_code(error), message=str(error)), request_id)
                    return
                self.host.acks.subscribe(self, file_ids)
                self.send(Subscribed(file_ids=file_ids), request_id)
                for file_id in file_ids:
                    done = self.host.final_event(file_id)
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
