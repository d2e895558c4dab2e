"""The one way greenroom flushes something periodically: a daemon thread, a final flush at stop.

A worker process batches its log lines, its task figures and its exemplars, and
writes each batch out from a background thread every so often. :class:`Periodic`
is that thread: it calls ``flush`` every ``interval`` seconds from :meth:`start`
until :meth:`stop`, which ends the thread (waiting at most ``join_timeout``
seconds) and flushes once more in the calling thread, so nothing noted before
``stop`` is left unwritten.

A flush that raises is logged once (``greenroom.periodic``, with the thread's
name), and again only after a flush has succeeded since: a full disk must
neither end the flushing for good nor fill the log.

>>> flushed = []
>>> periodic = Periodic(lambda: flushed.append("batch"), interval=3600.0, name="example")
>>> periodic.start()
>>> periodic.running
True
>>> periodic.stop()
>>> flushed, periodic.running
(['batch'], False)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger("greenroom.periodic")

#: Longest wait, at stop, for the thread to finish a flush under way.
JOIN_TIMEOUT_SECONDS = 5.0


class Periodic:
    """Calls ``flush`` every ``interval`` seconds on a daemon thread named ``name``."""

    def __init__(
        self,
        flush: Callable[[], object],
        *,
        interval: float,
        name: str,
        join_timeout: float = JOIN_TIMEOUT_SECONDS,
    ) -> None:
        self.flush = flush
        self.interval = interval
        self.name = name
        self.join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushing = threading.Lock()  # the thread's flush and the final one never overlap
        self._failing = False

    @property
    def running(self) -> bool:
        """Whether the thread was started and not stopped since."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (no effect while it runs)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread, waiting at most ``join_timeout`` seconds, then flush once more."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=self.join_timeout)
        if not self._flushing.acquire(timeout=self.join_timeout):
            logger.warning("%s: a flush still runs after %gs; no final flush.", self.name, self.join_timeout)
            return
        try:
            self._flush_once()
        finally:
            self._flushing.release()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._flushing:
                self._flush_once()

    def _flush_once(self) -> None:
        try:
            self.flush()
        except Exception:
            if not self._failing:
                logger.exception("%s: flushing failed (said once until a flush succeeds again).", self.name)
            self._failing = True
        else:
            self._failing = False
