"""One log line per finished task, and task fields on every line logged inside it.

The composition root (``shared.broker.middleware_stack``) puts the middleware
right after the tracing middleware (fourth on a worker with tracing on, after
``BatchedWorkerLogs``, ``Tracing`` and ``TracerProviderLifecycle``) and before
``Metrics``, the Dramatiq middleware and ``Retries``. Its
``before_process_message`` then runs before any middleware that can skip the
message (``AgeLimit``, say), and since Dramatiq runs ``after_*`` hooks in
reverse, its ``after_process_message`` runs after Retries' hook has decided
the message's fate, while the consumer span is still current.

Events of the per-task line (field ``event``):

- ``succeeded``: the actor returned.
- ``retrying``: the actor raised; Dramatiq's Retries middleware scheduled a retry.
- ``failed``: the actor raised on its last allowed attempt; the message goes
  to the dead-letter queue.
- ``dead-lettered``: the message was rejected without a retry (an exception
  listed in the actor's ``throws`` option, such as arguments that break the
  task contract); it goes to the dead-letter queue.
- ``skipped``: a middleware skipped the message (for example it was too old).
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any, NamedTuple

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

logger = logging.getLogger("greenroom.task")


class _RunningTask(NamedTuple):  # what TaskLogging keeps of the running task; one per task
    message_id: str
    actor: str
    queue: str
    retries: int
    started: float


_running: ContextVar[_RunningTask | None] = ContextVar("greenroom_running_task", default=None)


class TaskContextFilter(logging.Filter):
    """Adds message_id, actor, queue and retries to records logged inside a task."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _running.get()
        if task is not None:
            record.message_id = task.message_id
            record.actor = task.actor
            record.queue = task.queue
            record.retries = task.retries
        return True


class TaskLogging(Middleware):
    """Logs the outcome and duration of every task a worker processes.

    >>> from dramatiq.brokers.stub import StubBroker
    >>> broker = StubBroker(middleware=[TaskLogging()])
    >>> [type(middleware).__name__ for middleware in broker.middleware]
    ['TaskLogging']
    """

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _running.set(
            _RunningTask(
                message_id=message.message_id,
                actor=message.actor_name,
                queue=message.queue_name,
                retries=int(message.options.get("retries", 0)),
                started=time.perf_counter(),
            )
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        task = _running.get()
        if task is None:
            return
        try:
            event, level, fields = _outcome(broker, message, exception)
            fields["duration_seconds"] = round(time.perf_counter() - task.started, 6)
            logger.log(level, "task %s", event, extra={"event": event, **fields})
        finally:
            _running.set(None)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        task = _running.get()
        if task is None:
            return
        try:
            event = "dead-lettered" if message.failed else "skipped"
            logger.warning(
                "task %s",
                event,
                extra={"event": event, "duration_seconds": round(time.perf_counter() - task.started, 6)},
            )
        finally:
            _running.set(None)


def _outcome(
    broker: dramatiq.Broker, message: MessageProxy, exception: BaseException | None
) -> tuple[str, int, dict[str, Any]]:
    if exception is None:
        return "succeeded", logging.INFO, {}
    fields: dict[str, Any] = {"error": f"{type(exception).__name__}: {exception}"}
    if not message.failed:
        return "retrying", logging.WARNING, fields
    if _is_expected(broker, message, exception):
        fields["reason"] = "rejected without retry"
        return "dead-lettered", logging.ERROR, fields
    fields["reason"] = "retries exhausted"
    return "failed", logging.ERROR, fields


def _is_expected(broker: dramatiq.Broker, message: MessageProxy, exception: BaseException) -> bool:
    throws = message.options.get("throws")
    if throws is None:
        try:
            throws = broker.get_actor(message.actor_name).options.get("throws")
        except dramatiq.errors.ActorNotFound:
            return False
    return throws is not None and isinstance(exception, throws)
