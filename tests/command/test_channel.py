"""The primary <-> worker channel messages: bytes only, no sockets."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.command.channel import (
    Call,
    ChannelError,
    Failure,
    Message,
    Notice,
    Result,
    channel_stream,
    decode_message,
    encode_message,
)
from postoffice.core.errors import ProtocolError
from postoffice.core.framing import NEED_DATA, Frame, FrameDecoder, encode_parts

SOURCE = Path(__file__).resolve().parents[2] / "src" / "postoffice" / "command" / "channel.py"


def roundtrip(request_id: int, message: Message) -> tuple[int, Message]:
    stream = channel_stream()
    stream.feed(encode_message(request_id, message))
    event = stream.next_event()
    assert event is not NEED_DATA
    assert stream.next_event() is NEED_DATA
    return event


@pytest.mark.parametrize(
    ("request_id", "message"),
    [
        (1, Call(op="clients", args={"ids": [1, 4]})),
        (7, Call(op="info")),
        (7, Result(value=["id=1 addr=127.0.0.1:5 name=", "id=3"])),
        (2**64 - 1, Result(value=None)),
        (3, Failure(message="worker 1 (pid 9) did not answer INFO within 2 s")),
        (0, Notice(event="listening", args={"pid": 12, "host": "127.0.0.1", "port": 6380})),
        (0, Notice(event="shutdown")),
    ],
)
def test_messages_round_trip(request_id: int, message: Message) -> None:
    assert roundtrip(request_id, message) == (request_id, message)


def test_wire_layout_is_a_core_frame_with_a_json_object() -> None:
    wire = encode_message(5, Call(op="kill", args={"conn_id": 3}))
    frames = FrameDecoder()
    frames.feed(wire)
    frame = frames.next_event()
    assert isinstance(frame, Frame)
    assert (frame.type, frame.flags, frame.request_id) == (1, 0, 5)
    assert json.loads(frame.payload) == {"op": "kill", "args": {"conn_id": 3}}
    assert wire[:2] == b"PO"


@pytest.mark.parametrize(
    ("type_", "payload", "error"),
    [
        (9, b"{}", r"^channel frame type 9 is not one of 1\.\.4$"),
        (1, b"not json", r"^channel payload is not JSON: "),
        (1, b"\xff", r"^channel payload is not JSON: "),
        (2, b"[1, 2]", r"^channel payload is a list, expected an object$"),
        (1, b'{"args": {}}', r"^channel field 'op' is None, expected a name of 1\.\.64 chars$"),
        (1, b'{"op": ""}', r"^channel field 'op' is '', expected a name"),
        (1, b'{"op": "info", "args": [1]}', r"^channel field 'args' is \[1\], expected an object$"),
        (3, b'{"message": 5}', r"^channel FAILURE message is 5, expected a string$"),
        (4, b'{"event": 3}', r"^channel field 'event' is 3, expected a name"),
    ],
)
def test_bad_frames_are_channel_errors(type_: int, payload: bytes, error: str) -> None:
    with pytest.raises(ChannelError, match=error):
        decode_message(Frame(type=type_, flags=0, request_id=1, payload=payload))


def test_a_bad_message_leaves_the_stream_usable() -> None:
    stream = channel_stream()
    stream.feed(encode_parts(1, 0, 4, b"[]") + encode_message(5, Call(op="info")))
    with pytest.raises(ChannelError):
        stream.next_event()
    assert stream.last_request_id == 4
    assert stream.next_event() == (5, Call(op="info"))


def test_split_feeds_give_the_same_messages() -> None:
    messages: list[Message] = [Call(op="stats"), Result(value={"commands": 3}), Notice(event="x")]
    wire = b"".join(encode_message(i + 1, m) for i, m in enumerate(messages))
    for cut in range(len(wire) + 1):
        stream = channel_stream()
        got = []
        for part in (wire[:cut], wire[cut:]):
            stream.feed(part)
            while (event := stream.next_event()) is not NEED_DATA:
                got.append(event[1])
        assert got == messages


@pytest.mark.parametrize("value", [{1, 2}, float("nan"), b"bytes"])
def test_values_json_cannot_hold_are_refused(value: object) -> None:
    with pytest.raises(ChannelError, match=r"^channel message cannot be encoded as JSON: "):
        encode_message(1, Result(value=value))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(
    request_id=st.integers(0, 2**64 - 1),
    op=st.text(min_size=1, max_size=64),
    args=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_calls_round_trip(request_id: int, op: str, args: dict[str, object]) -> None:
    assert roundtrip(request_id, Call(op=op, args=args)) == (request_id, Call(op=op, args=args))


@given(type_=st.integers(0, 255), payload=st.binary(max_size=64))
def test_any_frame_is_a_message_or_a_channel_error(type_: int, payload: bytes) -> None:
    try:
        message = decode_message(Frame(type=type_, flags=0, request_id=1, payload=payload))
    except ChannelError:
        return
    assert isinstance(message, Call | Result | Failure | Notice)


@given(data=st.binary(max_size=200))
def test_any_bytes_give_messages_or_protocol_errors(data: bytes) -> None:
    stream = channel_stream()
    stream.feed(encode_message(1, Call(op="info")) + data)
    assert stream.next_event() == (1, Call(op="info"))
    for _ in range(len(data) + 1):
        try:
            if stream.next_event() is NEED_DATA:
                return
        except ProtocolError:
            if stream.failed:
                return


def test_channel_module_does_no_io() -> None:
    tree = ast.parse(SOURCE.read_text())
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert not roots & {"asyncio", "socket", "selectors", "time", "os", "io", "pathlib", "ssl"}
