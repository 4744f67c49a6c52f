"""Liveness by revision age on our own monotonic clock (NodeTable), with a fake clock."""

from __future__ import annotations

from postoffice.core.clock import FakeClock
from postoffice.ingest.cluster import NodeTable, Owner


def _owner(name: str) -> Owner:
    return Owner(node=name, host="127.0.0.1", health_port=7000, data_ports=(7100,))


def test_a_node_is_alive_until_its_revision_is_stale_s_old() -> None:
    clock = FakeClock()
    table = NodeTable(stale_s=4.0, clock=clock)
    assert table.observe("a", 10, _owner("a"))
    clock.advance(3.999)
    assert table.alive("a")
    clock.advance(0.001)
    assert not table.alive("a")
    assert table.age("a") == 4.0


def test_a_new_revision_restarts_the_age_and_an_old_or_repeated_one_does_not() -> None:
    clock = FakeClock()
    table = NodeTable(stale_s=4.0, clock=clock)
    table.observe("a", 10, _owner("a"))
    clock.advance(3.0)
    assert table.observe("a", 11, _owner("a"))
    clock.advance(3.0)
    assert table.alive("a"), "revision 11 was seen 3 s ago"
    assert not table.observe("a", 11, _owner("a")), "the same revision is no renewal"
    assert not table.observe("a", 9, _owner("a")), "an older revision arriving late is ignored"
    clock.advance(1.0)
    assert not table.alive("a")
    assert table.revision("a") == 11


def test_a_deleted_key_is_dead_at_once_and_a_later_revision_revives_it() -> None:
    clock = FakeClock()
    table = NodeTable(stale_s=4.0, clock=clock)
    table.observe("a", 10, _owner("a"))
    table.observe("a", 11, None)
    assert not table.alive("a")
    assert table.owner("a") is None
    table.observe("a", 12, _owner("a"))
    assert table.alive("a")


def test_a_node_never_seen_is_not_alive() -> None:
    table = NodeTable(stale_s=4.0, clock=FakeClock())
    assert not table.alive("ghost")
    assert table.age("ghost") is None
    assert table.owner("ghost") is None


def test_grace_after_our_own_outage_restarts_every_age() -> None:
    clock = FakeClock()
    table = NodeTable(stale_s=4.0, clock=clock)
    table.observe("a", 1, _owner("a"))
    table.observe("b", 2, _owner("b"))
    clock.advance(10.0)  # nobody, us included, could renew
    assert table.live() == []
    table.grace()
    assert table.live() == ["a", "b"]
    clock.advance(4.0)
    assert table.live() == [], "a node that still does not renew dies stale_s later"
