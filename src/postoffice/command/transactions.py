"""MULTI, EXEC and DISCARD: a connection's queued commands, and EXEC's one reply for them.

Part of the command server; the connection keeps a Transaction while MULTI is open and
runs its queue at EXEC in one step on the loop (docs/compatibility.md: what that holds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final, final

from postoffice.command.commands import CommandSpec
from postoffice.command.errors import TransactionLimitError
from postoffice.command.keyspace import Answer, Deferred, Durable, engine_refusal, settle
from postoffice.core.resp import Array, Error, Reply, SimpleString

#: Commands one transaction may queue: each is held until EXEC, and EXEC answers them in
#: one array, so a client that never sends EXEC holds no more than this.
MAX_QUEUED_COMMANDS: Final = 10_000
#: Bytes of arguments one transaction may queue (four of the largest bulk strings).
MAX_QUEUED_BYTES: Final = 32 * 1024 * 1024
#: Per argument, what holding it costs beyond its bytes (a Python bytes object and its
#: place in a list), counted against MAX_QUEUED_BYTES so that many empty ones count too.
ARG_OVERHEAD_BYTES: Final = 48

QUEUED: Final = SimpleString(text="QUEUED")
#: Redis's words for an EXEC after a command was refused while queuing.
EXECABORT: Final = Error(
    code="EXECABORT", message="Transaction discarded because of previous errors."
)
NOT_IN_MULTI: Final = "Command not allowed inside a transaction"


@final
class Transaction:
    """The commands queued since MULTI, and whether one was refused meanwhile (then EXEC
    answers EXECABORT and runs none, as Redis's does)."""

    __slots__ = ("aborted", "queued", "queued_bytes")

    def __init__(self) -> None:
        self.queued: list[tuple[CommandSpec, list[bytes]]] = []
        self.queued_bytes = 0
        self.aborted = False

    def __repr__(self) -> str:
        state = " aborted" if self.aborted else ""
        return f"<Transaction queued={len(self.queued)} bytes={self.queued_bytes}{state}>"

    def queue(self, spec: CommandSpec, args: list[bytes]) -> Reply:
        """Queue one command (checked for its name and arity already): QUEUED.

        Raises TransactionLimitError past MAX_QUEUED_COMMANDS or MAX_QUEUED_BYTES, and
        marks the transaction aborted.
        """
        size = sum(map(len, args)) + ARG_OVERHEAD_BYTES * len(args)
        if len(self.queued) >= MAX_QUEUED_COMMANDS:
            self.aborted = True
            raise TransactionLimitError(
                f"transaction of {len(self.queued) + 1} commands exceeds limit "
                f"{MAX_QUEUED_COMMANDS}"
            )
        if self.queued_bytes + size > MAX_QUEUED_BYTES:
            self.aborted = True
            raise TransactionLimitError(
                f"transaction of {self.queued_bytes + size} bytes exceeds limit {MAX_QUEUED_BYTES}"
            )
        self.queued.append((spec, args))
        self.queued_bytes += size
        return QUEUED


@final
class _SyncFuture:
    """A durable write's fsync as a future, for an EXEC that also waits for a store."""

    __slots__ = ("future", "ticket")

    def __init__(self, durable: Durable) -> None:
        self.ticket = durable.ticket
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        durable.commit.wait(self, durable.ticket)

    def synced(self, covered: int, error: BaseException | None) -> bool:
        if self.future.done():
            return False
        if error is not None:
            self.future.set_exception(error)
            return False
        if covered >= self.ticket:
            self.future.set_result(None)
            return False
        return True


def exec_reply(answers: Sequence[Answer]) -> Answer:
    """EXEC's answer: the array of the queued commands' replies, in order.

    At once when every one is; a Durable when some wait for their fsync (the last one
    covers them all); a Deferred when some wait for a store server, every Durable among
    them waited for as well.
    """
    replies: list[Reply] = []
    durables: list[Durable] = []
    deferred = False
    for answer in answers:
        if isinstance(answer, Deferred):
            deferred = True
        elif isinstance(answer, Durable):
            durables.append(answer)
            replies.append(answer.reply)
        else:
            replies.append(answer)
    if not deferred:
        if not durables:
            return Array(items=replies)
        last = max(durables, key=lambda d: d.ticket)
        return Durable(ticket=last.ticket, reply=Array(items=replies), commit=last.commit)
    waits: list[asyncio.Future[Any]] = []
    synced: dict[int, _SyncFuture] = {}
    for i, answer in enumerate(answers):
        if isinstance(answer, Deferred):
            waits.append(answer.future)
        elif isinstance(answer, Durable):
            synced[i] = _SyncFuture(answer)
            waits.append(synced[i].future)

    def finish(_: object) -> Reply:
        items: list[Reply] = []
        for i, answer in enumerate(answers):
            if isinstance(answer, Deferred):
                items.append(settle(answer))
            elif isinstance(answer, Durable):
                future = synced[i].future
                exc = None if future.cancelled() else future.exception()
                if exc is None:
                    items.append(answer.reply)
                else:
                    refusal = engine_refusal(exc)
                    items.append(Error(code=refusal.wire_code, message=str(refusal)))
            else:
                items.append(answer)
        return Array(items=items)

    return Deferred(asyncio.gather(*waits, return_exceptions=True), finish)


__all__ = [
    "EXECABORT",
    "MAX_QUEUED_BYTES",
    "MAX_QUEUED_COMMANDS",
    "NOT_IN_MULTI",
    "QUEUED",
    "Transaction",
    "exec_reply",
]
