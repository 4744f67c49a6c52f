"""A bridge connection's shell (bridge.link.Link) over an in-memory transport."""

from __future__ import annotations

import asyncio
import logging

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import netwire
from postoffice.bus.bridge.link import WRITE_HIGH_BYTES, WRITE_LOW_BYTES, Link, LinkState
from postoffice.core.framing import NEED_DATA
from tests.fakes import FakeTransport

SUBSCRIBED = netwire.Subscribed(channel="chat", reliable=True)
HELD = netwire.BridgedMessage(ordinal=3, data=b"hello", held=True)
RETIRED = netwire.Retired(ordinals=(1, 2))


class Recorder:
    """The link's handler: records events; says stop after `stop_after` of them."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[netwire.BridgeEvent] = []
        self.closed: list[Link] = []
        self._stop_after = stop_after

    def on_event(self, link: Link, event: netwire.BridgeEvent) -> bool:
        self.events.append(event)
        return self._stop_after is None or len(self.events) < self._stop_after

    def on_closed(self, link: Link) -> None:
        self.closed.append(link)


def connected(recorder: Recorder) -> tuple[Link, FakeTransport]:
    link = Link("test", recorder.on_event, recorder.on_closed)
    transport = FakeTransport(link)
    link.connection_made(transport)
    return link, transport


def decoded(data: bytes) -> list[netwire.BridgeEvent]:
    stream = netwire.bridge_stream()
    stream.feed(data)
    events: list[netwire.BridgeEvent] = []
    while (item := stream.next_event()) is not NEED_DATA:
        events.append(item[1])
    return events


async def test_frames_fed_one_byte_at_a_time_reach_the_handler_whole() -> None:
    recorder = Recorder()
    link, transport = connected(recorder)
    assert transport.limits == (WRITE_HIGH_BYTES, WRITE_LOW_BYTES)
    assert link.peer == ("127.0.0.1", 50000)
    data = b"".join(netwire.encode_bridge(e) for e in (SUBSCRIBED, HELD, RETIRED))
    for index in range(len(data)):
        link.data_received(data[index : index + 1])
    assert recorder.events == [SUBSCRIBED, HELD, RETIRED]
    assert link.frames_in == 3


async def test_a_handler_that_says_stop_pauses_reading_until_resume() -> None:
    recorder = Recorder(stop_after=1)
    link, transport = connected(recorder)
    link.data_received(netwire.encode_bridge(SUBSCRIBED) + netwire.encode_bridge(HELD))
    assert recorder.events == [SUBSCRIBED]
    assert transport.calls == ["pause_reading"]
    link.data_received(netwire.encode_bridge(RETIRED))  # arrives while paused: kept
    assert recorder.events == [SUBSCRIBED]
    link.resume()
    assert transport.calls == ["pause_reading", "resume_reading", "pause_reading"]
    assert recorder.events == [SUBSCRIBED, HELD]
    link.resume()
    assert recorder.events == [SUBSCRIBED, HELD, RETIRED]


async def test_garbage_is_answered_with_error_proto_and_the_link_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    link, transport = connected(recorder)
    with caplog.at_level(logging.WARNING):
        link.data_received(b"GET / HTTP/1.0\r\n\r\n")
    (error,) = decoded(transport.take())
    assert isinstance(error, netwire.BridgeError)
    assert error.code == "PROTO"
    assert error.message.startswith("bad frame magic")
    assert transport.closed
    assert "bridge closed" in caplog.text
    await asyncio.sleep(0)  # the transport delivers connection_lost one loop turn later
    assert recorder.closed == [link]
    assert link.state is LinkState.CLOSED
    assert link.closed.done()


async def test_a_peer_gone_inside_a_frame_is_logged_with_the_bytes_it_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    link, _ = connected(recorder)
    link.data_received(netwire.encode_bridge(SUBSCRIBED)[:30])
    with caplog.at_level(logging.WARNING):
        assert link.eof_received() is None  # the transport closes our side too
    assert "bridge peer closed inside a frame" in caplog.text
    assert "bytes=30" in caplog.text
    assert recorder.events == []


async def test_a_peer_gone_between_frames_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    link, _ = connected(recorder)
    link.data_received(netwire.encode_bridge(SUBSCRIBED))
    with caplog.at_level(logging.WARNING):
        assert link.eof_received() is None
    assert "inside a frame" not in caplog.text
    assert recorder.events == [SUBSCRIBED]


async def test_a_full_transport_clears_writable_until_it_drains() -> None:
    link, _ = connected(Recorder())
    assert link.writable.is_set()
    link.pause_writing()
    assert not link.writable.is_set()
    link.resume_writing()
    assert link.writable.is_set()
