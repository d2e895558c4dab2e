"""Batch log writes in each worker process, from boot until its worker has shut down.

Worker processes write a JSON line per task; :class:`BatchedWorkerLogs` has
every :class:`~shared.log_handler.CurrentStreamHandler` of the root logger
gather lines below WARNING and write them together (see that class for when a
batch is written), and writes what is waiting before Dramatiq closes the pipe
to its master process.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.middleware import Middleware

from shared.log_handler import CurrentStreamHandler


class BatchedWorkerLogs(Middleware):
    """Start batching when Dramatiq has booted the process; stop, with everything written,
    when its worker has shut down (first in the worker's middleware list, so its
    ``after_*`` hooks run after every other middleware's)."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        for handler in _stream_handlers():
            handler.start_batching()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        for handler in _stream_handlers():
            handler.stop_batching()


def _stream_handlers() -> list[CurrentStreamHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, CurrentStreamHandler)]
