"""What a running simulation offers the people watching it, whichever driver runs it:
the control socket (controlsocket.py) and SIGHUP re-reading its INI file, both set up
around the run and taken down after it. Office layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from postoffice.core.errors import PostOfficeError
from postoffice.office.controlsocket import ControlServer, control_path
from postoffice.office.handle import OfficeHandle
from postoffice.office.live import LiveView
from postoffice.office.simconfig import OfficeConfig, compare_configs, load_config

log = logging.getLogger(__name__)

__all__ = ["Reloader", "controlled"]


class Reloader:
    """SIGHUP's work: read the INI file again (strictly, with the environment as at
    start-up), hand the live keys that changed to the handle and log each, log the other
    changed keys as needing a restart. A bad file changes nothing and is logged. All at
    WARNING: each changes (or fails to change) a running simulation, and `office run`
    shows warnings on stderr without any logging set up."""

    def __init__(
        self,
        path: Path,
        *,
        handle: OfficeHandle,
        config: OfficeConfig,
        load: Callable[[Path], OfficeConfig] = load_config,
    ) -> None:
        self.path = path
        self.handle = handle
        self.config = config
        self._load = load

    def reload(self) -> None:
        """Apply the file as it is now; never raises for a bad file."""
        try:
            new = self._load(self.path)
        except PostOfficeError as exc:
            log.warning(
                "config not reloaded, nothing changed path=%s error=%r", self.path, str(exc)
            )
            return
        changes = compare_configs(self.config, new)
        for change in changes.restart:
            log.warning(
                "config key needs a restart, not applied key=%s old=%s new=%s",
                change.key,
                change.old,
                change.new,
            )
        if changes.live:
            self.handle.apply_config(changes.config)
            self.config = changes.config
            for change in changes.live:
                log.warning(
                    "config key applied key=%s old=%s new=%s", change.key, change.old, change.new
                )
        if not changes.live and not changes.restart:
            log.warning("config reloaded, no key changed path=%s", self.path)

    def __repr__(self) -> str:
        return f"<Reloader {self.path} n_nano_secs={self.config.n_nano_secs}>"


@contextlib.asynccontextmanager
async def controlled(
    handle: OfficeHandle,
    view: LiveView,
    *,
    data_dir: Path,
    config_path: Path,
    config: OfficeConfig,
) -> AsyncIterator[ControlServer | None]:
    """Serve the control socket under `data_dir` and reload `config_path` on SIGHUP while
    the body runs; then remove both. A control socket that cannot be served is logged
    and the run goes on without it (yielding None)."""
    loop = asyncio.get_running_loop()
    reloader = Reloader(config_path, handle=handle, config=config)
    server: ControlServer | None = ControlServer(
        control_path(data_dir),
        handle=handle,
        view=view,
        new_users=lambda: reloader.config.n_new_users,
    )
    assert server is not None
    try:
        await server.start()
    except (PostOfficeError, OSError) as exc:
        log.warning("no control socket for this run error=%r", str(exc))
        server = None
    loop.add_signal_handler(signal.SIGHUP, reloader.reload)
    try:
        yield server
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        if server is not None:
            await server.close()
