"""Treat a burst of SIGTERMs as one, so a group-wide stop stays graceful.

Dramatiq's worker processes take a *second* SIGTERM as "stop now, abandon
running tasks". When SIGTERM goes to the whole process group (honcho, systemd's
default KillMode, ``kill -- -PGID``) each worker process gets it twice: once
directly, once forwarded by Dramatiq's master. Without this middleware that
pair aborts every running task. Repeats within ``window_seconds`` of the first
are ignored; a later SIGTERM still means "stop now".
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

logger = logging.getLogger("greenroom.worker")

SignalHandler = Callable[[int, FrameType | None], Any]

#: Repeated SIGTERMs closer than this to the first are one stop request.
DEFAULT_WINDOW_SECONDS = 2.0


class CoalesceTermSignals(Middleware):
    """Wraps the worker process's SIGTERM handler once the process has booted.

    >>> now = [0.0]
    >>> middleware = CoalesceTermSignals(window_seconds=2.0, clock=lambda: now[0])
    >>> received = []
    >>> handle = middleware.coalesce(lambda signum, frame: received.append(signum))
    >>> handle(15, None)
    >>> now[0] = 1.0; handle(15, None)   # 1 s after the first: the same stop request, dropped
    >>> now[0] = 5.0; handle(15, None)   # later: "stop now", passed on
    >>> received
    [15, 15]
    """

    def __init__(
        self, *, window_seconds: float = DEFAULT_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_seconds = window_seconds
        self.clock = clock

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            signal.signal(signal.SIGTERM, self.coalesce(handler))

    def coalesce(self, handler: SignalHandler) -> SignalHandler:
        """Return a handler that passes the first signal on and drops close repeats."""
        first_seen: float | None = None

        def handle(signum: int, frame: FrameType | None) -> Any:
            nonlocal first_seen
            now = self.clock()
            if first_seen is not None and now - first_seen < self.window_seconds:
                logger.info("Ignoring a repeated SIGTERM %.3fs after the first.", now - first_seen)
                return None
            first_seen = first_seen if first_seen is not None else now
            return handler(signum, frame)

        return handle
