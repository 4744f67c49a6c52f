"""One end of the primary <-> worker control channel: the asyncio shell around channel.py.

Calls either way are answered out of order by request id, each with a deadline, so a
side that stops answering costs an error, never a hang. Control plane only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Final, cast, final

from postoffice.command.channel import (
    Call,
    Failure,
    Message,
    Notice,
    Result,
    channel_stream,
    encode_message,
)
from postoffice.command.errors import CommandError, WorkerUnavailableError
from postoffice.core.errors import PostOfficeError, ProtocolError
from postoffice.core.framing import MAX_REQUEST_ID, NEED_DATA

log = logging.getLogger(__name__)

#: Answers a CALL: a JSON value, or an awaitable of one; raise PostOfficeError to refuse.
CallHandler = Callable[[str, dict[str, object]], object]
NoticeHandler = Callable[[str, dict[str, object]], None]

_RUNNING: Final = "running"


@final
class Link(asyncio.Protocol):
    """A channel end: `call` the peer, `notify` it; its calls go to `on_call`.

    `peer` names the other side in error messages ("worker 1", "the primary").
    `on_lost` runs once when the channel closes (EOF, error, or `close`).
    """

    def __init__(
        self,
        peer: str,
        *,
        on_call: CallHandler,
        on_notice: NoticeHandler,
        on_lost: Callable[[], None],
    ) -> None:
        self.peer = peer
        self._on_call = on_call
        self._on_notice = on_notice
        self._on_lost = on_lost
        self._stream = channel_stream()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple[asyncio.Future[object], str]] = {}
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._lost = False

    def __repr__(self) -> str:
        state = "closed" if self._lost else _RUNNING
        return f"<Link peer={self.peer!r} {state} pending={len(self._pending)}>"

    @property
    def connected(self) -> bool:
        """Whether the channel is open."""
        return self._transport is not None and not self._lost

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        stream = self._stream
        stream.feed(data)
        while True:
            try:
                event = stream.next_event()
            except ProtocolError as exc:
                if stream.failed:
                    log.error("control channel broken peer=%s error=%r", self.peer, str(exc))
                    self.close()
                    return
                log.error("bad control message peer=%s error=%r", self.peer, str(exc))
                request_id = stream.last_request_id or 0
                if request_id:
                    self._send(request_id, Failure(message=str(exc)))
                continue
            if event is NEED_DATA:
                return
            request_id, message = event
            self._dispatch(request_id, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._closed(f"{self.peer} went away before answering")

    # -- calls and notices -------------------------------------------------------------

    def call(
        self, op: str, args: dict[str, object], *, timeout_s: float, label: str
    ) -> asyncio.Future[object]:
        """Ask the peer to run `op`; the future holds its answer.

        The future fails with WorkerUnavailableError naming the peer and `label` (what
        the client asked, such as "CLIENT LIST") when the peer does not answer within
        `timeout_s`, goes away first, or the channel is closed already; with CommandError
        when the peer refuses (its message is kept) or the call cannot be encoded.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            future.set_exception(WorkerUnavailableError(f"{self.peer} is not running ({label})"))
            return future
        self._next_id = self._next_id % MAX_REQUEST_ID + 1
        request_id = self._next_id
        try:
            wire = encode_message(request_id, Call(op=op, args=args))
        except PostOfficeError as exc:
            future.set_exception(CommandError(f"{label} cannot be asked of {self.peer}: {exc}"))
            return future
        self._pending[request_id] = (future, label)
        timer = loop.call_later(timeout_s, self._expire, request_id, timeout_s)
        future.add_done_callback(lambda _: timer.cancel())
        transport.write(wire)
        return future

    def notify(self, event: str, args: dict[str, object] | None = None) -> bool:
        """Send a one-way notice; whether the channel was open to take it."""
        if not self.connected:
            return False
        self._send(0, Notice(event=event, args=args or {}))
        return True

    def close(self) -> None:
        """Close the channel; pending calls fail."""
        if self._transport is not None:
            self._transport.close()
        self._closed(f"the channel to {self.peer} closed before an answer")

    # -- internals ---------------------------------------------------------------------

    def _send(self, request_id: int, message: Message) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            transport.write(encode_message(request_id, message))
        except PostOfficeError as exc:  # an answer too large or not JSON: say so instead
            log.error("control message not sent peer=%s error=%r", self.peer, str(exc))
            if request_id and isinstance(message, Result):
                transport.write(encode_message(request_id, Failure(message=str(exc))))

    def _dispatch(self, request_id: int, message: Message) -> None:
        match message:
            case Call(op=op, args=args):
                self._answer(request_id, op, args)
            case Result(value=value):
                entry = self._pending.pop(request_id, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_result(value)
            case Failure(message=text):
                entry = self._pending.pop(request_id, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(CommandError(text))
            case Notice(event=event, args=args):
                try:
                    self._on_notice(event, args)
                except Exception:
                    log.exception("control notice failed peer=%s event=%s", self.peer, event)

    def _answer(self, request_id: int, op: str, args: dict[str, object]) -> None:
        try:
            value = self._on_call(op, args)
        except PostOfficeError as exc:
            self._send(request_id, Failure(message=str(exc)))
            return
        except Exception as exc:  # a bug costs one answer, not the channel
            log.exception("control call failed peer=%s op=%s", self.peer, op)
            self._send(request_id, Failure(message=f"internal error: {exc!r}"))
            return
        if inspect.isawaitable(value):
            task = asyncio.get_running_loop().create_task(self._answer_later(request_id, value))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._send(request_id, Result(value=value))

    async def _answer_later(self, request_id: int, value: Awaitable[object]) -> None:
        try:
            result = await value
        except PostOfficeError as exc:
            self._send(request_id, Failure(message=str(exc)))
        except Exception as exc:
            log.exception("control call failed peer=%s", self.peer)
            self._send(request_id, Failure(message=f"internal error: {exc!r}"))
        else:
            self._send(request_id, Result(value=result))

    def _expire(self, request_id: int, timeout_s: float) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None and not entry[0].done():
            future, label = entry
            future.set_exception(
                WorkerUnavailableError(f"{self.peer} did not answer {label} within {timeout_s:g} s")
            )

    def _closed(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for future, label in pending.values():
            if not future.done():
                future.set_exception(WorkerUnavailableError(f"{why} ({label})"))
        if not self._lost:
            self._lost = True
            for task in self._tasks:
                task.cancel()
            self._on_lost()


__all__ = ["CallHandler", "Link", "NoticeHandler"]
