"""The command server's span for one command, made only while tracing is on: a server span
named for the command (never its arguments), current while its handler runs, so a
request the handler sends to the store server is its child."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from postoffice.command.commands import ClientView, CommandSpec, ServerView
from postoffice.command.keyspace import Answer, Deferred
from postoffice.core.resp import Error

if TYPE_CHECKING:
    import asyncio

    from postoffice.core.otel import Span, Tracing

#: A command's handler run inside its span: `command_span` with its Tracing bound.
TracedRun = Callable[[CommandSpec, ServerView, ClientView, list[bytes]], Answer]

#: The db.system of our spans: the command protocol is Redis's, the server is not Redis.
DB_SYSTEM: Final = "redis-like"


def command_span(
    tracing: Tracing, spec: CommandSpec, server: ServerView, client: ClientView, args: list[bytes]
) -> Answer:
    """Run `spec`'s handler inside the command's span and return its answer.

    The span ends with the reply: at once, or when a `Deferred`'s future (the store
    server's answer) is done. An error reply or an exception marks it failed; the
    exception is raised again.
    """
    name = spec.name.upper()  # as clients spell the command, and Redis's tracing does
    span = tracing.start(
        name, kind="server", attributes={"db.system": DB_SYSTEM, "db.operation.name": name}
    )
    token = tracing.activate(span)
    try:
        answer = spec.handler(server, client, args)
    except BaseException as exc:
        tracing.end(span, error=exc)
        raise
    finally:
        tracing.deactivate(token)
    if type(answer) is Deferred:
        answer.future.add_done_callback(lambda done: _answered(tracing, span, done))
    elif isinstance(answer, Error):
        tracing.end(span, error=f"{answer.code} {answer.message}")
    else:
        tracing.end(span)
    return answer


def _answered(tracing: Tracing, span: Span, future: asyncio.Future[object]) -> None:
    if future.cancelled():
        tracing.end(span, error="cancelled")
    else:
        tracing.end(span, error=future.exception())
