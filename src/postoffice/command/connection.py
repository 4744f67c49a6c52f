"""The command server's connection: one asyncio Protocol per client, in either dialect.

Bytes go to the pure RespParser; each command goes through the table in `commands`;
replies of one batch of pipelined commands leave in one write. A `blocking` command runs
in the worker pool while the connection stops reading, so replies keep request order;
BLPOP/BRPOP wait for a push (still reading), and MULTI queues commands until EXEC.
Keyspace commands answered later (a `Deferred` of the remote keyspace, a `Durable` write
of the embedded one) wait in a queue with every reply behind them, in request order.
"""

# Design
# ------
# The batch loop (`_run_buffered`) runs the commands a read brought, in order, until one
# of these makes it stop where it is; each has one way back, and the next command is
# always the one the parser (or `_held`) gives next, so replies keep request order:
#
#   a reply to come later      a blocking command in the pool (`_busy`), a held AUTH
#                              failure, a BLPOP waiting for a push (`_busy`, `_waiter`;
#                              reading goes on, so a client that leaves is seen),
#                              keyspace replies owed (`_stalled`): the callback that
#                              answers them goes on
#
# Between MULTI and EXEC (`_transaction`) every command but EXEC, DISCARD, MULTI and QUIT
# is checked and queued, not run; EXEC runs the queue in one call, so in one step of the
# loop, and its one reply takes its place in request order like any other.
#   the peer is not reading    replies are written every REPLY_BUDGET_BYTES, not once per
#                              read; once a write leaves the transport past its high-water
#                              mark (`write_blocked`) no further command runs until the
#                              peer catches up (`_parked`; `on_writable` goes on). So a
#                              pipelined flood of GETs of a large value holds about one
#                              budget of replies beyond the transport's buffer, never the
#                              whole read's, and the core's output limits can act
#   its turn is over           after SLICE_COMMANDS commands, or SLICE_S seconds of them
#                              (the clock read every CLOCK_EVERY commands, to keep it off
#                              the hot path), the loop hands the event loop back to the
#                              other clients (`_yielded`, reading paused) and goes on from
#                              a `call_soon`, as Redis serves a client one read of 16 KiB
#                              at a time
#
# Replies owed behind a durable write are held in memory until its fsync: past
# REPLY_BUDGET_BYTES of them the loop stalls too, as the store server does.

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Final, Protocol, final

from postoffice.command.blocking import BlockedClients, Waiter, parse_timeout
from postoffice.command.commands import LOOKUP, CommandSpec, ServerView
from postoffice.command.config import CommandConfig
from postoffice.command.errors import CommandError, RateLimitedError, RespProtocolError
from postoffice.command.keyspace import Answer, Deferred, Durable, engine_refusal, settle
from postoffice.command.stats import CommandStats
from postoffice.command.tracing import TracedRun, command_span
from postoffice.command.transactions import EXECABORT, NOT_IN_MULTI, Transaction, exec_reply
from postoffice.core.errors import ClosedError, ConfigError, PostOfficeError
from postoffice.core.resp import (
    AUTH_FAILURES_CLOSE,
    LARGE_BULK_BYTES,
    NEED_DATA,
    NOAUTH,
    OK,
    AuthThrottle,
    Bulk,
    Dialect,
    Error,
    Reply,
    RespParser,
    RespRefusal,
    WrongPassError,
    bulk_parts,
    encode_resp,
    encode_resp3,
    encode_text,
)
from postoffice.core.tracing import active as active_tracing
from postoffice.core.transport import (
    WRITE_HIGH_WATER_BYTES,
    Admission,
    BaseProtocol,
    ConnInput,
)
from postoffice.core.workers import WorkerPool
from postoffice.store import OwedReplies

log = logging.getLogger(__name__)

