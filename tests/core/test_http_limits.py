"""The HTTP ports' limits (core.http with a ConnectionManager): connections, idle time,
and the deadline of a request head; fake transport and fake clock."""

from __future__ import annotations

from postoffice.core.clock import FakeClock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.http import HTTP_LIMITS, HttpProtocol, Response, Route
from tests.fakes import FakeTransport

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def _ok() -> Response:
    return Response(status=200, body=b"ok\n")


ROUTES: dict[str, Route] = {"/healthz": _ok}


def new_manager(**limits: float) -> tuple[ConnectionManager, FakeClock]:
    clock = FakeClock()
    settings = {"max_connections": 2, "idle_timeout_s": 60.0, "request_timeout_s": 10.0}
    settings.update(limits)
    limited = ConnectionLimits(
        max_connections=int(settings["max_connections"]),
        idle_timeout_s=settings["idle_timeout_s"],
        request_timeout_s=settings["request_timeout_s"],
    )
    return ConnectionManager(limited, clock=clock), clock


def connect(manager: ConnectionManager) -> tuple[HttpProtocol, FakeTransport]:
    proto = HttpProtocol(ROUTES, manager)
    transport = FakeTransport(proto)
    proto.connection_made(transport)
    return proto, transport


def test_the_default_limits_are_nginx_like() -> None:
    assert HTTP_LIMITS.max_connections == 512
    assert HTTP_LIMITS.idle_timeout_s == 60.0
    assert HTTP_LIMITS.request_timeout_s == 10.0


async def test_a_connection_over_the_limit_gets_503_and_is_closed() -> None:
    manager, _ = new_manager()
    first, _ = connect(manager)
    connect(manager)
    _, third = connect(manager)
    assert third.take().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert third.closed
    assert manager.rejected == 1
    first.data_received(GET)  # the admitted ones are served
    assert manager.active == 2


async def test_a_slot_frees_when_a_connection_goes() -> None:
    manager, _ = new_manager()
    first, _ = connect(manager)
    connect(manager)
    first.connection_lost(None)
    _, third = connect(manager)
    assert not third.closed


async def test_an_idle_connection_is_closed_after_the_timeout() -> None:
    manager, clock = new_manager()
    _, idle = connect(manager)
    served, served_transport = connect(manager)
    clock.advance(59)
    served.data_received(GET)  # an answered request restarts its idle time
    assert served_transport.take().startswith(b"HTTP/1.1 200 OK\r\n")
    clock.advance(2)
    manager.sweep()
    assert idle.closed
    assert not served_transport.closed
    assert manager.timed_out == 1


async def test_a_request_head_trickled_past_the_deadline_gets_408() -> None:
    manager, clock = new_manager()
    proto, transport = connect(manager)
    for byte in GET[:12]:  # a byte a second: never idle, never whole
        proto.data_received(bytes([byte]))
        clock.advance(1)
        manager.sweep()
    assert transport.take().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.closed
    assert manager.request_timeouts == 1


async def test_a_head_that_arrives_in_time_is_answered_and_the_deadline_ends() -> None:
    manager, clock = new_manager()
    proto, transport = connect(manager)
    proto.data_received(GET[:10])
    clock.advance(9)
    proto.data_received(GET[10:])
    assert transport.take().startswith(b"HTTP/1.1 200 OK\r\n")
    assert proto.partial_since is None
    clock.advance(30)
    manager.sweep()
    assert not transport.closed
