"""The reload of a command server run with --workers: the primary pushes the changed
settings to its workers over their channels (Links on fake transports, no processes)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from postoffice.command import primary as primary_module
from postoffice.command.config import CommandConfig
from postoffice.command.link import Link
from postoffice.command.primary import Primary
from tests.fakes import FakeTransport


class WorkerEnd:
    """The worker's end of one channel: records the calls; answers them unless `mute`."""

    def __init__(self, *, mute: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, object]]] = []
        self.mute = mute
        self.link = Link("the primary", on_call=self._call, on_notice=self._note, on_lost=_none)
        self.primary_link = Link(
            "worker 0", on_call=self._call, on_notice=self._note, on_lost=_none
        )
        self.ours = FakeTransport(self.link)
        self.theirs = FakeTransport(self.primary_link)
        self.link.connection_made(self.ours)
        self.primary_link.connection_made(self.theirs)

    def _call(self, op: str, args: dict[str, object]) -> object:
        self.calls.append((op, args))
        if self.mute:
            return asyncio.get_running_loop().create_future()  # never answered
        return None

    def _note(self, event: str, args: dict[str, object]) -> None:
        pass

    async def pump(self) -> None:
        for _ in range(6):
            await asyncio.sleep(0)
            if self.theirs.written:
                self.link.data_received(self.theirs.take())
            if self.ours.written:
                self.primary_link.data_received(self.ours.take())


def _none() -> None:
    pass


def primary_with(end: WorkerEnd) -> Primary:
    primary = Primary(CommandConfig(workers=2, metrics_port=None), log_level="INFO", log_json=False)
    worker = primary.workers[0]
    worker.state = "listening"
    worker.link = end.primary_link
    return primary


async def test_a_reload_sends_the_listening_workers_only_what_changed() -> None:
    end = WorkerEnd()
    primary = primary_with(end)
    new = dataclasses.replace(primary.config, idle_timeout_s=9.0, max_connections=50)
    task = asyncio.ensure_future(primary.reconfigure(new))
    await end.pump()
    await asyncio.wait_for(task, 5)
    assert end.calls == [("config_set", {"pairs": [["maxclients", "50"], ["timeout", "9"]]})]
    assert primary.config == new
    assert primary.workers[0].sent_config == new
    assert primary.workers[1].sent_config is None  # not listening: its hello carries them


async def test_a_reload_that_changes_no_live_pair_asks_nobody() -> None:
    end = WorkerEnd()
    primary = primary_with(end)
    await primary.reconfigure(primary.config)
    await end.pump()
    assert end.calls == []


async def test_a_worker_that_does_not_answer_is_logged_and_the_reload_stands(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(primary_module, "WORKER_TIMEOUT_S", 0.05)
    end = WorkerEnd(mute=True)
    primary = primary_with(end)
    new = dataclasses.replace(primary.config, threads=2)
    task = asyncio.ensure_future(primary.reconfigure(new))
    await end.pump()
    with caplog.at_level(logging.ERROR, logger="postoffice.command.primary"):
        await asyncio.wait_for(task, 5)  # no exception: Reloads would call it not reloaded
    assert primary.config == new
    assert any(m.startswith("reload not taken by every worker") for m in caplog.messages)
