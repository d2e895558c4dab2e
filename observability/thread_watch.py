"""Watch a worker process's threads: capacity counts the live ones, a dead one marks the process degraded.

Dramatiq never restarts a worker or consumer thread that died. The metrics
flusher calls :meth:`ThreadWatch.check` on every tick: it sets
``greenroom_worker_capacity`` to the live worker threads and, once a worker
or consumer thread has died, writes one CRITICAL line and marks the process
degraded in the :class:`~observability.worker_registry.WorkerRegistry`
(``/readyz`` then fails).

Used by the Metrics middleware::

    watch = ThreadWatch(worker_registry=registry)
    watch.watch(worker)      # after the worker booted
    watch.check()            # on every flusher tick
    watch.unwatch()          # its threads now stop on purpose
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import dramatiq

from observability.metric_families import CAPACITY
from observability.worker_registry import WorkerRegistry, degraded

worker_logger = logging.getLogger("greenroom.worker")


class ThreadWatch:
    """The threads of one worker, while it runs."""

    def __init__(self, *, worker_registry: WorkerRegistry | None, pid: Callable[[], int] = os.getpid) -> None:
        self.worker_registry = worker_registry
        self.pid = pid
        self._worker: dramatiq.Worker | None = None
        self._shown: tuple[int, tuple[str, ...]] | None = None

    def watch(self, worker: dramatiq.Worker) -> None:
        self._worker = worker
        self._shown = None

    def unwatch(self) -> None:
        self._worker = None

    def check(self) -> None:
        """Count live worker threads into the capacity gauge; mark the process degraded
        once a worker or consumer thread has died."""
        worker = self._worker
        if worker is None:
            return
        live = sum(thread.is_alive() for thread in worker.workers)
        dead_consumers = tuple(
            sorted(queue for queue, thread in worker.consumers.items() if not thread.is_alive())
        )
        shown = (live, dead_consumers)
        if shown == self._shown:
            return
        self._shown = shown
        CAPACITY.set(live)
        lost = len(worker.workers) - live
        if not lost and not dead_consumers:
            return
        reason = lost_threads(lost, len(worker.workers), dead_consumers)
        worker_logger.critical("Worker process lost threads: %s; it is no longer ready (restart it).", reason)
        if self.worker_registry is not None and self._worker is not None:  # not stopping meanwhile
            self.worker_registry.mark(self.pid(), degraded(reason))


def lost_threads(lost: int, threads: int, dead_consumers: tuple[str, ...]) -> str:
    """What a process lost, in words.

    >>> lost_threads(2, 8, ("default",))
    '2 of 8 worker threads died, the consumer of default died'
    """
    parts = [f"{lost} of {threads} worker threads died"] if lost else []
    if dead_consumers:
        parts.append(f"the consumer of {', '.join(dead_consumers)} died")
    return ", ".join(parts)
