"""Retries whose re-enqueue can fail without losing the message, and that never retry a cancel.

Dramatiq's Retries re-enqueues a failed message from the worker thread. When
that publish fails (RabbitMQ unreachable, or blocking publishers during a
memory or disk alarm for longer than the connection's
``blocked_connection_timeout``), the error would end up in the broker's hook
error handler and the original message would then be acknowledged: the retry
lost. Here the message is failed instead, so it is dead-lettered (``greenroom
dlq replay`` brings it back) and the task line says ``failed``.
:func:`shared.broker.middleware_stack` puts it in a worker's middleware list in
place of Dramatiq's Retries. A task interrupted because it was cancelled
(:mod:`shared.runtime.cancellation`) is neither retried nor failed: it is acknowledged.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Retries

from observability.task_logging import was_cancelled

logger = logging.getLogger("greenroom.retries")


class RetriesKeepingFailedEnqueues(Retries):
    """Dramatiq's Retries; a retry that cannot be enqueued dead-letters the message instead."""

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is not None and was_cancelled(message):  # interrupted by a cancel: done, not failed
            return
        try:
            super().after_process_message(  # type: ignore[no-untyped-call]
                broker, message, result=result, exception=exception
            )
        except BrokerConnectionError as error:
            self._dead_letter(message, str(error) or type(error).__name__)
        except Exception as error:  # a message that cannot be re-published: never acked unretried
            self._dead_letter(message, type(error).__name__)

    @staticmethod
    def _dead_letter(message: MessageProxy, why: str) -> None:
        message.fail()
        logger.error(
            "Could not enqueue the retry of message %s (%s); it is dead-lettered instead "
            "(greenroom dlq replay brings it back)",
            message.message_id,
            why,
        )
