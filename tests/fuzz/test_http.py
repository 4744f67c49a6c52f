"""The HTTP request parsing of core.http (h11 inside HttpProtocol), driven over the fake
transport: within budget, never an exception out of data_received, and the same answers
however the bytes are cut."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.core.http import MAX_HEAD_BYTES, HttpProtocol, Response, Route, health_routes
from tests.fakes import FakeTransport
from tests.fuzz.budget import (
    MAX_PEAK_BYTES,
    assert_cost_grows_linearly,
    assert_split_feeds_agree,
    assert_within_budget,
    best_cpu_s,
    joined,
    measure,
    repeated,
)

#: The costliest 64 KiB a client may send is the shortest request pipelined, each one
#: answered (h11 takes 40 to 150 us a request, by machine). Any input may cost this many
#: times what that flood costs on the machine running the test: a budget in seconds would
#: measure the machine, a ratio measures the parser.
FLOOD_FACTOR = 3.0
SHORTEST_REQUEST = b"GET /healthz HTTP/1.1\nHost:t\n\n"

fuzz_settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
cuts = st.lists(st.integers(0, 1 << 16), max_size=12)


def _broken() -> Response:
    raise RuntimeError("route failed")


ROUTES: dict[str, Route] = {
    **health_routes(lambda: True),
    "/hello": lambda: Response(status=200, body=b"hello\n"),
    "/broken": _broken,
}

ends = st.sampled_from([b"\r\n", b"\n", b"\r", b""])
request_lines = st.builds(
    lambda method, target, version, end: method + b" " + target + b" " + version + end,
    st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b"G\x00T", b""]),
    st.sampled_from([b"/healthz", b"/readyz?x=1", b"/hello", b"/broken", b"/", b"*", b"/\xff"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 x", b""]),
    ends,
)
short_values = st.one_of(
    st.sampled_from(
        [b" t", b" 0", b" 1", b" -1", b" 9" * 30, b" chunked", b" close", b" 100-continue"]
    ),
    st.binary(max_size=12),
)
#: Values that take a head to the limit and past it.
long_values = st.sampled_from([MAX_HEAD_BYTES - 64, MAX_HEAD_BYTES, MAX_HEAD_BYTES + 1]).map(
    b"v".__mul__
)
header_names = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"X", b" X"]
)


def pieces_with(values: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Request lines, header lines with `values`, line ends, a whole request, garbage."""
    header_lines = st.builds(
        lambda name, value, end: name + b":" + value + end, header_names, values, ends
    )
    return st.one_of(
        request_lines,
        header_lines,
        ends,
        st.just(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"),
        st.binary(max_size=24),
    )


pieces = pieces_with(short_values | long_values)
#: Heads under the limit: h11 caps only an incomplete head, and a complete one is measured
#: after parsing, so past the limit the verdict may depend on the cut (see below).
short_pieces = pieces_with(short_values)


@functools.cache
def http_cpu_s() -> float:
    """The CPU budget of one input: FLOOD_FACTOR times the 64 KiB flood's cost here."""
    flood = (SHORTEST_REQUEST * 3000)[: 64 * 1024]
    return FLOOD_FACTOR * best_cpu_s(lambda: answers([flood]))


def answers(chunks: Sequence[bytes]) -> tuple[bytes, bool]:
    """Feed `chunks` as reads of one connection, then the end of the stream: what was
    written back, and whether the connection was closed."""
    protocol = HttpProtocol(ROUTES)
    transport = FakeTransport(protocol, auto_lost=False)
    protocol.connection_made(transport)
    for chunk in chunks:
        if chunk:  # a transport never delivers an empty read; h11 would take it for the end
            protocol.data_received(chunk)
    protocol.eof_received()
    return bytes(transport.written), transport.closed


@fuzz_settings
@given(repeated(pieces), st.integers(0, 1 << 16))
def test_any_input_costs_the_http_parser_little(data: bytes, cut: int) -> None:
    """64 KiB of request lines, headers at and past the head limit and garbage, whole or
    in two reads, cost at most 4 MiB and FLOOD_FACTOR times a flood of requests, and no
    exception leaves the protocol."""
    chunks = [data[:cut], data[cut:]]
    assert_within_budget(lambda: answers(chunks), len(data), MAX_PEAK_BYTES, http_cpu_s())


@fuzz_settings
@given(joined(short_pieces), st.integers(0, 2**32), cuts)
def test_the_answers_are_the_same_however_the_bytes_are_cut(
    data: bytes, seed: int, pieces: list[int]
) -> None:
    assert_split_feeds_agree(data, seed, pieces, answers)


@pytest.mark.parametrize(
    "request_", [b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /healthz HTTP/1.1\nHost:t\n\n"]
)
def test_a_flood_of_pipelined_requests_costs_little(request_: bytes) -> None:
    """64 KiB of the shortest pipelined requests, each answered, stay under the memory
    budget, and their CPU grows with their number, not faster: each request costs what
    the first ones did (h11 takes 40 to 150 us a request, by machine, so an absolute
    budget for 2000 of them would measure the machine)."""
    data = (request_ * 3000)[: 64 * 1024]
    peak, _ = measure(lambda: answers([data]))
    assert peak <= MAX_PEAK_BYTES, f"{peak} bytes allocated for {len(data)} bytes of input"

    def flood(count: int) -> Callable[[], object]:
        chunk = request_ * count
        return lambda: answers([chunk])

    assert_cost_grows_linearly(flood, 250)


def status_of(answer: tuple[bytes, bool]) -> tuple[bytes, bool]:
    written, closed = answer
    return written[: len(b"HTTP/1.1 200")], closed


@pytest.mark.parametrize(
    "line", [b"X-A:" + b"v" * MAX_HEAD_BYTES, b"X:" + b"v" * (MAX_HEAD_BYTES + 1)]
)
@pytest.mark.parametrize("cut", [None, 100, MAX_HEAD_BYTES + 8])
def test_a_head_past_the_limit_is_refused_and_closed_however_cut(
    line: bytes, cut: int | None
) -> None:
    data = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + line + b"\r\n\r\n"
    chunks = [data] if cut is None else [data[:cut], data[cut:]]
    assert status_of(answers(chunks)) == (b"HTTP/1.1 431", True)


@pytest.mark.parametrize(("over", "status"), [(0, b"HTTP/1.1 200"), (1, b"HTTP/1.1 431")])
def test_a_whole_head_is_measured_as_it_came_whitespace_included(over: int, status: bytes) -> None:
    """The limit is on the head's bytes on the wire: exactly MAX_HEAD_BYTES is served, one
    byte of padding more is refused, in one read as in two."""
    start, end = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX:", b"v\r\n\r\n"
    data = start + b" " * (MAX_HEAD_BYTES - len(start) - len(end) + over) + end
    assert len(data) == MAX_HEAD_BYTES + over
    assert status_of(answers([data]))[0] == status
    assert status_of(answers([data[:9000], data[9000:]]))[0] == status


def test_a_head_padded_past_the_limit_is_refused_when_it_arrives_whole() -> None:
    data = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX:" + b" " * 20_000 + b"v\r\n\r\n"
    assert status_of(answers([data[:17_000], data[17_000:]])) == (b"HTTP/1.1 431", True)
    assert status_of(answers([data])) == (b"HTTP/1.1 431", True)
