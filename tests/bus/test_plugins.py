"""Plugins: the registry's changes as events, and modules whose callbacks see them."""

from __future__ import annotations

import logging
import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusLocation, SystemControlBlock, wire
from postoffice.bus.errors import BusConfigError
from postoffice.bus.plugins import ChannelEvent, PluginHost, ReadyEvent, RegistryWatch, UserEvent
from postoffice.bus.registry import Registry
from tests.bus.rig import shm_directory


@pytest.fixture
def registry() -> Iterator[Registry]:
    directory = shm_directory()
    location = BusLocation.new(directory)
    scb, fd = SystemControlBlock.create(location)
    made = Registry(
        location, scb, max_channels=16, max_buffer_bytes=1 << 20, default_num_slots=8,
        default_slot_size=64,
    )  # fmt: skip
    yield made
    made.close()
    scb.close()
    os.close(fd)
    shutil.rmtree(directory, ignore_errors=True)


def pub(name: str, *, reliable: bool = False) -> wire.CreatePublisherRequest:
    return wire.CreatePublisherRequest(channel=name, type="t", reliable=reliable)


def sub(name: str) -> wire.CreateSubscriberRequest:
    return wire.CreateSubscriberRequest(channel=name)


class TestRegistryWatch:
    def test_new_channel_and_users_come_in_creation_order(self, registry: Registry) -> None:
        watch = RegistryWatch()
        assert watch.changes(registry) == []
        target, publisher = registry.add_publisher(1, pub("a", reliable=True))
        _, subscriber = registry.add_subscriber(-2, sub("a"))
        assert watch.changes(registry) == [
            ChannelEvent(channel="a", channel_id=target.channel_id, type="t"),
            UserEvent(channel="a", user_id=publisher, publisher=True, client=1, reliable=True),
            UserEvent(channel="a", user_id=subscriber, publisher=False, client=-2, reliable=False),
        ]
        assert watch.changes(registry) == []

    def test_removed_users_come_before_their_removed_channel(self, registry: Registry) -> None:
        watch = RegistryWatch()
        target, user = registry.add_publisher(3, pub("a"))
        channel_id = target.channel_id
        watch.changes(registry)
        registry.drop_client(3)
        assert watch.changes(registry) == [
            UserEvent(
                channel="a", user_id=user, publisher=True, client=3, reliable=False, removed=True
            ),
            ChannelEvent(channel="a", channel_id=channel_id, type="t", removed=True),
        ]

    def test_a_channel_made_again_gets_a_removal_then_a_creation(self, registry: Registry) -> None:
        watch = RegistryWatch()
        registry.add_publisher(1, pub("a"))
        watch.changes(registry)
        registry.drop_client(1)
        gone = watch.changes(registry)
        registry.add_publisher(2, pub("a"))
        again = watch.changes(registry)
        assert [(type(e).__name__, e.removed) for e in gone] == [
            ("UserEvent", True),
            ("ChannelEvent", True),
        ]
        assert [(type(e).__name__, e.removed) for e in again] == [
            ("ChannelEvent", False),
            ("UserEvent", False),
        ]

    def test_user_event_tells_a_bridge_by_its_negative_client(self) -> None:
        event = UserEvent(channel="a", user_id=0, publisher=True, client=-1, reliable=False)
        assert event.bridge
        assert not UserEvent(
            channel="a", user_id=0, publisher=True, client=1, reliable=False
        ).bridge


def write_module(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))


class TestPluginHost:
    def test_callbacks_see_ready_and_every_event(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write_module(
            tmp_path, "po_plugin_seen",
            """
            seen = []
            def on_ready(event): seen.append(("ready", event.session))
            def on_new_channel(event): seen.append(("channel", event.channel))
            def on_removed_subscriber(event): seen.append(("gone", event.user_id))
            """,
        )  # fmt: skip
        monkeypatch.syspath_prepend(str(tmp_path))
        host = PluginHost(["po_plugin_seen"])
        host.load()
        host.ready(ReadyEvent(socket="/s", session="abc", addresses={}))
        host.dispatch(
            [
                ChannelEvent(channel="a", channel_id=2, type=""),
                UserEvent(channel="a", user_id=4, publisher=False, client=1, reliable=False),
                UserEvent(
                    channel="a", user_id=4, publisher=False, client=1, reliable=False, removed=True
                ),
            ]
        )
        import po_plugin_seen  # type: ignore[import-not-found]  # written by this test

        assert po_plugin_seen.seen == [("ready", "abc"), ("channel", "a"), ("gone", 4)]
        assert host.enabled == ["po_plugin_seen"]

    def test_a_plugin_that_raises_is_logged_and_disabled_and_the_others_go_on(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        write_module(
            tmp_path, "po_plugin_bad",
            """
            calls = []
            def on_new_channel(event):
                calls.append(event.channel)
                raise RuntimeError("plugin bug")
            """,
        )  # fmt: skip
        write_module(
            tmp_path, "po_plugin_good",
            """
            calls = []
            def on_new_channel(event): calls.append(event.channel)
            """,
        )  # fmt: skip
        monkeypatch.syspath_prepend(str(tmp_path))
        host = PluginHost(["po_plugin_bad", "po_plugin_good"])
        host.load()
        with caplog.at_level(logging.ERROR, logger="postoffice.bus.plugins"):
            for name in ("a", "b"):
                host.dispatch([ChannelEvent(channel=name, channel_id=2, type="")])
        import po_plugin_bad  # type: ignore[import-not-found]  # written by this test
        import po_plugin_good  # type: ignore[import-not-found]  # written by this test

        assert po_plugin_bad.calls == ["a"]
        assert po_plugin_good.calls == ["a", "b"]
        assert host.enabled == ["po_plugin_good"]
        assert host.failures == 1
        assert "plugin disabled" in caplog.text
        assert "plugin bug" in caplog.text

    def test_a_plugin_whose_import_raises_is_disabled_not_fatal(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write_module(tmp_path, "po_plugin_boom", "raise ValueError('at import')\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        host = PluginHost(["po_plugin_boom"])
        host.load()
        assert host.enabled == []
        assert host.failures == 1

    def test_a_plugin_module_not_found_fails_the_start_with_its_name(self) -> None:
        host = PluginHost(["po_no_such_plugin_module"])
        with pytest.raises(
            BusConfigError, match=r"^plugin module 'po_no_such_plugin_module' not found$"
        ):
            host.load()
