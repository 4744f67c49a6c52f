"""Listening sockets: bind with retry and backoff, deep backlogs, optional SO_REUSEPORT.

Core layer. A busy port is retried quietly (one warning, then DEBUG lines), or, with
POSTOFFICE_BIND_RETRY=0 (what `postoffice up` gives its children), fails the start at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Final

from postoffice.core import config as core_config
from postoffice.core.errors import BrokenError, ConfigError
from postoffice.core.logs import kv
from postoffice.core.runtime import Backoff

log = logging.getLogger(__name__)

#: Sized for thousands of clients connecting at once; the kernel caps it at somaxconn.
DEFAULT_BACKLOG: Final = 4096


def make_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking TCP socket; raises OSError when the bind fails.

    An address that does not resolve is a ConfigError: retrying cannot fix a typo.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on host {host!r}: {exc.strerror or exc}") from exc
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def listen(
    factory: Callable[[], asyncio.BaseProtocol],
    *,
    host: str,
    port: int,
    name: str,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    backoff: Backoff | None = None,
    retry: bool | None = None,
) -> asyncio.Server:
    """Serve `factory` on host:port; a bind that fails is retried with backoff, or not.

    With `retry` (None: `core.config.bind_retry()`, true unless POSTOFFICE_BIND_RETRY
    says otherwise) the process never exits because a port is busy: the first failure is
    one warning naming the listener and the port, later ones are DEBUG lines, and the
    call returns once the bind succeeds (cancel the awaiting task to give up). Without
    it, raises BrokenError `cannot listen for NAME on HOST:PORT: REASON` at the first
    failure. An address that does not resolve is a ConfigError either way. Accept errors
    such as EMFILE are retried by the loop itself.
    """
    if retry is None:
        retry = core_config.bind_retry()
    backoff = backoff or Backoff(initial_s=0.1, max_s=5.0)
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        try:
            sock = make_socket(host, port, reuse_port=reuse_port)
            try:
                # listen() can fail too (EADDRINUSE when another SO_REUSEADDR socket got
                # there between our bind and our listen): retry that like a failed bind.
                server = await loop.create_server(
                    factory, sock=sock, backlog=backlog, ssl=ssl_context
                )
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            reason = describe_os_error(exc)
            if not retry:
                raise BrokenError(f"cannot listen for {name} on {host}:{port}: {reason}") from exc
            failures += 1
            delay = backoff.next_delay()
            if failures == 1:
                # One line a person reads; a port held for an hour must not flood the log.
                log.warning(
                    "bind failed %s (retrying until it succeeds; each retry logged at DEBUG)",
                    kv(
                        listener=name, host=host, port=port, error=reason, retry_max_s=backoff.max_s
                    ),
                )
            else:
                log.debug(
                    "bind retry failed %s",
                    kv(listener=name, port=port, attempts=failures, retry_in_s=f"{delay:.2f}"),
                )
            await asyncio.sleep(delay)
            continue
        bound = bound_address(server)
        after = f" failed_attempts={failures}" if failures else ""
        log.info("listening %s%s", kv(listener=name, host=bound[0], port=bound[1]), after)
        return server


def describe_os_error(exc: OSError) -> str:
    """The plain reason of a socket error, `address already in use`, without errno or address.

    uvloop's messages repeat the address and asyncio's wrap the errno; both read worse
    than the C library's text for the code.
    """
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def bound_address(server: asyncio.Server) -> tuple[str, int]:
    """The (host, port) a server actually listens on (port 0 resolves to the real one)."""
    name = server.sockets[0].getsockname()
    return str(name[0]), int(name[1])
