"""The multi-process run's messages: round trips, every cut short, garbage refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.core.framing import NEED_DATA as FRAME_NEED_DATA
from postoffice.core.framing import Frame, FrameDecoder
from postoffice.office.errors import RolesProtocolError
from postoffice.office.roles_wire import (
    AddUsers,
    Count,
    Counted,
    DayStart,
    Down,
    Draws,
    Hello,
    Issue,
    Issued,
    Lost,
    OperatorNews,
    Plans,
    SocketMessage,
    Stop,
    Up,
    Visits,
    decode_down,
    decode_socket,
    decode_up,
    encode_down,
    encode_socket,
    encode_up,
)

DOWN: list[Down] = [
    DayStart(day=0),
    DayStart(day=4_000_000_000),
    OperatorNews(served=(), breaks=()),
    OperatorNews(served=(1, 5, 9), breaks=(5,)),
    Issue(count=1),
    Issue(count=300),
    Count(),
    Stop(),
]
UP: list[Up] = [
    Visits(visits=()),
    Visits(visits=((0, 0, (5,)), (7, 479, (0, 1, 2, 3, 4, 5)))),
    Plans(plans=((0, None, 3), (1, 60, 30), (2, 419, 12))),
    Draws(draws=()),
    Draws(draws=((4, 9), (5, 1))),
    Issued(first=1),
    Issued(first=2**63),
    Counted(issued=0),
    Counted(issued=12345),
]


@pytest.mark.parametrize("message", DOWN, ids=repr)
def test_director_messages_round_trip(message: Down) -> None:
    assert decode_down(encode_down(message)) == message


@pytest.mark.parametrize("message", UP, ids=repr)
def test_role_messages_round_trip(message: Up) -> None:
    assert decode_up(encode_up(message)) == message


@pytest.mark.parametrize("message", [m for m in DOWN if len(encode_down(m)) > 1], ids=repr)
def test_a_director_message_cut_anywhere_is_refused(message: Down) -> None:
    data = encode_down(message)
    for cut in range(1, len(data)):
        with pytest.raises(RolesProtocolError, match=r"cut short|past its end"):
            decode_down(data[:cut])


@pytest.mark.parametrize("message", [m for m in UP if len(encode_up(m)) > 1], ids=repr)
def test_a_role_message_cut_anywhere_is_refused(message: Up) -> None:
    data = encode_up(message)
    for cut in range(1, len(data)):
        with pytest.raises(RolesProtocolError, match=r"cut short|past its end"):
            decode_up(data[:cut])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", r"^an empty director message$"),
        (b"\x09", r"^unknown director message type 0x09$"),
        (b"\x81", r"^unknown director message type 0x81$"),
        (b"\x03\x00\x00\x00\x00", r"^ISSUE of 0 tickets$"),
        (b"\x04\x00", r"^COUNT message of 2 bytes has 1 bytes past its end$"),
        (b"\x02\x00\x10\x00\x00\x00\x00\x00\x00", r"^NEWS message of \d+ items, limit 1000000$"),
    ],
)
def test_bad_director_messages_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(RolesProtocolError, match=error):
        decode_down(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", r"^an empty role message$"),
        (b"\x01", r"^unknown role message type 0x01$"),
        (b"\x81\x00\x00\x00\x01\x00\x00\x00\x07\x01\xe0\x00\x01\x02", r"arrives at minute 480$"),
        (b"\x81\x00\x00\x00\x01\x00\x00\x00\x07\x00\x00\x00\x00", r"user 7 has 0 requests$"),
        (b"\x81\x00\x00\x00\x01\x00\x00\x00\x07\x00\x00\x00\x01\x06", r"asks for service 6$"),
        (b"\x82\x00\x00\x00\x01\x00\x00\x00\x02\x01\xe0\x00\x05", r"break due at minute 480$"),
        (b"\x83\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00", r"service time 0 minutes$"),
        (b"\x84" + bytes(8), r"^ISSUED: ticket 0$"),
        (b"\x83\x7f\xff\xff\xff", r"^DRAWS message of \d+ items, limit 1000000$"),
    ],
)
def test_bad_role_messages_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(RolesProtocolError, match=error):
        decode_up(data)


@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_message_or_our_error(data: bytes) -> None:
    for decode in (decode_down, decode_up):
        try:
            decode(data)
        except RolesProtocolError:
            pass


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.integers(0, 479),
            st.lists(st.integers(0, 5), min_size=1, max_size=20).map(tuple),
        ),
        max_size=30,
    )
)
def test_any_visits_round_trip(visits: list[tuple[int, int, tuple[int, ...]]]) -> None:
    message = Visits(visits=tuple(visits))
    assert decode_up(encode_up(message)) == message


SOCKET: list[SocketMessage] = [
    Hello(role="issuer", index=0, pid=10, first=0, count=0, skills=()),
    Hello(role="operators", index=2, pid=11, first=4, count=2, skills=(5, 0)),
    AddUsers(first=10, count=25, per_process=4, index=3),
    Lost(index=3, pid=99, detail="killed by SIGKILL"),
]


def _frame(data: bytes) -> Frame:
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_event()
    assert frame is not FRAME_NEED_DATA
    return frame


@pytest.mark.parametrize("message", SOCKET, ids=repr)
def test_socket_messages_round_trip(message: SocketMessage) -> None:
    assert decode_socket(_frame(encode_socket(message))) == message


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (Frame(type=9, flags=0, request_id=0, payload=b"{}"), r"^unknown frame type 9"),
        (Frame(type=1, flags=1, request_id=0, payload=b"{}"), r"^unknown frame type 1"),
        (Frame(type=1, flags=0, request_id=0, payload=b"{"), r"^HELLO payload is not JSON"),
        (Frame(type=1, flags=0, request_id=0, payload=b"[]"), r"^HELLO payload is not a JSON"),
        (
            Frame(type=1, flags=0, request_id=0, payload=b'{"role":"boss"}'),
            r"^HELLO role must be one of issuer, operators, manager, users, got 'boss'$",
        ),
        (
            Frame(
                type=1,
                flags=0,
                request_id=0,
                payload=b'{"role":"users","skills":[],"index":-1,"pid":1,"first":0,"count":1}',
            ),
            r"^HELLO field 'index' must be an integer >= 0, got -1$",
        ),
        (
            Frame(type=1, flags=0, request_id=0, payload=b'{"role":"users","skills":[6]}'),
            r"^HELLO skills must be a list of services, got \[6\]$",
        ),
        (
            Frame(
                type=2,
                flags=0,
                request_id=0,
                payload=b'{"first":0,"count":1,"per_process":0,"index":0}',
            ),
            r"^ADD_USERS field 'per_process' must be at least 1, got 0$",
        ),
        (
            Frame(type=3, flags=0, request_id=0, payload=b'{"index":0,"pid":1,"detail":5}'),
            r"^LOST detail must be a string, got 5$",
        ),
    ],
)
def test_bad_socket_frames_are_refused(frame: Frame, error: str) -> None:
    with pytest.raises(RolesProtocolError, match=error):
        decode_socket(frame)


def test_the_examples_of_the_protocol_document_are_what_the_code_sends() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "protocols" / "office-roles.md").read_text()
    assert f"down  {encode_down(Issue(count=3)).hex(' ')}\n" in doc
    assert f"up    {encode_up(Issued(first=42)).hex(' ')}\n" in doc
    hello = encode_socket(Hello(role="issuer", index=0, pid=4242, first=0, count=0, skills=()))
    payload = hello[24:].decode()
    assert f"`{payload}` is {len(payload)} bytes" in doc
