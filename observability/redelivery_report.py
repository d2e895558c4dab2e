"""Say at shutdown which messages RabbitMQ will redeliver: tasks abandoned at the deadline, prefetched ones.

A worker that stops returns what it held to RabbitMQ unacknowledged. Two lines
name them (at most ``MAX_IDS_LOGGED`` ids each, the count always complete):
a WARNING for tasks still running at the shutdown deadline, an INFO for
prefetched messages that no worker thread started.

Used by the Metrics middleware::

    report = RedeliveryReport()
    report.capture_unstarted(consumer_thread.work_queue)   # the first consumer thread to stop
    report.log(running=["a1b2..."])                         # after the worker shut down
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

worker_logger = logging.getLogger("greenroom.worker")

#: Message ids named in one shutdown line at most (the count is always complete).
MAX_IDS_LOGGED = 100


class RedeliveryReport:
    """The unstarted messages of one shutdown, then the two lines."""

    def __init__(self) -> None:
        self._unstarted: list[str] | None = None

    def reset(self) -> None:
        self._unstarted = None

    def capture_unstarted(self, work_queue: Any) -> None:
        """Remember the message ids left on the worker's work queue (once per shutdown)."""
        if self._unstarted is not None or work_queue is None:
            return
        with work_queue.mutex:
            self._unstarted = [item.message.message_id for item in work_queue.queue]

    def log(self, *, running: Sequence[str]) -> None:
        if running:
            worker_logger.warning(
                "%d tasks still running at the shutdown deadline are abandoned: RabbitMQ redelivers them.",
                len(running),
                extra=ids_field(running),
            )
        unstarted, self._unstarted = self._unstarted or [], None
        if unstarted:
            worker_logger.info(
                "%d prefetched messages were returned to RabbitMQ unstarted.",
                len(unstarted),
                extra=ids_field(unstarted),
            )


def ids_field(message_ids: Sequence[str]) -> dict[str, Any]:
    """The ``message_ids`` field of a shutdown line: at most MAX_IDS_LOGGED of them.

    >>> ids_field(["a", "b"])
    {'message_ids': ['a', 'b']}
    """
    fields: dict[str, Any] = {"message_ids": list(message_ids[:MAX_IDS_LOGGED])}
    if len(message_ids) > MAX_IDS_LOGGED:
        fields["message_ids_not_shown"] = len(message_ids) - MAX_IDS_LOGGED
    return fields
