"""The ingest client's routing among the nodes of a cluster, as pure decisions: the MOVED
message parsed, `--node` addresses, the order of failover and its backoff, redirects.

Ingest layer, pure: no I/O (sender.py acts on these decisions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, TypeVar

from postoffice.core.errors import ConfigError
from postoffice.ingest.errors import IngestError, IngestProtocolError
from postoffice.ingest.ownership import MOVED_PREFIX, Owner

__all__ = [
    "FAILOVER_BACKOFF_S",
    "MAX_NODES",
    "MAX_REDIRECTS",
    "Address",
    "check_redirect",
    "failover_backoff_s",
    "failover_order",
    "parse_moved",
    "parse_node",
    "parse_nodes",
]

#: MOVED replies one request follows before it fails: a cluster whose nodes disagree
#: about an owner (mid-takeover) settles within one or two; past this it is a loop.
MAX_REDIRECTS: Final = 5
#: Nodes one client may list: each may get `parallel` connections.
MAX_NODES: Final = 64
#: Pause after a round of failover QUERYs that no node answered, doubling from the first
#: up to the last: a takeover waits for the dead owner to look stale (seconds). The last
#: is 1 s so that the round after a node turns stale (4 s by default) comes within about
#: half a second, at one QUERY per listed node a second meanwhile.
FAILOVER_BACKOFF_S: Final = (0.05, 1.0)

Address = tuple[str, int]
"""A node as a client lists it: host and health port (its sys-base)."""

T = TypeVar("T")


def parse_moved(message: str) -> Owner:
    """The owner a MOVED reply names: `moved <node> <host>:<health port> <port>,...`.

    Raises IngestProtocolError for any other text (the reply cannot be followed).
    """
    words = message.split(" ")
    if len(words) != 4 or words[0] != MOVED_PREFIX:
        raise IngestProtocolError(
            f"moved message {message[:120]!r} is not 'moved <node> <host>:<port> <ports>'"
        )
    _, node, where, ports = words
    try:
        host, port = _host_port(where)
        data_ports = tuple(_port(text) for text in ports.split(","))
        return Owner(node=node, host=host, health_port=port, data_ports=data_ports)
    except (ConfigError, ValueError) as exc:
        raise IngestProtocolError(f"moved message {message[:120]!r}: {exc}") from exc


def parse_node(text: str) -> Address:
    """A `HOST:PORT` node address (`[v6]:PORT` for an IPv6 host); raises ConfigError."""
    try:
        return _host_port(text.strip())
    except ValueError as exc:
        raise ConfigError(f"node {text!r}: {exc}") from exc


def parse_nodes(values: Iterable[str]) -> tuple[Address, ...]:
    """Node addresses from repeated values, each one address or a comma list, in order,
    duplicates dropped; raises ConfigError for a bad one, none, or more than MAX_NODES."""
    nodes: list[Address] = []
    for value in values:
        for text in value.split(","):
            node = parse_node(text)
            if node not in nodes:
                nodes.append(node)
    if not 1 <= len(nodes) <= MAX_NODES:
        raise ConfigError(f"nodes lists {len(nodes)} addresses, expected 1 to {MAX_NODES}")
    return tuple(nodes)


def failover_order(nodes: Sequence[T], failed: T) -> tuple[T, ...]:
    """Where to QUERY an upload after `failed` stopped answering: the nodes listed after
    it, then those before it, then itself last (it may be back). A `failed` node not
    listed (learned from a MOVED) comes last after all of them."""
    if failed not in nodes:
        return (*nodes, failed)
    at = nodes.index(failed)
    return (*nodes[at + 1 :], *nodes[:at], failed)


def failover_backoff_s(round_: int) -> float:
    """The pause after the `round_`-th (from 0) failover round that no node answered."""
    first, last = FAILOVER_BACKOFF_S
    return min(last, first * (1 << min(round_, 32)))


def check_redirect(what: str, hops: int, owner: Owner) -> None:
    """Allow one more redirect to `owner` after `hops` already followed; raises
    IngestError once a request would pass MAX_REDIRECTS."""
    if hops >= MAX_REDIRECTS:
        raise IngestError(
            f"{what}: moved more than {MAX_REDIRECTS} times, last to {owner.node} at "
            f"{owner.host}:{owner.health_port}: the nodes disagree about its owner"
        )


def _host_port(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text[:80]!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text[:80]!r}: an IPv6 host goes in brackets, [HOST]:PORT")
    if not host:
        raise ValueError(f"{text[:80]!r} has no host")
    return host, _port(port)


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text[:20]!r} is not a number from 1 to 65535")
    return int(text)