_PENDING: Final = Error(code="PENDING", message="in the worker pool")  # never sent
MAX_STORE_IN_FLIGHT: Final = 1024  # store commands of one client awaiting the store
_IDLE: Final = ConnInput.IDLE
#: Replies of one batch are written once they pass this many bytes: the transport's
#: high-water mark, so a peer that does not read blocks the write side at the first one.
REPLY_BUDGET_BYTES: Final = WRITE_HIGH_WATER_BYTES
#: A client's turn: after this many commands of one batch, or this many seconds of them,
#: the other clients are served before it goes on (Redis reads 16 KiB, about a thousand
#: small commands, per client per turn).
SLICE_COMMANDS: Final = 1024
SLICE_S: Final = 0.01
#: What a client blocked in BLPOP may send meanwhile before reading it pauses: it is
#: read on (so a client that goes away is seen and unqueued at once) and held, up to this.
BLOCKED_INPUT_BYTES: Final = 1024 * 1024
#: The clock is read once every this many commands of a batch: a command costs about a
#: microsecond, and one that costs more is bounded in itself (SCAN's match steps, MGET's
#: reply size), so a turn overruns SLICE_S by at most a few commands.
CLOCK_EVERY: Final = 8


class ConnectionHost(ServerView, Protocol):
    """What a connection needs of its server (CommandServer), beyond the handlers' view."""

    @property
    def manager(self) -> Admission: ...

    @property
    def config(self) -> CommandConfig: ...

    @property
    def pool(self) -> WorkerPool: ...

    @property
    def counts(self) -> CommandStats: ...

    @property
    def blocked(self) -> BlockedClients:
        """The clients blocked in BLPOP/BRPOP, which list pushes wake."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> object:
        """Run `callback` on the loop in `delay_s` seconds."""
        ...

    def call_soon(self, callback: Callable[[], None]) -> object:
        """Run `callback` on the loop's next turn, after the callbacks ready now."""
        ...


#: What a connection may owe: a reply ready but queued behind others (its wire bytes, or
#: a large bulk's three parts, the value not copied), a store server's answer to come
#: (Deferred), or a durable write's OK (Durable).
_Owed = Deferred | Durable | bytes | tuple[bytes, bytes | memoryview, bytes]


