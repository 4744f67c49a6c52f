"""The office control protocol codec: the bytes of each message (as the doc shows them),
every cut point, round trips, refusals, and arbitrary bytes giving only our errors."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.core.errors import FrameError, ProtocolError
from postoffice.core.framing import NEED_DATA, Frame, encode, encode_parts
from postoffice.office.control import (
    MAX_ADD_USERS,
    MAX_REQUEST_PAYLOAD_BYTES,
    AddUsers,
    ErrorReply,
    Kind,
    Ok,
    Pause,
    Reply,
    Request,
    Resume,
    SnapshotReply,
    Status,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    reply_stream,
    request_stream,
)
from postoffice.office.errors import ControlProtocolError

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocols" / "office-control.md"

#: (request id, message, wire bytes in hex): the examples of docs/protocols/office-control.md.
EXAMPLES: list[tuple[int, Request | Reply, str]] = [
    (1, Status(), "504f010100000000000000000000000100000002a3a6bf437b7d"),
    (
        2,
        AddUsers(count=5),
        "504f01020000000000000000000000020000000bbeb7a7ad7b22636f756e74223a357d",
    ),
    (3, AddUsers(), "504f010200000000000000000000000300000002a3a6bf437b7d"),
    (4, Pause(), "504f010300000000000000000000000400000002a3a6bf437b7d"),
    (5, Resume(), "504f010400000000000000000000000500000002a3a6bf437b7d"),
]


def _frame(kind: int, payload: bytes, request_id: int = 9, flags: int = 0) -> Frame:
    return Frame(type=kind, flags=flags, request_id=request_id, payload=payload)


@pytest.mark.parametrize(("request_id", "message", "wire"), EXAMPLES)
def test_the_documented_bytes(request_id: int, message: Request, wire: str) -> None:
    assert encode_request(request_id, message).hex() == wire
    stream = request_stream()
    stream.feed(bytes.fromhex(wire))
    assert stream.next_event() == (request_id, message)


def test_the_doc_shows_every_example_and_every_type() -> None:
    text = DOC.read_text()
    flat = re.sub(r"\s+", "", text)
    for _, _, wire in EXAMPLES:
        assert wire in flat
    for kind in Kind:
        assert f"| {int(kind)} | {kind.name} |" in text


REPLIES: list[Reply] = [
    Ok(message="3 users more from day 2", fields={"added": 3, "from_day": 2}),
    Ok(message="clock paused at day 1 09:00", fields={"paused": True}),
    ErrorReply(code="PROTO", message="control payload is not JSON"),
    SnapshotReply(snapshot={"day": 1, "clock": "08:00", "services": []}),
]


@pytest.mark.parametrize("reply", REPLIES)
def test_replies_round_trip(reply: Reply) -> None:
    stream = reply_stream()
    stream.feed(encode_reply(7, reply))
    assert stream.next_event() == (7, reply)


def test_a_request_split_at_every_cut_point() -> None:
    wire = encode_request(3, AddUsers(count=12)) + encode_request(4, Status())
    for cut in range(len(wire) + 1):
        stream = request_stream()
        got = []
        for part in (wire[:cut], wire[cut:]):
            stream.feed(part)
            while (event := stream.next_event()) is not NEED_DATA:
                got.append(event)
        assert got == [(3, AddUsers(count=12)), (4, Status())], cut


BAD_REQUESTS: list[tuple[Frame, str]] = [
    (
        _frame(9, b"{}"),
        r"^control frame type 9 is not a request \(1 status, 2 add_users, 3 pause, 4 resume\)$",
    ),
    (_frame(64, b"{}"), r"^control frame type 64 is not a request"),
    (_frame(1, b"{}", request_id=0), r"^control request id 0 is reserved$"),
    (_frame(1, b"{}", flags=1), r"^control frame flags 0x0001, expected 0$"),
    (_frame(1, b"nope"), r"^control payload is not JSON: "),
    (_frame(1, b"\xff"), r"^control payload is not JSON: "),
    (_frame(1, b""), r"^control payload is not JSON: "),
    (_frame(1, b"[]"), r"^control payload is a JSON list, expected an object$"),
    (_frame(1, b'{"x":1}'), r"^status takes no fields, got 'x'$"),
    (_frame(3, b'{"now":true}'), r"^pause takes no fields, got 'now'$"),
    (_frame(2, b'{"count":0}'), r"^add_users count must be an integer from 1 to 1000000, got 0$"),
    (
        _frame(2, b'{"count":true}'),
        r"^add_users count must be an integer from 1 to 1000000, got True$",
    ),
    (
        _frame(2, b'{"count":"5"}'),
        r"^add_users count must be an integer from 1 to 1000000, got '5'$",
    ),
    (
        _frame(2, b'{"count":1.5}'),
        r"^add_users count must be an integer from 1 to 1000000, got 1.5$",
    ),
    (_frame(2, b'{"count":1000001}'), r"^add_users count must be an integer"),
    (_frame(2, b'{"count":2,"who":1}'), r"^add_users takes only 'count', got 'who'$"),
    (_frame(1, b"[" * 100_000), r"^control payload is not JSON"),
]


@pytest.mark.parametrize(("frame", "message"), BAD_REQUESTS)
def test_bad_requests_are_refused_with_a_clear_message(frame: Frame, message: str) -> None:
    with pytest.raises(ControlProtocolError, match=message):
        decode_request(frame)


def test_a_bad_request_leaves_the_stream_usable() -> None:
    stream = request_stream()
    stream.feed(encode_parts(2, 0, 5, b'{"count":-1}') + encode_request(6, Pause()))
    with pytest.raises(ControlProtocolError):
        stream.next_event()
    assert stream.last_request_id == 5
    assert stream.next_event() == (6, Pause())


def test_an_oversized_request_fails_before_its_payload_arrives() -> None:
    stream = request_stream()
    header = encode_parts(1, 0, 1, b"x" * (MAX_REQUEST_PAYLOAD_BYTES + 1))[:24]
    stream.feed(header)
    with pytest.raises(FrameError, match=r"^frame payload length 4097 exceeds limit 4096$"):
        stream.next_event()


def test_encoding_refuses_what_the_decoder_would() -> None:
    with pytest.raises(ControlProtocolError, match=r"^control request id 0 is reserved$"):
        encode_request(0, Status())
    with pytest.raises(ControlProtocolError, match=r"^add_users count must be"):
        encode_request(1, AddUsers(count=MAX_ADD_USERS + 1))


BAD_REPLIES: list[tuple[Frame, str]] = [
    (_frame(1, b"{}"), r"^control frame type 1 is not a reply \(64 ok, 65 error, 66 snapshot\)$"),
    (_frame(64, b"{}"), r"^control ok message is None, expected text$"),
    (_frame(65, b'{"message":"x"}'), r"^control error code is None, expected a word$"),
    (_frame(65, b'{"code":"PROTO"}'), r"^control error message is None, expected text$"),
    (_frame(66, b"1"), r"^control payload is a JSON int, expected an object$"),
]


@pytest.mark.parametrize(("frame", "message"), BAD_REPLIES)
def test_bad_replies_are_refused(frame: Frame, message: str) -> None:
    with pytest.raises(ControlProtocolError, match=message):
        decode_reply(frame)


_requests = st.one_of(
    st.just(Status()),
    st.just(Pause()),
    st.just(Resume()),
    st.builds(AddUsers, count=st.none() | st.integers(1, MAX_ADD_USERS)),
)


@given(request_id=st.integers(1, 2**64 - 1), request=_requests)
def test_requests_round_trip(request_id: int, request: Request) -> None:
    stream = request_stream()
    stream.feed(encode_request(request_id, request))
    assert stream.next_event() == (request_id, request)


@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_give_requests_or_protocol_errors(data: bytes) -> None:
    stream = request_stream()
    stream.feed(data)
    for _ in range(10):
        try:
            if stream.next_event() is NEED_DATA:
                break
        except ProtocolError:
            if stream.failed:
                break


@given(kind=st.integers(0, 255), payload=st.binary(max_size=64), flags=st.integers(0, 3))
def test_arbitrary_frames_give_messages_or_protocol_errors(
    kind: int, payload: bytes, flags: int
) -> None:
    stream = request_stream()
    stream.feed(encode(Frame(type=kind, flags=flags, request_id=1, payload=payload)))
    try:
        stream.next_event()
    except ControlProtocolError:
        pass


def test_the_codec_is_pure() -> None:
    source = Path(__file__).resolve().parents[2] / "src" / "postoffice" / "office" / "control.py"
    roots = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert not roots & {"asyncio", "socket", "selectors", "time", "os", "io", "pathlib", "ssl"}
