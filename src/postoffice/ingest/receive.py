"""A data connection's read side: large CHUNK payloads are received straight into a buffer
of their own (asyncio's BufferedProtocol), instead of being gathered and joined.

Ingest layer; ReceivingDecoder is pure, ReceivingProtocol is the asyncio shell around a
DataConnection.
"""

# Design
# ------
# Between large frames the socket is read into a scratch buffer that every connection
# of the process shares, and those bytes (copied out) go to the MessageDecoder as they
# did through data_received. When the frame decoder starts gathering a large payload
# of a self-checked frame (its header has arrived, most of its payload has not),
# ReceivingDecoder takes the payload over (FrameDecoder.detach_payload): it allocates
# one bytearray of the payload's length, copies in what came so far, and hands out the
# rest of that bytearray as the next receive buffers, so the kernel writes the payload
# where it stays: no bytes object per read and no join. A receive buffer never reaches
# past the payload, so the bytes after it come through the scratch buffer again. The
# complete payload is decoded like any frame (protocol.decode_parts: the chunk's data is
# a view of the bytearray) and comes out of next_event before anything else, which is
# right because nothing after it has been read yet. Frames with a CRC-32 to check, and
# small frames, take the usual road.
#
# uvloop reads into get_buffer() only for a protocol that is not an asyncio.Protocol,
# and every connection here is one (core.transport.BaseProtocol), so ReceivingProtocol
# is a thin asyncio.BufferedProtocol in front of the DataConnection: it forwards the
# transport's callbacks, and gives it the scratch bytes through data_received.

from __future__ import annotations

import asyncio
from typing import Final, Protocol, final

from postoffice.core.framing import HEADER_BYTES
from postoffice.ingest.messages import Message
from postoffice.ingest.protocol import NEED_DATA, MessageDecoder, NeedData, decode_parts

__all__ = ["SCRATCH_BYTES", "ReceivingConnection", "ReceivingDecoder", "ReceivingProtocol"]

#: The receive buffer between large payloads: as much as one read usually brings.
SCRATCH_BYTES: Final = 256 * 1024
#: One scratch buffer for every connection of the process: uvloop reads a socket into
#: get_buffer()'s memory and calls buffer_updated() before it reads any other socket,
#: and buffer_updated() copies out what arrived, so no connection's bytes are still in
#: it when the next read begins. (One per connection cost 256 KiB of resident memory
#: each: a quarter of a gigabyte for a thousand idle uploaders.) The process runs one
#: event loop (DESIGN.md), so no two threads read into it.
_SCRATCH: Final = bytearray(SCRATCH_BYTES)


@final
class ReceivingDecoder(MessageDecoder):
    """A MessageDecoder that also says where the next bytes from the socket go.

    Call `get_buffer()` for the buffer to receive into, then `buffer_updated(n)`: it
    returns the bytes for `feed` when they went to the scratch buffer, or None when they
    were payload bytes (then call `next_event` when `payload_complete`). After handling
    fed bytes, call `take_over()` so a large payload that has begun is read directly.
    The limits and errors are MessageDecoder's.
    """

    __slots__ = (
        "_filled",
        "_header",
        "_into",
        "_max_chunk_bytes",
        "_scratch",
        "_scratch_out",
        "_verify_chunks",
    )

    def __init__(
        self,
        *,
        max_payload_bytes: int | None = None,
        max_chunk_bytes: int,
        verify_chunks: bool = True,
    ) -> None:
        super().__init__(
            max_payload_bytes=max_payload_bytes,
            max_chunk_bytes=max_chunk_bytes,
            verify_chunks=verify_chunks,
        )
        self._max_chunk_bytes = max_chunk_bytes
        self._verify_chunks = verify_chunks
        self._scratch = _SCRATCH
        self._scratch_out = True  # the last buffer handed out was the scratch buffer
        self._into: bytearray | None = None  # the payload being received directly
        self._filled = 0
        self._header = (0, 0, 0)  # type, flags, request id of that payload's frame

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet decoded, the directly received payload's included."""
        into = 0 if self._into is None else HEADER_BYTES + self._filled
        return super().buffered_bytes + into

    @property
    def held_bytes(self) -> int:
        """Memory the partial frame holds: the buffered bytes, and the whole buffer of a
        payload being received directly (allocated at its full length)."""
        into = 0 if self._into is None else len(self._into)
        return super().buffered_bytes + into

    @property
    def payload_complete(self) -> bool:
        """Whether a directly received payload is whole and waits for next_event."""
        return self._into is not None and self._filled == len(self._into)

    def get_buffer(self) -> memoryview:
        """Where the next received bytes go: the rest of the payload being received, or
        the scratch buffer."""
        into = self._into
        if into is not None and self._filled < len(into):
            self._scratch_out = False
            return memoryview(into)[self._filled :]
        self._scratch_out = True
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> bytes | None:
        """Account for `nbytes` written into the last buffer; the bytes themselves when
        they are for `feed` (they went to the scratch buffer), else None."""
        if self._scratch_out:
            return bytes(memoryview(self._scratch)[:nbytes])
        self._filled += nbytes
        return None

    def take_over(self) -> None:
        """Receive the rest of a large payload that the frame decoder has begun to gather
        straight into its own buffer (see the design note); no-op otherwise."""
        if self._into is not None:
            return
        detached = self.frames.detach_payload()
        if detached is None:
            return
        type_, flags, request_id, length, blocks = detached
        into = bytearray(length)
        filled = 0
        for block in blocks:
            into[filled : filled + len(block)] = block
            filled += len(block)
        self._into, self._filled, self._header = into, filled, (type_, flags, request_id)

    def next_event(self) -> tuple[int, Message] | NeedData:
        """The directly received payload's message once it is whole, else as
        MessageDecoder.next_event."""
        into = self._into
        if into is None:
            return super().next_event()
        if self._filled < len(into):
            return NEED_DATA
        type_, flags, request_id = self._header
        self._into = None
        self._filled = 0
        self._last_request_id = request_id
        message = decode_parts(
            type_,
            flags,
            into,
            max_chunk_bytes=self._max_chunk_bytes,
            verify_chunks=self._verify_chunks,
        )
        return request_id, message


class ReceivingConnection(Protocol):
    """The connection behind a ReceivingProtocol (connections.DataConnection): the
    transport's callbacks, and `payload_received` for bytes read straight into a payload."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def eof_received(self) -> bool | None: ...

    def data_received(self, data: bytes) -> None: ...

    def payload_received(self, nbytes: int) -> None:
        """`nbytes` more of a large payload arrived in the decoder's own buffer."""
        ...


@final
class ReceivingProtocol(asyncio.BufferedProtocol):
    """The transport's protocol for a data connection: reads into its decoder's buffers
    and forwards every other callback (see the design note)."""

    __slots__ = ("conn", "decoder")

    def __init__(self, conn: ReceivingConnection, decoder: ReceivingDecoder) -> None:
        self.conn = conn
        self.decoder = decoder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()

    def eof_received(self) -> bool | None:
        return self.conn.eof_received()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        data = self.decoder.buffer_updated(nbytes)
        if data is not None:
            self.conn.data_received(data)
        else:
            self.conn.payload_received(nbytes)
