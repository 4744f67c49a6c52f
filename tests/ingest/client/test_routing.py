"""Unit tests of the client's routing decisions among the nodes of a cluster (routing.py):
the MOVED text, node addresses, the failover order and backoff, the redirect bound."""

from __future__ import annotations

import pytest

from postoffice.core.errors import ConfigError
from postoffice.ingest.client.routing import (
    FAILOVER_BACKOFF_S,
    MAX_NODES,
    MAX_REDIRECTS,
    check_redirect,
    failover_backoff_s,
    failover_order,
    parse_moved,
    parse_node,
    parse_nodes,
)
from postoffice.ingest.errors import IngestError, IngestProtocolError
from postoffice.ingest.ownership import Owner

A = Owner(node="a", host="127.0.0.1", health_port=7000, data_ports=(7100, 7101))


@pytest.mark.parametrize(
    ("text", "owner"),
    [
        ("moved a 127.0.0.1:7000 7100,7101", A),
        (
            "moved n-1 host.example:1 65535",
            Owner(node="n-1", host="host.example", health_port=1, data_ports=(65535,)),
        ),
        (
            "moved x [fe80::1%eth0]:7000 7100",
            Owner(node="x", host="fe80::1%eth0", health_port=7000, data_ports=(7100,)),
        ),
    ],
)
def test_parse_moved_reads_the_owner(text: str, owner: Owner) -> None:
    assert parse_moved(text) == owner


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"^moved message '' is not 'moved <node> <host>:<port> <ports>'$"),
        ("moved a 127.0.0.1:7000", r"is not 'moved <node>"),
        ("moved a 127.0.0.1:7000 7100 extra", r"is not 'moved <node>"),
        ("MOVED a 127.0.0.1:7000 7100", r"is not 'moved <node>"),
        ("moved  a 127.0.0.1:7000 7100", r"is not 'moved <node>"),
        ("moved a 127.0.0.1 7100", r": '127\.0\.0\.1' is not HOST:PORT$"),
        ("moved a :7000 7100", r": ':7000' is not HOST:PORT$"),
        ("moved a ::1:7000 7100", r": an IPv6 host goes in brackets"),
        ("moved a []:7000 7100", r": '\[\]:7000' has no host$"),
        ("moved a h:0 7100", r": port '0' is not a number from 1 to 65535$"),
        ("moved a h:70000 7100", r": port '70000' is not a number"),
        ("moved a h:7000 7100,", r": port '' is not a number"),
        ("moved a h:7000 7100,x", r": port 'x' is not a number"),
        ("moved a h:7000 \u0661\u0662", r": port '\u0661\u0662' is not a number"),
        ("moved a h/x:7000 7100", r": owner host 'h/x' must be"),
    ],
)
def test_parse_moved_refuses_other_text(text: str, message: str) -> None:
    with pytest.raises(IngestProtocolError, match=message):
        parse_moved(text)


def test_parse_nodes_takes_repeats_and_comma_lists_in_order() -> None:
    assert parse_nodes(["a:7000", "b:7010,c:7020", "a:7000", "[::1]:7030"]) == (
        ("a", 7000),
        ("b", 7010),
        ("c", 7020),
        ("::1", 7030),
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], r"^nodes lists 0 addresses, expected 1 to 64$"),
        (["a"], r"^node 'a': 'a' is not HOST:PORT$"),
        (["a:7000,"], r"^node '': '' is not HOST:PORT$"),
        (["a:x"], r"^node 'a:x': port 'x' is not a number from 1 to 65535$"),
        ([",".join(f"h:{p}" for p in range(1, MAX_NODES + 2))], r"^nodes lists 65 addresses"),
    ],
)
def test_parse_nodes_refuses_bad_lists(values: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_nodes(values)


def test_parse_node_strips_blanks() -> None:
    assert parse_node(" a:7000 ") == ("a", 7000)


@pytest.mark.parametrize(
    ("failed", "order"),
    [
        ("a", ("b", "c", "a")),
        ("b", ("c", "a", "b")),
        ("c", ("a", "b", "c")),
        ("z", ("a", "b", "c", "z")),  # learned from a MOVED, not listed
    ],
)
def test_failover_asks_the_others_in_turn_then_the_failed_node(
    failed: str, order: tuple[str, ...]
) -> None:
    assert failover_order(("a", "b", "c"), failed) == order


def test_failover_backoff_doubles_and_is_bounded() -> None:
    first, last = FAILOVER_BACKOFF_S
    pauses = [failover_backoff_s(r) for r in range(12)]
    assert pauses[:3] == [first, 2 * first, 4 * first]
    assert pauses == sorted(pauses)
    assert pauses[-1] == last
    assert failover_backoff_s(10**9) == last


def test_redirects_are_cut_past_the_limit() -> None:
    for hops in range(MAX_REDIRECTS):
        check_redirect("chunk 3 of f", hops, A)
    with pytest.raises(
        IngestError,
        match=rf"^chunk 3 of f: moved more than {MAX_REDIRECTS} times, last to a at "
        r"127\.0\.0\.1:7000: the nodes disagree about its owner$",
    ):
        check_redirect("chunk 3 of f", MAX_REDIRECTS, A)
