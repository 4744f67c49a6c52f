"""The store server's committer: one thread that makes appended writes durable.

Design: the event loop appends durable writes (write-behind), writes them to the file
once per loop iteration and asks for the newest ticket with `request`; the thread fsyncs
(`Store.sync`, which also writes anything the ticket needs that is still in memory) and
hands the covered ticket back to the loop with `call_soon_threadsafe`. While it fsyncs,
the loop goes on serving and appending; the thread then starts the next sync at once if
more was asked for, without being woken. So under load there is one thread hop per
fsync, not per request, and the fsync rate alone paces durable writes. A failed sync
hands back its error with the ticket it was for: those writes are answered with it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import final

from postoffice.store.engine import Store

log = logging.getLogger(__name__)

#: Called on the loop with (the newest ticket now durable or failed, the error or None).
Done = Callable[[int, BaseException | None], None]


@final
class Committer:
    """Runs `store.sync` on its own thread for the tickets the loop asks for."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, done: Done) -> None:
        self._store = store
        self._loop = loop
        self._done = done
        self._cond = threading.Condition()
        self._wanted = 0  # the newest ticket asked for
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="store-commit", daemon=True)

    def __repr__(self) -> str:
        return f"<Committer wanted={self._wanted} alive={self._thread.is_alive()}>"

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def request(self, ticket: int) -> None:
        """Make every write up to `ticket` durable soon; `done` says when."""
        with self._cond:
            if ticket > self._wanted:
                self._wanted = ticket
                self._cond.notify()

    def stop(self) -> None:
        """Finish what was asked for, then end the thread (waits for it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        finished = 0
        while True:
            with self._cond:
                while self._wanted <= finished and not self._stopping:
                    self._cond.wait()
                if self._wanted <= finished:
                    return
                target = self._wanted
            error: BaseException | None = None
            try:
                covered = self._store.sync(target)
            except Exception as exc:  # handed to the loop: those writes fail with it
                covered, error = target, exc
            finished = target
            try:
                self._loop.call_soon_threadsafe(self._done, covered, error)
            except RuntimeError:  # the loop is gone: nobody is waiting any more
                log.debug("sync result dropped: event loop closed")
                return
