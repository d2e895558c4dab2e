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
- ``failed``: the actor raised on its last allowed attempt, or raised an
  exception its contract's ``retry_on`` does not list (field ``reason`` says
  which); the message goes to the dead-letter queue.
- ``dead-lettered``: the message was rejected without a retry (an exception
  listed in the actor's ``throws`` option, such as arguments that break the
  task contract); it goes to the dead-letter queue.
- ``skipped``: the message was not run: it was older than its contract's
  ``max_age`` (Dramatiq's AgeLimit; it goes to the dead-letter queue, so a
  caller waiting for its result gets a failure at once), or another middleware
  skipped it.
- ``throttled``: over its contract's ``concurrency_limit`` or ``rate_limit``
  (:mod:`shared.runtime.task_limits`): not run now, put back on its queue with a
  delay (fields ``reason``, ``retry_in_seconds``, ``throttles``); not a failure,
  its retries untouched.
- ``cancelled``: the task was cancelled (``greenroom cancel``, ``handle.cancel()``):
  skipped when a worker got it, or interrupted while running because its contract
  is ``cancellable``; not a failure, not retried, acknowledged.

:func:`skip_outcome` tells a skip's event and metric outcome; Metrics counts with it.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any, NamedTuple

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis
from dramatiq.middleware import Middleware

logger = logging.getLogger("greenroom.task")

#: The option a worker sets on a message it throttles, once its copy is back on the queue:
#: the task line's fields. Never published (the message is acknowledged) nor accepted on arrival.
THROTTLED_OPTION = "greenroom_throttled"
#: The option a worker sets on a message it skips or interrupts because it was cancelled
#: (for the task line, the metrics and a workflow's later steps). Never published nor
#: accepted on arrival.
CANCELLED_OPTION = "greenroom_cancelled"


class SkipOutcome(NamedTuple):
    """What a skip was: the task line's event, level and fields, and the metric outcome."""

    event: str
    level: int
    fields: dict[str, Any]
    outcome: str


class _RunningTask(NamedTuple):  # what TaskLogging keeps of the running task; one per task
    message_id: str
    actor: str
    queue: str
    retries: int
    started: float


_running: ContextVar[_RunningTask | None] = ContextVar("greenroom_running_task", default=None)


#: Dramatiq's own WARNING for every skipped message, quoting its arguments whole.
DRAMATIQ_SKIP_LINE = "Message %s was skipped."


class DramatiqSkipLineFilter(logging.Filter):
    """Drops Dramatiq's WARNING for a skipped message: the task line (``skipped`` or
    ``throttled``, at INFO) says so already, with the reason and without the arguments.

    >>> record = logging.makeLogRecord({"name": "dramatiq.worker.WorkerThread", "msg": DRAMATIQ_SKIP_LINE})
    >>> DramatiqSkipLineFilter().filter(record)
    False
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == DRAMATIQ_SKIP_LINE and record.name.startswith("dramatiq.worker"))


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
            skip = skip_outcome(broker, message)
            fields = {**skip.fields, "duration_seconds": round(time.perf_counter() - task.started, 6)}
            logger.log(skip.level, "task %s", skip.event, extra={"event": skip.event, **fields})
        finally:
            _running.set(None)


def skip_outcome(broker: dramatiq.Broker, message: MessageProxy) -> SkipOutcome:
    """Why ``message`` was skipped: throttled, older than its max_age, dead-lettered or skipped.

    >>> from dramatiq.broker import MessageProxy
    >>> from dramatiq.brokers.stub import StubBroker
    >>> proxy = MessageProxy(dramatiq.Message("default", "echo", (), {}, {}))
    >>> proxy.options[THROTTLED_OPTION] = {"reason": "concurrency_limit 2 reached"}
    >>> skip_outcome(StubBroker(), proxy)[0::3]
    ('throttled', 'throttled')
    """
    if was_cancelled(message):
        return SkipOutcome("cancelled", logging.INFO, {}, "cancelled")
    throttled = message.options.get(THROTTLED_OPTION)
    if isinstance(throttled, dict) and not message.failed:
        return SkipOutcome("throttled", logging.INFO, dict(throttled), "throttled")
    if not message.failed:
        return SkipOutcome("skipped", logging.WARNING, {}, "skipped")
    max_age = _actor_option(broker, message, "max_age")
    age_ms = current_millis() - message.message_timestamp
    if isinstance(max_age, int) and age_ms >= max_age:
        reason = f"older than its max_age ({max_age / 1000:g} s); dead-lettered"
        fields = {"reason": reason, "age_seconds": round(age_ms / 1000, 3)}
        return SkipOutcome("skipped", logging.WARNING, fields, "skipped")
    return SkipOutcome("dead-lettered", logging.WARNING, {}, "failure")


def was_cancelled(message: MessageProxy) -> bool:
    """Whether ``message`` was cancelled (skipped, or interrupted while running) rather than failed.

    >>> proxy = MessageProxy(dramatiq.Message("default", "echo", (), {}, {}))
    >>> proxy.options[CANCELLED_OPTION] = True
    >>> was_cancelled(proxy)
    True
    """
    return message.options.get(CANCELLED_OPTION) is True and not message.failed


def _actor_option(broker: dramatiq.Broker, message: MessageProxy, name: str) -> Any:
    try:
        return broker.get_actor(message.actor_name).options.get(name)
    except dramatiq.errors.ActorNotFound:
        return None


def _outcome(
    broker: dramatiq.Broker, message: MessageProxy, exception: BaseException | None
) -> tuple[str, int, dict[str, Any]]:
    if exception is None and message.failed:  # it ran, but its workflow could not go on
        reason = "its workflow could not go on (the ERROR line before says why)"
        return "dead-lettered", logging.ERROR, {"reason": reason}
    if exception is None:
        return "succeeded", logging.INFO, {}
    if was_cancelled(message):
        return "cancelled", logging.INFO, {"reason": "interrupted while running"}
    fields: dict[str, Any] = {"error": f"{type(exception).__name__}: {exception}"}
    if not message.failed:
        return "retrying", logging.WARNING, fields
    if _is_expected(broker, message, exception):
        fields["reason"] = "rejected without retry"
        return "dead-lettered", logging.ERROR, fields
    retry_on = getattr(_actor_option(broker, message, "retry_when"), "kinds", None)
    if isinstance(retry_on, tuple) and not isinstance(exception, retry_on):
        fields["reason"] = f"not in retry_on ({', '.join(kind.__name__ for kind in retry_on)})"
    else:
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
