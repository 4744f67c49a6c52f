"""What every parser fuzz test shares: the cost of one input, a drain loop that records
events and errors alike, cut points, and hostile frame headers."""

from __future__ import annotations

import gc
import random
import re
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import pytest
from hypothesis import strategies as st

from postoffice.core.framing import HEADER, MAGIC, NEED_DATA, VERSION, NeedData

#: The largest input one example feeds: a read or two of a hostile peer.
MAX_INPUT_BYTES: Final = 64 * 1024

#: What parsing one input of up to MAX_INPUT_BYTES may take: the RESP parser's budget.
#: Each decoder's limit on a frame is far over it (8 or 16 MiB), so a parser that set
#: aside the length a header declares before the bytes arrived would fail here.
MAX_PEAK_BYTES: Final = 4 << 20
MAX_CPU_S: Final = 0.1

#: Inputs up to this long are fed cut at every point; longer ones at a sample of cuts.
EVERY_CUT_BYTES: Final = 256
SAMPLED_CUTS: Final = 48


class Decoder(Protocol):
    """The sans-I/O decoder contract: feed bytes, take events until NEED_DATA."""

    @property
    def buffered_bytes(self) -> int: ...

    def feed(self, data: bytes | bytearray | memoryview) -> None: ...

    def next_event(self) -> object | NeedData: ...


def measure(parse: Callable[[], object]) -> tuple[int, float]:
    """Run `parse` twice: return the peak of memory it allocates (bytes, under tracemalloc,
    which slows Python several times over) and the CPU seconds of the first, untraced run.
    An exception `parse` does not catch fails the test."""
    # A collection of the whole test process's heap is not the input's cost: keep it out.
    gc.disable()
    started = time.thread_time()
    try:
        parse()
    finally:
        elapsed = time.thread_time() - started
        gc.enable()
    tracemalloc.start()
    try:
        parse()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, elapsed


def assert_within_budget(
    parse: Callable[[], object], size: int, peak_bytes: int, cpu_s: float = MAX_CPU_S
) -> None:
    """`parse` of an input of `size` bytes stays under `peak_bytes` and `cpu_s`."""
    peak, elapsed = measure(parse)
    assert peak <= peak_bytes, f"{peak} bytes allocated for {size} bytes of input"
    assert elapsed < cpu_s, f"{elapsed:.3f} s of CPU for {size} bytes of input"


def best_cpu_s(parse: Callable[[], object], rounds: int = 3) -> float:
    """The least CPU seconds `parse` took over `rounds` runs, with the collector held off."""
    gc.disable()
    try:
        best = float("inf")
        for _ in range(rounds):
            started = time.thread_time()
            parse()
            best = min(best, time.thread_time() - started)
        return best
    finally:
        gc.enable()


def assert_cost_grows_linearly(
    parse_of: Callable[[int], Callable[[], object]], n: int, factor: int = 8, slack: float = 2.0
) -> None:
    """`parse_of(k)` parses an input of k units: `factor` times the input costs at most
    `factor * slack` times the CPU. A cost that grows with the square of the input (a
    buffer copied once per event, say) takes `factor` squared and fails; the check is a
    ratio measured in one process, so a slow or busy machine does not move it."""
    small = best_cpu_s(parse_of(n))
    large = best_cpu_s(parse_of(n * factor))
    assert large < small * factor * slack, (
        f"{n * factor} units cost {large:.4f} s of CPU, {large / small:.1f} times"
        f" the {small:.4f} s of {n}"
    )


def drain_events(
    decoder: Decoder,
    out: list[object],
    *,
    fatal: type[Exception] | tuple[type[Exception], ...],
    refused: type[Exception] | tuple[type[Exception], ...],
    show: Callable[[object], object] = lambda event: event,
) -> bool:
    """Take every event the bytes fed so far hold into `out`: each event (through `show`),
    each `refused` error (the message is dropped, framing holds: read on), and a `fatal`
    one (framing is lost: it must be raised again the same way). Return False after a
    fatal error. Any other exception propagates."""
    while True:
        try:
            event = decoder.next_event()
        except fatal as exc:
            out.append(("fatal", type(exc).__name__, str(exc)))
            with pytest.raises(type(exc), match=f"^{re.escape(str(exc))}$"):
                decoder.next_event()  # a lost framing fails the same way for good
            return False
        except refused as exc:
            out.append(("refused", type(exc).__name__, str(exc)))
            continue
        if event is NEED_DATA:
            return True
        out.append(show(event))


