"""Listening sockets: bind with retry and backoff, deep backlogs, optional SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Final

from postoffice.core.errors import ConfigError
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
) -> asyncio.Server:
    """Serve `factory` on host:port, retrying a failed bind with backoff until it succeeds.

    The process never exits because a port is busy: it logs and tries again (cancel the
    awaiting task to give up). Accept errors such as EMFILE are retried by the loop itself.
    """
    backoff = backoff or Backoff(initial_s=0.1, max_s=5.0)
    loop = asyncio.get_running_loop()
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
            delay = backoff.next_delay()
            log.warning(
                "bind failed listener=%s host=%s port=%d error=%r retry_in_s=%.2f",
                name,
                host,
                port,
                exc.strerror or exc,
                delay,
            )
            await asyncio.sleep(delay)
            continue
        bound = bound_address(server)
        log.info("listening listener=%s host=%s port=%d", name, bound[0], bound[1])
        return server


def bound_address(server: asyncio.Server) -> tuple[str, int]:
    """The (host, port) a server actually listens on (port 0 resolves to the real one)."""
    name = server.sockets[0].getsockname()
    return str(name[0]), int(name[1])
