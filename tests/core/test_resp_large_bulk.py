"""The RESP parser's large bulk path: a partial bulk of PREALLOCATE_BULK_BYTES or more is
read into one buffer of its length, whatever the reads' cut points."""

from __future__ import annotations

import tracemalloc

import pytest

from postoffice.core.resp import NEED_DATA, Command, RespParser, RespProtocolError, encode_command
from postoffice.core.resp.parser import PREALLOCATE_BULK_BYTES

VALUE = bytes(range(256)) * (PREALLOCATE_BULK_BYTES // 256 + 3)  # a little over the mark
WIRE = encode_command([b"SET", b"key", VALUE])
HEADER = len(WIRE) - len(VALUE) - 2  # where the value starts


def _commands(parser: RespParser) -> list[list[bytes]]:
    found: list[list[bytes]] = []
    while (event := parser.next_event()) is not NEED_DATA:
        assert isinstance(event, Command)
        found.append(event.args)
    return found


def _parse(*reads: bytes) -> list[list[bytes]]:
    parser = RespParser()
    found: list[list[bytes]] = []
    for data in reads:
        parser.feed(data)
        found += _commands(parser)
    assert not parser.has_partial()
    return found


CUTS = sorted(
    {1, 2, HEADER - 1, HEADER, HEADER + 1, HEADER + 1000}
    | {len(WIRE) - n for n in (1, 2, 3, 4, 1000)}
)


@pytest.mark.parametrize("cut", CUTS)
def test_a_large_bulk_cut_in_two_anywhere_parses_whole(cut: int) -> None:
    assert _parse(WIRE[:cut], WIRE[cut:]) == [[b"SET", b"key", VALUE]]


@pytest.mark.parametrize("cut", CUTS[:-1])
def test_a_large_bulk_cut_in_three_parses_whole(cut: int) -> None:
    later = cut + (len(WIRE) - cut) // 2
    assert _parse(WIRE[:cut], WIRE[cut:later], WIRE[later:]) == [[b"SET", b"key", VALUE]]


def test_a_large_bulk_fed_in_small_reads_parses_whole() -> None:
    reads = [WIRE[i : i + 1000] for i in range(0, len(WIRE), 1000)]
    assert _parse(*reads) == [[b"SET", b"key", VALUE]]


def test_commands_after_a_large_bulk_in_its_last_read_follow_it() -> None:
    tail = WIRE[HEADER + 10 :] + encode_command([b"GET", b"key"]) + encode_command([b"PING"])
    assert _parse(WIRE[: HEADER + 10], tail) == [
        [b"SET", b"key", VALUE],
        [b"GET", b"key"],
        [b"PING"],
    ]


def test_two_large_bulks_in_one_command() -> None:
    wire = encode_command([b"MSET", b"a", VALUE, b"b", VALUE[::-1]])
    reads = [wire[i : i + 4096] for i in range(0, len(wire), 4096)]
    assert _parse(*reads) == [[b"MSET", b"a", VALUE, b"b", VALUE[::-1]]]


def test_buffered_counts_the_whole_buffer_of_a_large_bulk_in_progress() -> None:
    """What the partial-request budget (--max-partial-size) is charged: the buffer
    allocated for the announced length, not only the bytes sent so far."""
    parser = RespParser()
    parser.feed(WIRE[: HEADER + 5000])
    assert _commands(parser) == []
    assert parser.buffered == len(VALUE)
    assert parser.has_partial()
    parser.feed(WIRE[HEADER + 5000 :])
    assert _commands(parser) == [[b"SET", b"key", VALUE]]
    assert parser.buffered == 0


def test_a_large_bulk_not_followed_by_crlf_is_a_protocol_error() -> None:
    bad = WIRE[:-2] + b"xx"
    parser = RespParser()
    parser.feed(bad[: HEADER + 1])
    assert _commands(parser) == []
    parser.feed(bad[HEADER + 1 :])
    with pytest.raises(
        RespProtocolError, match=r"^Protocol error: bulk string not followed by CRLF$"
    ):
        parser.next_event()


def test_a_1mib_bulk_in_64kib_reads_peaks_near_its_own_size() -> None:
    """Each read a new bytes object, as from a transport, dropped once fed: the parser
    holds one buffer of the value's size and copies it once into the argument."""
    value = b"v" * (1 << 20)
    wire = memoryview(encode_command([b"SET", b"key", value]))
    parser = RespParser()
    found: list[list[bytes]] = []
    tracemalloc.start()
    try:
        for at in range(0, len(wire), 1 << 16):
            parser.feed(bytes(wire[at : at + (1 << 16)]))
            found += _commands(parser)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == [[b"SET", b"key", value]]
    assert peak < 2.1 * len(value)  # chunks, their join and the buffer held 3x before