def drain(
    decoder: Decoder,
    chunks: Sequence[bytes],
    *,
    fatal: type[Exception] | tuple[type[Exception], ...],
    refused: type[Exception] | tuple[type[Exception], ...],
    show: Callable[[object], object] = lambda event: event,
) -> list[object]:
    """Feed `chunks` as reads of one connection and return what came out, in order (see
    `drain_events`), and last the bytes still buffered unless framing was lost."""
    out: list[object] = []
    for chunk in chunks:
        decoder.feed(chunk)
        if not drain_events(decoder, out, fatal=fatal, refused=refused, show=show):
            return out
    out.append(("buffered", decoder.buffered_bytes))
    return out


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """`data` cut at every offset of `cuts` (taken modulo its length + 1)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def cut_points(data: bytes, seed: int) -> list[int]:
    """Every cut point of a short input; a seeded sample (ends included) of a long one."""
    if len(data) <= EVERY_CUT_BYTES:
        return list(range(len(data) + 1))
    rng = random.Random(seed)
    return sorted({0, 1, len(data) - 1, len(data), *rng.sample(range(len(data)), SAMPLED_CUTS)})


def assert_split_feeds_agree(
    data: bytes, seed: int, pieces: Sequence[int], run: Callable[[Sequence[bytes]], object]
) -> None:
    """`run` gives the same outcome for `data` whole, cut in two at each of
    `cut_points(data, seed)`, and cut at all of `pieces` at once."""
    whole = run([data])
    for cut in cut_points(data, seed):
        assert run([data[:cut], data[cut:]]) == whole, f"cut at {cut} of {len(data)} bytes"
    assert run(split(data, pieces)) == whole, f"cut at {sorted(pieces)} of {len(data)} bytes"


def header(
    type_: int,
    length: int,
    *,
    flags: int = 0,
    request_id: int = 1,
    crc: int = 0,
    magic: bytes = MAGIC,
    version: int = VERSION,
    reserved: int = 0,
) -> bytes:
    """A frame header with any fields, however wrong."""
    return HEADER.pack(magic, version, type_, flags, reserved, request_id, length, crc)


def limit_neighbours(limit: int) -> list[int]:
    """A limit and the values either side of it."""
    return [limit - 1, limit, limit + 1]


def lengths(*limits: int) -> st.SearchStrategy[int]:
    """Lengths a hostile header declares: small ones, each limit's neighbours, the most the
    field holds."""
    edges = sorted({n for limit in limits for n in limit_neighbours(limit) if n >= 0})
    return st.one_of(
        st.integers(0, 64), st.sampled_from(edges), st.sampled_from([0xFFFF, 0xFFFF_FFFF])
    )


def u16(value: int) -> bytes:
    return struct.pack(">H", value & 0xFFFF)


def u32(value: int) -> bytes:
    return struct.pack(">I", value & 0xFFFF_FFFF)


def repeated(pieces: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Hostile pieces joined and repeated up to MAX_INPUT_BYTES, the way a peer floods."""
    return st.builds(
        lambda parts, times: (b"".join(parts) * times)[:MAX_INPUT_BYTES],
        st.lists(pieces, min_size=1, max_size=8),
        st.integers(min_value=1, max_value=4000),
    )


def joined(pieces: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Hostile pieces joined once: short enough to feed at every cut point."""
    return st.lists(pieces, min_size=1, max_size=6).map(b"".join)


def frame_pieces(
    types: st.SearchStrategy[int],
    payloads: st.SearchStrategy[bytes],
    *,
    limit: int,
    self_checked_flag: int = 0,
) -> st.SearchStrategy[bytes]:
    """What a hostile peer of a framed protocol sends: frames of `types` carrying
    `payloads` (with a right, wrong or absent CRC-32), headers declaring lengths at and past
    `limit` and the decoder's internal thresholds with too few bytes after them (what
    follows becomes their payload), headers broken field by field, and random bytes."""
    flags = st.one_of(st.just(0), st.just(self_checked_flag), st.integers(0, 0xFFFF))
    request_ids = st.one_of(st.integers(0, 3), st.just(2**64 - 1))

    def framed(type_: int, flag: int, request_id: int, payload: bytes, crc: str) -> bytes:
        value = {"right": zlib.crc32(payload), "zero": 0, "wrong": zlib.crc32(payload) ^ 1}[crc]
        return header(type_, len(payload), flags=flag, request_id=request_id, crc=value) + payload

    return st.one_of(
        st.builds(
            framed,
            types,
            flags,
            request_ids,
            payloads,
            st.sampled_from(["right", "right", "zero", "wrong"]),
        ),
        st.builds(
            lambda type_, length, flag: header(type_, length, flags=flag, crc=0),
            types,
            lengths(limit, 256 * 1024, 64 * 1024),
            flags,
        ),
        st.builds(
            lambda magic, version, reserved, length: header(
                1, length, magic=magic, version=version, reserved=reserved
            ),
            st.sampled_from([MAGIC, b"PX", b"\r\n", b"GE"]),
            st.sampled_from([VERSION, 0, 2, 255]),
            st.sampled_from([0, 1, 0xFFFF]),
            st.integers(0, 64),
        ),
        st.binary(max_size=40),
    )


def good_frames(
    types: st.SearchStrategy[int], payloads: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    """Well-framed frames only (their payloads as hostile as `payloads`): repeated, a flood
    no frame error cuts short, so every byte of it is decoded."""
    return st.builds(
        lambda type_, request_id, payload: (
            header(type_, len(payload), request_id=request_id, crc=zlib.crc32(payload)) + payload
        ),
        types,
        st.integers(1, 3),
        payloads,
    )