@final
class CommandConnection(BaseProtocol):
    """One client of the command server, in either dialect."""

    def __init__(self, server: ConnectionHost) -> None:
        super().__init__(server.manager)
        self.server = server
        config = server.config
        self.parser = RespParser(
            max_inline_bytes=config.max_inline_bytes,
            max_bulk_bytes=config.max_bulk_bytes,
            max_array_items=config.max_array_items,
        )
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.authenticated = config.requirepass is None
        self.protocol = 2
        self.db = 0  # SELECT's database
        self.last_command = "NULL"
        self._busy = False  # a command is in the worker pool
        # Keyspace replies still owed, with every reply behind them, in request order.
        self._owed: OwedReplies[_Owed] = OwedReplies()
        self._held: list[bytes] | None = None  # a command waiting for the owed replies
        self._stalled = False  # reading paused until the owed replies are out
        self._watching = False  # the oldest owed Deferred has _store_replied as callback
        self._owed_bytes = 0  # the wire bytes of the ready replies waiting in `_owed`
        self._parked = False  # commands wait for the peer to read (`on_writable`)
        self._yielded = False  # the batch goes on from a call_soon (`_next_turn`)
        self._transaction: Transaction | None = None  # MULTI's queue, until EXEC or DISCARD
        self._waiter: Waiter | None = None  # blocked in BLPOP/BRPOP (`_busy` too)
        self._blocked_input = 0  # bytes read while blocked
        self._input_held = False  # reading paused: blocked, and BLOCKED_INPUT_BYTES read
        self._tokens = float(config.burst)
        self._refilled = self.created
        self._auth = AuthThrottle()
        tracing = active_tracing()
        # None while tracing is off: one test per command. A callable, not the Tracing
        # itself, so this (optionally compiled) module names no OpenTelemetry class.
        self._command_span: TracedRun | None = (
            None if tracing is None else partial(command_span, tracing)
        )

    # -- BaseProtocol hooks ------------------------------------------------------------

    def reject(self, reason: str) -> None:
        self.write(b"-ERR " + reason.encode() + b"\r\n")
        self.close(reason)

    def on_data(self, data: bytes) -> ConnInput | None:
        """Feed the parser and run what is complete.

        The hot path: a read that is one whole command with nothing buffered, owed or
        running before it (every unpipelined client's) is run without the batch loop,
        and its reply written at once unless it is anything but an immediate reply.
        """
        parser = self.parser
        if self._busy or self._stalled or self._yielded:
            parser.feed(data)
            if self._waiter is not None:
                self._blocked_input += len(data)
                if self._blocked_input > BLOCKED_INPUT_BYTES:
                    self._input_held = True
                    self.pause_reading()
            return None
        if self._owed or self.write_blocked:  # the batch loop waits for them in order
            parser.feed(data)
            return self._run_buffered()
        args = parser.feed_one(data)
        if args is None:
            return self._run_buffered()
        reply = self._execute(args, LOOKUP.get(args[0]) or LOOKUP.get(args[0].upper()))
        if type(reply) is Durable or type(reply) is Deferred or reply is _PENDING:
            return self._run_buffered(reply)  # it goes on as if it had run it
        encode = self._encoder()
        if (
            type(reply) is Bulk
            and (value := reply.data) is not None
            and len(value) >= LARGE_BULK_BYTES
            and encode is not encode_text
        ):
            self.write_parts(bulk_parts(value))  # from where the value lies: no copy
            return _IDLE
        self.write(encode(reply))
        return _IDLE

    def partial_bytes(self) -> int:
        return self.parser.buffered

    def close_after_this_reply(self, reason: str) -> None:
        """Close once the reply to the command running now is out (a client killing
        itself gets its answer first, as from Redis); at once if none is running."""
        self.close_when_done(reason, linger=False)

    def on_writable(self) -> None:
        """The peer read enough of our replies: run the commands held back meanwhile."""
        if self._parked:
            self._parked = False
            self._continue()

    def on_close(self) -> None:
        if self._waiter is not None:  # a blocked client gone: nothing of it stays queued
            self._waiter.cancel()
            self._waiter = None
        self._transaction = None
        self._owed.clear()
        self._owed_bytes = 0
        counts = self.server.counts
        counts.closed_bytes_in += self.bytes_in
        counts.closed_bytes_out += self.bytes_out
        log.debug("closed conn=%s reason=%s", self, self.close_reason)

    # -- the request loop --------------------------------------------------------------

    def _run_buffered(self, answered: Answer | None = None) -> ConnInput | None:
        """Run every complete command buffered; None while replies are still to come.

        This is the hot path: bound methods are hoisted into locals, and the encoder is
        picked once per batch (again only if HELLO changes the RESP version mid-batch).
        Keyspace commands pipeline: their Deferred and Durable replies are owed in request
        order, and any other command waits (is held) until nothing is owed, so it never
        overtakes, and a HELLO or QUIT applies exactly where it was sent. Once the
        connection is to close, no further command starts. `answered` is the answer of
        a command `on_data` ran (nothing was owed before it).

        It also stops, to go on later, while the peer is not reading (`_parked`) and at
        the end of its turn (`_yielded`); see the module's design note.
        """
        if self._yielded or self.write_blocked:
            if not self._yielded:
                self._parked = True
            return None
        parser = self.parser
        next_event = parser.next_event
        ready = parser.ready
        take = ready.popleft
        execute = self._execute
        owed = self._owed
        out: list[bytes] = []
        out_bytes = 0
        encode: Callable[[Reply], bytes] | None = None
        protocol = 0
        ran = 0
        clock = self.manager.clock
        started = clock()
        try:
            while True:
                if answered is not None:
                    reply, answered = answered, None
                else:
                    if self.closing:
                        break
                    if (
                        ran
                        and ran % CLOCK_EVERY == 0
                        and (ran >= SLICE_COMMANDS or clock() - started >= SLICE_S)
                    ):
                        self._send(out)
                        self._yield()
                        return None
                    if self._held is not None:
                        args, self._held = self._held, None
                    elif ready:  # split off by the C reader: no event object needed
                        args = take()
                    else:
                        event = next_event()
                        if event is NEED_DATA:
                            break
                        args = event[0]
                    spec = LOOKUP.get(args[0]) or LOOKUP.get(args[0].upper())
                    # While keyspace replies are owed only more keyspace commands may run:
                    # anything else could overtake their replies or effects.
                    if owed and (spec is None or not spec.store):
                        self._held = args
                        self._send(out)
                        self._stall()
                        return None
                    reply = execute(args, spec)
                    ran += 1
                if reply is _PENDING:
                    self._send(out)
                    return None
                if encode is None or protocol != self.protocol:
                    protocol = self.protocol
                    encode = self._encoder()
                if type(reply) is Durable:  # an embedded write: its OK waits for the fsync
                    self._send(out)
                    owed.owe(reply, ticket=reply.ticket)
                    reply.commit.wait(self, reply.ticket)
                    if len(owed) >= MAX_STORE_IN_FLIGHT:
                        self._stall()
                        return None
                    continue
                if type(reply) is Deferred:
                    self._send(out)
                    owed.owe(reply, future=reply.future)
                    if not self._watching:  # the oldest unanswered: see _store_replied
                        self._watching = True
                        reply.future.add_done_callback(self._store_replied)
                    if len(owed) >= MAX_STORE_IN_FLIGHT:
                        self._stall()
                        return None
                    continue
                if owed:  # an immediate reply behind replies still owed: wait in line
                    if (
                        type(reply) is Bulk
                        and (value := reply.data) is not None
                        and len(value) >= LARGE_BULK_BYTES
                        and encode is not encode_text
                    ):  # a large value waits as it lies, not copied into its encoding
                        parts = bulk_parts(value)
                        owed.owe(parts)
                        self._owed_bytes += len(value)
                    else:
                        data = encode(reply)
                        owed.owe(data)
                        self._owed_bytes += len(data)
                    if self._owed_bytes > REPLY_BUDGET_BYTES:
                        self._send(out)
                        self._stall()
                        return None
                    continue
                if (
                    type(reply) is Bulk
                    and (value := reply.data) is not None
                    and len(value) >= LARGE_BULK_BYTES
                    and encode is not encode_text
                ):  # a large value goes out from where it lies, after what came before
                    self._send(out)
                    self.write_parts(bulk_parts(value))
                    out_bytes = REPLY_BUDGET_BYTES
                else:
                    data = encode(reply)
                    out.append(data)
                    out_bytes += len(data)
                if out_bytes >= REPLY_BUDGET_BYTES:
                    self._send(out)
                    out_bytes = 0
                    if self.write_blocked and parser.has_partial():
                        self._parked = True  # on_writable goes on
                        return None
        except RespProtocolError as exc:
            self.server.counts.protocol_errors += 1
            error = self._encoder()(Error(code=exc.wire_code, message=str(exc)))
            log.info("protocol error conn=%s error=%r", self, str(exc))
            self.close_when_done("protocol error")
            if owed:  # the replies owed come first, then the error, then the close
                owed.owe(error)
                self._send(out)
                self._stall()
                return None
            out.append(error)
        self._send(out)
        if owed:
            return None
        return ConnInput.PARTIAL if parser.has_partial() else _IDLE

    def _yield(self) -> None:
        """End this client's turn: the batch goes on from the loop's next turn, and
        nothing is read meanwhile."""
        self._yielded = True
        self.pause_reading()
        self.server.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """A new turn: read again and go on with the batch."""
        self._yielded = False
        if self.transport is None:
            return
        self.resume_reading()
        self._continue()

    def _continue(self) -> None:
        """Go on with the batch where it stopped."""
        outcome = self._run_buffered()
        if outcome is not None:
            self.batch_done(outcome)

    def _stall(self) -> None:
        """Stop reading until the owed replies are out."""
        if not self._stalled:
            self._stalled = True
            self.pause_reading()

    def _store_replied(self, _: object) -> None:
        """A store future is done: write the replies now complete at the head of the queue.

        Only the oldest unanswered store command has this as its done callback, not each
        one: the store answers one connection in order, and all the answers of one read
        are settled before the first callback runs, so one call writes them all. What is
        left unanswered then gets the callback next.
        """
        self._watching = False
        if self.transport is not None:
            self._drain(None)

    def synced(self, covered: int, error: BaseException | None) -> bool:
        """Group commit's answer: the writes up to ticket `covered` are durable (or failed
        with `error`); send what is owed up to there. Whether a later write is still owed."""
        owed = self._owed
        if self.transport is None:
            owed.clear()
            return False
        owed.synced(covered)
        failure = None
        if error is not None:
            exc = engine_refusal(error)
            failure = Error(code=exc.wire_code, message=str(exc))
        self._drain(failure)
        return owed.waiting_for_sync and self.transport is not None

    def _drain(self, failure: Error | None) -> None:
        """Write the owed replies now ready, in request order; once none is owed, go on
        with what was read meanwhile.

        A Durable's reply is `failure` when the fsync that covered it failed.
        """
        owed = self._owed
        ready: list[_Owed] = []
        owed.pop_ready(ready)
        if ready:
            encode = self._encoder()
            out: list[bytes] = []
            for item in ready:
                if type(item) is bytes:
                    out.append(item)
                    self._owed_bytes -= len(item)
                elif type(item) is tuple:
                    self._send(out)
                    self.write_parts(item)
                    self._owed_bytes -= len(item[1])
                elif type(item) is Durable:
                    out.append(encode(failure or item.reply))
                elif type(item) is Deferred:
                    reply = settle(item)
                    if (
                        type(reply) is Bulk
                        and (value := reply.data) is not None
                        and len(value) >= LARGE_BULK_BYTES
                        and encode is not encode_text
                    ):  # the store's value written as it came, not joined
                        self._send(out)
                        self.write_parts(bulk_parts(value))
                    else:
                        out.append(encode(reply))
            self._send(out)
        if owed:
            future = owed.head_future()
            if future is not None and not self._watching:
                self._watching = True
                future.add_done_callback(self._store_replied)
            if (
                self._stalled
                and self._held is None
                and len(owed) < MAX_STORE_IN_FLIGHT
                and self._owed_bytes <= REPLY_BUDGET_BYTES
            ):
                self._resume()
            return
        self._resume()

    def _resume(self) -> None:
        """Read again and run what was read meanwhile (nothing new once closing)."""
        if self._stalled:
            self._stalled = False
            self.resume_reading()
        self._continue()

    def _send(self, out: list[bytes]) -> None:
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _encoder(self) -> Callable[[Reply], bytes]:
        if self.parser.dialect is Dialect.TEXT:
            return encode_text
        return encode_resp3 if self.protocol == 3 else encode_resp

    def _execute(self, args: list[bytes], spec: CommandSpec | None) -> Answer:
        """Run one command; `spec` is its entry in the table (None: unknown).

        Inside MULTI a command refused here (unknown, before AUTH, rate-limited, of the
        wrong arity) makes EXEC answer EXECABORT, as Redis's does.
        """
        server = self.server
        counts = server.counts
        self.requests += 1
        counts.commands += 1
        if not self.authenticated and (spec is None or not spec.noauth):
            counts.auth_refusals += 1
            return self._refused(NOAUTH)
        if spec is None:
            counts.unknown_commands += 1
            shown = " ".join(f"'{a.decode('utf-8', 'replace')[:64]}'" for a in args[1:4])
            return self._refused(
                Error(
                    code="ERR",
                    message=f"unknown command '{args[0].decode('utf-8', 'replace')[:64]}', "
                    f"with args beginning with: {shown}",
                )
            )
        name = self.last_command = spec.name
        counts.calls[name] += 1
        if server.config.rate_limit_per_s and spec.rate_limited and not self._take_token():
            counts.rate_limited += 1
            err = RateLimitedError(
                f"rate limit of {server.config.rate_limit_per_s:g} commands/s exceeded"
            )
            return self._refused(Error(code=err.wire_code, message=str(err)))
        argc = len(args)
        if argc < spec.min_args or argc > spec.max_args:
            return self._refused(
                Error(code="ERR", message=f"wrong number of arguments for '{name}' command")
            )
        if spec.special or self._transaction is not None:
            return self._special(spec, args)
        if spec.blocking:
            return self._offload(spec, args)
        try:  # `_call`, inlined: this is the hot path
            traced = self._command_span
            if traced is None:
                reply = spec.handler(server, self, args)
            else:
                reply = traced(spec, server, self, args)
            if spec.noauth and self._auth.failures and self.authenticated:
                self._auth.passed()
            return reply
        except WrongPassError as exc:
            return self._auth_failed(Error(code=exc.wire_code, message=str(exc)))
        except (CommandError, ConfigError, RespRefusal) as exc:
            return Error(code=exc.wire_code, message=str(exc))

    def _call(self, spec: CommandSpec, args: list[bytes], *, in_exec: bool = False) -> Answer:
        """Run `spec`'s handler (traced when tracing is on); a refusal becomes its error
        reply. A wrong password is throttled, except inside EXEC, whose reply is one."""
        server = self.server
        try:
            traced = self._command_span
            if traced is None:
                reply = spec.handler(server, self, args)
            else:
                reply = traced(spec, server, self, args)
            if spec.noauth and self._auth.failures and self.authenticated:
                self._auth.passed()
            return reply
        except WrongPassError as exc:
            refusal = Error(code=exc.wire_code, message=str(exc))
            return refusal if in_exec else self._auth_failed(refusal)
        except (CommandError, ConfigError, RespRefusal) as exc:
            return Error(code=exc.wire_code, message=str(exc))

    def _refused(self, refusal: Error) -> Error:
        """`refusal`, after marking an open transaction as aborted."""
        if self._transaction is not None:
            self._transaction.aborted = True
        return refusal

    # -- transactions and blocking pops ------------------------------------------------

    def _special(self, spec: CommandSpec, args: list[bytes]) -> Answer:
        """A command inside MULTI (queued), MULTI/EXEC/DISCARD, BLPOP/BRPOP, or a push."""
        name = spec.name
        transaction = self._transaction
        if "transaction" in spec.flags:
            if name == "multi":
                if transaction is not None:
                    return Error(code="ERR", message="MULTI calls can not be nested")
                self._transaction = Transaction()
                return OK
            if name == "discard":
                if transaction is None:
                    return Error(code="ERR", message="DISCARD without MULTI")
                self._transaction = None
                return OK
            return self._exec()
        if transaction is not None and name != "quit":
            if spec.blocking or "no-multi" in spec.flags:
                return self._refused(Error(code="ERR", message=NOT_IN_MULTI))
            try:
                return transaction.queue(spec, args)
            except CommandError as exc:
                return Error(code=exc.wire_code, message=str(exc))
        if "blocks" in spec.flags:
            return self._block(spec, args)
        reply = self._call(spec, args)
        if "wakes" in spec.flags:
            self.server.blocked.signal(self.db, args[1:2])
        return reply

    def _exec(self) -> Answer:
        """EXEC: every queued command in one step on the loop, nothing of another client
        between them; one array of their replies (later, if some are owed)."""
        transaction = self._transaction
        if transaction is None:
            return Error(code="ERR", message="EXEC without MULTI")
        self._transaction = None
        if transaction.aborted:
            return EXECABORT
        answers: list[Answer] = []
        woken: list[tuple[int, bytes]] = []
        for spec, args in transaction.queued:
            # BLPOP's handler is its form that does not block: it pops now or answers nil.
            answers.append(self._call(spec, args, in_exec=True))
            if "wakes" in spec.flags:
                woken.append((self.db, args[1]))
        blocked = self.server.blocked
        for db, key in woken:  # after the whole transaction, as Redis serves them
            blocked.signal(db, (key,))
        return exec_reply(answers)

    def _block(self, spec: CommandSpec, args: list[bytes]) -> Answer:
        """BLPOP/BRPOP: pop now if an item is there, else wait for a push (or the
        timeout) without running this client's further commands meanwhile."""
        try:
            timeout = parse_timeout(args[-1])
            waiter = self.server.blocked.block(self.db, args[1:-1], left=spec.name == "blpop")
        except CommandError as exc:
            return Error(code=exc.wire_code, message=str(exc))
        answer = waiter.start(timeout, self._unblocked)
        if answer is not None:
            return answer
        # Still reading (not paused), so a client that goes away is seen and unqueued;
        # what it sends meanwhile is buffered within the partial-request limits.
        self._waiter = waiter
        self._busy = True
        return _PENDING

    def _unblocked(self, answer: Answer) -> None:
        """The blocked pop is answered (by a push, the timeout or an error): on the
        loop's next turn, not inside the command that woke it."""
        self.server.call_soon(partial(self._answer_blocked, answer))

    def _answer_blocked(self, answer: Answer) -> None:
        self._waiter = None
        self._busy = False
        self._blocked_input = 0
        if self.transport is None:
            return
        if self._input_held:
            self._input_held = False
            self.resume_reading()
        outcome = self._run_buffered(answer)
        if outcome is not None:
            self.batch_done(outcome)

    def _auth_failed(self, refusal: Error) -> Reply:
        """A failed AUTH: its reply is held (reading stops meanwhile), longer each time,
        and after the last one allowed the connection closes."""
        self.server.counts.auth_failures += 1
        delay = self._auth.failed()
        if self._auth.exhausted:
            log.warning("auth failures conn=%s failures=%d: closing", self, self._auth.failures)
            self.close_when_done(AUTH_FAILURES_CLOSE)
        if not delay:
            return refusal
        self._busy = True
        self.pause_reading()
        self.server.call_later(delay, partial(self._held_reply, refusal))
        return _PENDING

    def _held_reply(self, reply: Reply) -> None:
        """Send a reply held back (a failed AUTH's), then go on with what was read."""
        self._busy = False
        if self.transport is None:
            return
        self.write(self._encoder()(reply))
        self.resume_reading()
        outcome = self._run_buffered()
        if outcome is not None:
            self.batch_done(outcome)

    def _take_token(self) -> bool:
        config = self.server.config
        now = self.manager.clock()
        burst = config.burst
        self._tokens = min(burst, self._tokens + (now - self._refilled) * config.rate_limit_per_s)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _offload(self, spec: CommandSpec, args: list[bytes]) -> Reply:
        try:
            future = self.server.pool.submit(partial(spec.handler, self.server, self, args))
        except ClosedError as exc:
            return Error(code="ERR", message=str(exc))
        self._busy = True
        self.pause_reading()
        future.add_done_callback(self._offload_done)
        return _PENDING

    def _offload_done(self, future: asyncio.Future[Answer]) -> None:
        self._busy = False
        if self.transport is None:
            return
        exc = future.exception()
        if exc is None:
            result = future.result()
            # A blocking handler answers in its thread; it cannot wait for the store.
            if isinstance(result, Deferred | Durable):
                result = Error(code="ERR", message="internal error: deferred blocking reply")
            reply = result
        elif isinstance(exc, PostOfficeError):
            reply = Error(code=exc.wire_code, message=str(exc))
        else:
            log.error("command failed in worker conn=%s", self, exc_info=exc)
            reply = Error(code="ERR", message=f"internal error: {exc!r}")
        self.write(self._encoder()(reply))
        self.resume_reading()
        outcome = self._run_buffered()
        if outcome is not None:
            self.batch_done(outcome)

    # -- ClientView --------------------------------------------------------------------

    def _flags(self) -> str:
        """CLIENT LIST's flags, as Redis's: b blocked, x inside MULTI, N neither."""
        if self._waiter is not None:
            return "b"
        return "x" if self._transaction is not None else "N"

    def describe(self) -> str:
        """A CLIENT LIST line."""
        now = self.manager.clock()
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        fd = sock.fileno() if sock is not None else -1
        return (
            f"id={self.conn_id} addr={self.peer} laddr={self.local} fd={fd}"
            f" name={self.name.decode()} age={int(now - self.created)}"
            f" idle={int(now - self.last_active)} flags={self._flags()} db=0"
            f" proto={self.parser.dialect.value}{self.protocol} qbuf={self.parser.buffered}"
            f" tot-net-in={self.bytes_in} tot-net-out={self.bytes_out}"
            f" tot-cmds={self.requests} cmd={self.last_command} user=default"
            f" lib-name={self.lib_name.decode()} lib-ver={self.lib_ver.decode()}"
        )


__all__ = [
    "MAX_STORE_IN_FLIGHT",
    "REPLY_BUDGET_BYTES",
    "SLICE_COMMANDS",
    "SLICE_S",
    "CommandConnection",
    "ConnectionHost",
]
