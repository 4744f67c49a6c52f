"""The ingest control port's I/O shell: operator commands over the command protocol.

Parsing and encoding are core.resp's; the commands are `commands`' table, and the server
is reached only through its IngestControl seam.
"""

# Design
# ------
# One port, three reply styles, exactly as core.resp detects them: RESP2 (redis-cli,
# redis-py), RESP3 after HELLO 3, and the text lines of command.md (`printf 'STATUS\n' | nc`).
#
# Commands run in arrival order and every one gets exactly one reply. Most are answered
# on the spot; a handler whose work is asynchronous (CONFIG SET x, ABORT, CLEANUP)
# returns a `Deferred` instead. The connection then stops reading, runs the work as a
# task, writes its reply, and only then goes on with the commands already buffered behind
# it, so pipelined replies stay in order and a client has at most one task at a time.
#
# A task is never cancelled when its client leaves: the operator asked for it, and
# stopping a listener rescale or an abort halfway would leave the server in between.

from __future__ import annotations

import asyncio
import logging
from typing import Final, final

from postoffice.core.connections import ConnectionManager
from postoffice.core.errors import PostOfficeError
from postoffice.core.resp import (
    AUTH_FAILURES_CLOSE,
    NEED_DATA,
    NOAUTH,
    AuthThrottle,
    Dialect,
    Error,
    Reply,
    RespParser,
    RespProtocolError,
    WrongPassError,
    encode_resp,
    encode_resp3,
    encode_text,
)
from postoffice.core.transport import BaseProtocol, ConnInput
from postoffice.ingest.commands import TABLE, Deferred, IngestControl, arity_error, shown

log = logging.getLogger(__name__)

# Control commands are short; tight limits keep a confused or hostile peer cheap.
MAX_CONTROL_INLINE_BYTES: Final = 4096  # the longest command (CONFIG SET, ABORT) is ~60 bytes
MAX_CONTROL_BULK_BYTES: Final = 64 * 1024  # one argument, e.g. an ECHO or PING message
MAX_CONTROL_ARGS: Final = 64  # arguments in one command; CONFIG GET takes a few patterns
# -- the connection -------------------------------------------------------------------------

#: Tasks of deferred commands, held so none is garbage-collected while it runs.
_RUNNING: Final[set[asyncio.Task[None]]] = set()


@final
class ControlConnection(BaseProtocol):
    """One operator connection to the control port, in either dialect.

    `token` None means no AUTH is needed; otherwise only AUTH, HELLO, QUIT and HELP are
    answered before a successful AUTH (the rest get `-NOAUTH`).
    """

    def __init__(
        self, manager: ConnectionManager, control: IngestControl, token: str | None
    ) -> None:
        super().__init__(manager)
        self.control = control
        self.token = token
        self.parser = RespParser(
            max_inline_bytes=MAX_CONTROL_INLINE_BYTES,
            max_bulk_bytes=MAX_CONTROL_BULK_BYTES,
            max_array_items=MAX_CONTROL_ARGS,
        )
        self.authenticated = token is None
        self.protocol = 2  # RESP version of replies; HELLO 3 makes it 3
        self.name = ""
        self.running: str | None = None  # the deferred command in progress, if any
        self._auth = AuthThrottle()

    # -- BaseProtocol hooks ------------------------------------------------------------

    def reject(self, reason: str) -> None:
        self.write(b"-ERR " + reason.encode() + b"\r\n")
        self.close(reason)

    def on_data(self, data: bytes) -> ConnInput | None:
        self.parser.feed(data)
        if self.running is not None:
            return None  # bytes that were in flight when reading paused; run after the task
        return self._run_buffered()

    def on_close(self) -> None:
        log.debug("control closed conn=%s reason=%s", self, self.close_reason)

    # -- the request loop --------------------------------------------------------------

    def _encode(self, reply: Reply) -> bytes:
        if self.parser.dialect is Dialect.TEXT:
            return encode_text(reply)
        return encode_resp3(reply) if self.protocol == 3 else encode_resp(reply)

    def _run_buffered(self) -> ConnInput | None:
        """Answer every complete command buffered; None when one started async work."""
        out: list[bytes] = []
        try:
            while not self.closing:  # once QUIT or shutdown came, nothing new starts
                event = self.parser.next_event()
                if event is NEED_DATA:
                    break
                reply = self._execute(event.args)
                if isinstance(reply, Deferred):
                    self._flush(out)
                    self._start(reply)
                    return None
                out.append(self._encode(reply))
        except RespProtocolError as exc:
            out.append(self._encode(Error(code=exc.wire_code, message=str(exc))))
            log.info("control protocol error conn=%s error=%r", self, str(exc))
            self.close_when_done("protocol error")
        self._flush(out)
        return ConnInput.PARTIAL if self.parser.has_partial() else ConnInput.IDLE

    def _flush(self, out: list[bytes]) -> None:
        if out:
            self.write(b"".join(out))
            out.clear()

    def _execute(self, args: list[bytes]) -> Reply | Deferred:
        self.requests += 1
        spec = TABLE.get(args[0].upper())
        if not self.authenticated and (spec is None or not spec.noauth):
            return NOAUTH
        if spec is None:
            return Error(code="ERR", message=f"unknown command '{shown(args[0])}'")
        if not spec.arity_ok(len(args)):
            return Error(code="ERR", message=str(arity_error(spec.name)))
        try:
            return spec.handler(self, args)
        except WrongPassError as exc:
            return self._auth_failed(Error(code=exc.wire_code, message=str(exc)))
        except PostOfficeError as exc:
            return Error(code=exc.wire_code, message=str(exc))
        except Exception as exc:
            # A bug behind the seam: answer it, keep the connection (its framing is intact).
            log.exception("control command failed conn=%s command=%s", self, spec.name)
            return Error(code="ERR", message=f"internal error: {exc!r}")

    def _auth_failed(self, refusal: Error) -> Reply | Deferred:
        """A wrong token: the reply is held longer each time (as the command port's), and
        the connection closes after the last failure allowed."""
        delay = self._auth.failed()
        if self._auth.exhausted:
            self.close_when_done(AUTH_FAILURES_CLOSE)
        if not delay:
            return refusal

        async def held() -> Reply:
            await asyncio.sleep(delay)
            return refusal

        return Deferred(name="auth", work=held)

    def _start(self, deferred: Deferred) -> None:
        self.running = deferred.name
        self.pause_reading()
        task = asyncio.get_running_loop().create_task(
            self._run_deferred(deferred), name=f"control-{deferred.name}"
        )
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)

    async def _run_deferred(self, deferred: Deferred) -> None:
        try:
            reply = await deferred.work()
        except PostOfficeError as exc:
            reply = Error(code=exc.wire_code, message=str(exc))
        except Exception as exc:
            log.exception("control command failed conn=%s command=%s", self, deferred.name)
            reply = Error(code="ERR", message=f"internal error: {exc!r}")
        self.running = None
        if self.transport is None:
            return  # the client left; the work is done all the same
        self.write(self._encode(reply))
        self.resume_reading()
        outcome = self._run_buffered()
        if outcome is not None:
            self.batch_done(outcome)

    def __repr__(self) -> str:
        auth = "yes" if self.authenticated else "no"
        running = f" running={self.running!r}" if self.running else ""
        return (
            f"<ControlConnection id={self.conn_id} {self.peer} {self.state.name}"
            f" auth={auth} requests={self.requests}{running}>"
        )


__all__ = [
    "MAX_CONTROL_ARGS",
    "MAX_CONTROL_BULK_BYTES",
    "MAX_CONTROL_INLINE_BYTES",
    "ControlConnection",
]
