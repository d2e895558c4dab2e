"""Send tasks by name from any service, without importing worker code.

With RabbitMQ, Redis and a worker running (see the README)::

    from datetime import datetime, timezone
    from shared.producer import send, send_many, send_with_options, result_of

    handle = send("echo", payload={"x": 1})
    handle.result(timeout=5)                           # {'x': 1}
    send_with_options("echo", {"payload": 1}, delay=30)             # runs in 30 s
    send_with_options("echo", {"payload": 1}, eta=datetime(2026, 12, 24, 18, tzinfo=timezone.utc))
    send_with_options("echo", {"payload": 1}, priority=5)           # QUEUE_MAX_PRIORITIES=default=9
    handles = send_many("echo", [{"payload": i} for i in range(3)])
    [h.result(timeout=5) for h in handles]             # [0, 1, 2]
    result_of("echo", handle.message_id, timeout=5)    # when only the id was kept: {'x': 1}

Arguments are validated against the task's contract first: a bad argument or
an unknown task name raises and publishes nothing (no service is needed to see it):

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from shared.settings import load_settings
>>> producer = Producer(load_settings(_env_file=None), tracer_provider=TracerProvider())
>>> producer.send("ecko", payload=1)
Traceback (most recent call last):
  ...
shared.errors.UnknownTask: unknown task 'ecko' (known tasks: ...)
>>> producer.send("echo", payload=float("nan"))
Traceback (most recent call last):
  ...
shared.errors.InvalidTaskArguments: invalid arguments for task 'echo': NaN and Infinity are not JSON numbers
>>> from datetime import timezone
>>> producer.send_with_options("echo", {"payload": 1}, delay=30, eta=datetime.now(timezone.utc))
Traceback (most recent call last):
  ...
shared.errors.InvalidParameter: delay: give delay or eta, not both
>>> producer.close()

Arguments are strict JSON: NaN, Infinity, strings that are not Unicode text (a
lone surrogate) and integers too long to encode are refused with
InvalidTaskArguments (:mod:`shared.producer_checks`). With publisher confirms
on (BROKER_CONFIRM_DELIVERY, the default) ``send`` returning means RabbitMQ has
the message. A send's options (a delay or an ETA, a priority) are checked
before publishing too, raising InvalidParameter. Every error raised here is a
GreenroomError.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import pika.exceptions
import redis
from dramatiq.errors import BrokerConnectionError, DecodeError
from dramatiq.results import ResultFailure
from dramatiq.results import ResultTimeout as DramatiqResultTimeout
from opentelemetry.trace import TracerProvider
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from observability.tracing import Tracing
from shared import cancellation
from shared.backoff import Backoff, retry_with_backoff
from shared.broker import GreenroomBroker, build_broker, build_result_backend
from shared.cancellation import CancelReport
from shared.delays import remaining_ms
from shared.errors import (
    CancelRefused,
    CancelUnavailable,
    InvalidParameter,
    InvalidSettings,
    InvalidTaskArguments,
    PublishError,
    PublishRefused,
    ResultRefused,
    ResultTimeout,
    ResultUnavailable,
    UnknownTask,
)
from shared.producer_checks import (
    check_message_id,
    due_at_ms,
    keyword_batch,
    message_priority,
    send_options,
    task_message,
    timeout_seconds,
)
from shared.publishing import CONFIRM_TIMEOUT_SECONDS, BatchPublisher
from shared.result_marks import raise_for_failure
from shared.results import RedisResultBackend
from shared.service_refusals import outage_line, redis_refusal_line, refusal_line
from shared.settings import Settings, SettingsError, get_settings
from shared.tasks import TASKS, TaskContract, get_task
from shared.telemetry import ensure_producer_tracing

#: The keywords of send_with_options: a task argument of one of these names is probably meant as one.
SEND_OPTIONS = frozenset({"delay", "eta", "priority"})

#: How long TaskHandle.result() waits when no timeout is given, in seconds.
DEFAULT_RESULT_TIMEOUT = 10.0

#: What a publish raises while RabbitMQ cannot take it: retried, then PublishError. pika raises an
#: AMQP handshake that timed out (its stack_timeout) as AMQPConnectorException, not AMQPError.
PUBLISH_ERRORS = (BrokerConnectionError, pika.exceptions.AMQPError, AMQPConnectorException)

#: Waits between publish attempts while RabbitMQ is unreachable (SEND_RETRY_TIMEOUT_SECONDS bounds them).
SEND_BACKOFF = Backoff(first_delay=0.1, max_delay=1.0)

logger = logging.getLogger("greenroom.producer")


@dataclass(frozen=True, slots=True)
class TaskHandle:
    """A sent task: its message id, and a way to wait for its result."""

    task: str
    message_id: str
    producer: Producer

    def result(self, timeout: float = DEFAULT_RESULT_TIMEOUT) -> Any:
        """Wait up to ``timeout`` seconds for the task's return value.

        ``timeout`` is a finite number of seconds, however long (0 or less: look
        once). Raises TaskFailed if the task finally failed, TaskCancelled if it was
        cancelled, ResultTimeout if
        nothing arrived in time, ResultUnavailable if Redis could not be read,
        InvalidParameter for a timeout that is not a finite number. For example::

            send("echo", payload="hi").result(timeout=0.5)   # 'hi'
        """
        return self.producer.result_of(self.task, self.message_id, timeout=timeout)

    def cancel(self) -> CancelReport:
        """Cancel the task: skipped if it has not started, interrupted if it runs and its
        contract is ``cancellable``. The report says which (a finished task: not cancelled).
        For example::

            send("echo", payload=1).cancel().status   # 'cancelled'
        """
        (report,) = self.producer.cancel(self.message_id)
        return report


class Producer:
    """Publishes tasks to RabbitMQ and reads their results from Redis.

    Thread-safe: each thread gets its own RabbitMQ channel. For example::

        producer = Producer(load_settings())
        producer.send("echo", payload=1).result()   # 1
        producer.close()
    """

    def __init__(
        self, settings: Settings | None = None, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        """``tracer_provider``: where producer spans go; by default the process's global
        provider, which is created from the settings if the application has none."""
        if settings is not None and not isinstance(settings, Settings):
            raise InvalidParameter("settings", f"must be a Settings object, got {type(settings).__name__}")
        if tracer_provider is not None and not isinstance(tracer_provider, TracerProvider):
            raise InvalidParameter(
                "tracer_provider", f"must be a TracerProvider, got {type(tracer_provider).__name__}"
            )
        self.settings = settings or _environment_settings()
        if tracer_provider is None:
            ensure_producer_tracing(self.settings)
        self.broker: GreenroomBroker = build_broker(self.settings, "producer", tracer_provider)
        self.backend: RedisResultBackend = build_result_backend(self.settings)

    def send(self, task: str, /, **kwargs: Any) -> TaskHandle:
        """Validate ``kwargs`` against the contract of ``task`` and publish it (with the
        contract's priority, if it has one). For example::

        producer.send("reports.build", report_id="q3", rows=10_000).message_id   # '0c1f5a3e-...'

        Every keyword is a task argument: a delay, an ETA or a priority goes to
        :meth:`send_with_options` (a keyword of that name the task does not take says so).
        """
        contract = _contract(task)
        misplaced = sorted(SEND_OPTIONS & kwargs.keys() - contract.arguments.model_fields.keys())
        if misplaced:
            raise InvalidTaskArguments(
                contract.name,
                f"{', '.join(misplaced)}: not an argument of the task; send options go to "
                f"send_with_options({contract.name!r}, {{...arguments}}, {misplaced[0]}=...)",
            )
        return self.send_with_options(task, kwargs)

    def send_with_options(
        self,
        task: str,
        kwargs: Mapping[str, Any],
        *,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        priority: int | None = None,
    ) -> TaskHandle:
        """Like :meth:`send`, with the task's arguments as a mapping and a send's options.

        ``delay``: seconds (a finite number, 0 to 7 days) or a timedelta; ``eta``: an
        aware datetime (an ETA passed runs now); one or the other. The message waits
        in RabbitMQ, not in a worker, and runs no earlier than due. ``priority``: 0
        up to the maximum its queue has in QUEUE_MAX_PRIORITIES (higher runs first;
        without it, the contract's priority, else 0). A bad option raises
        InvalidParameter and nothing is published. For example::

            producer.send_with_options("echo", {"payload": 1}, delay=timedelta(minutes=5))
            producer.send_with_options("reports.build", {"report_id": "q3"}, priority=2)
        """
        contract = _contract(task)
        options = self._options(contract, delay=delay, eta=eta, priority=priority)
        if not isinstance(kwargs, Mapping):
            raise InvalidTaskArguments(
                contract.name, f"kwargs must be a mapping of keyword arguments, got {type(kwargs).__name__}"
            )
        message = task_message(contract, kwargs, max_bytes=self.settings.MAX_MESSAGE_BYTES, options=options)
        self.register_sent([message])
        self._publish(message)
        return TaskHandle(contract.name, message.message_id, self)

    def send_many(
        self,
        task: str,
        many_kwargs: Iterable[Mapping[str, Any]],
        *,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        priority: int | None = None,
    ) -> list[TaskHandle]:
        """Validate every item first, then publish them all; handles come back in order.

        ``many_kwargs`` is an iterable of mappings (a list of dicts, say); if one
        item is invalid, or not a mapping, nothing is published. The batch goes out with
        pipelined publisher confirms (not one round trip per message); it
        returns once RabbitMQ has confirmed every message, and rides out a
        broker outage like ``send``, re-sending only what was not confirmed.
        The batch is traced as one ``send <queue>`` span, the parent of every
        task's consumer span. ``delay``, ``eta`` and ``priority`` apply to every
        message, as in :meth:`send_with_options`. For example::

            handles = producer.send_many("echo", [{"payload": 1}, {"payload": 2}])
            [h.message_id for h in handles]   # ['6b8e...', 'a41c...']
        """
        contract = _contract(task)
        options = self._options(contract, delay=delay, eta=eta, priority=priority)
        messages = [
            task_message(contract, kwargs, max_bytes=self.settings.MAX_MESSAGE_BYTES, options=options)
            for kwargs in keyword_batch(contract, many_kwargs)
        ]
        self.publish_batch(messages, contract.queue, options)
        return [TaskHandle(contract.name, m.message_id, self) for m in messages]

    def publish_batch(
        self,
        messages: Sequence[dramatiq.Message[Any]],
        queue_name: str,
        options: Mapping[str, Any],
        *,
        register: bool = True,
    ) -> None:
        """Record ``messages`` for cancellation (unless ``register`` is False: the caller did),
        then publish them as one traced batch (one ``send <queue_name>`` span, ``options`` its
        attributes) with publisher confirms.

        For ``send_many`` and workflows (:mod:`shared.workflows`). For example::

            producer.publish_batch(messages, "default", {})
        """
        if register:
            self.register_sent(messages)
        tracing = self._tracing()
        batch = tracing.publishing_batch(queue_name, len(messages), options) if tracing else nullcontext()
        with batch:
            self.publish_confirmed(messages, f"a batch of {len(messages)}")

    def register_sent(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Record ``messages`` in Redis as sent, so that a cancel finds them
        (:func:`shared.cancellation.register_sent`), each until its delay and its result
        TTL have passed. Redis unreachable: one WARNING line, and the send goes on
        (RabbitMQ has the message; only a cancel will not find it)."""
        if not messages:
            return
        now_ms = int(time.time() * 1000)
        result_ttls: dict[str, int] = {}
        try:
            cancellation.register_sent(
                self.backend.client,
                messages,
                [self._registry_ttl_ms(m, now_ms, result_ttls) for m in messages],
            )
        except redis.RedisError as error:  # its messages name the host, never a password
            more = f" and {len(messages) - 1} more" if len(messages) > 1 else ""
            logger.warning(
                "Could not record message %s%s for cancellation (Redis: %s); a cancel will not find it",
                messages[0].message_id, more, redis_refusal_line(error, self.settings) or outage_line(error),
            )  # fmt: skip

    def cancel(self, *message_ids: str) -> list[CancelReport]:
        """Cancel the messages ``message_ids`` (:func:`shared.cancellation.cancel`); one report each.
        For example::

            producer.cancel("6b8e...")[0].status   # 'cancelled'

        Raises InvalidParameter for an id that is not one (nothing cancelled), CancelUnavailable
        when Redis cannot be reached (CancelRefused when it refuses REDIS_URL).
        """
        for message_id in message_ids:
            check_message_id(message_id)
        try:
            return cancellation.cancel(
                self.backend.client,
                self.backend,
                list(message_ids),
                min_ttl_ms=round(self.settings.RESULT_TTL_SECONDS * 1000),
            )
        except redis.RedisError as error:
            refused = redis_refusal_line(error, self.settings)
            if refused is not None:
                raise CancelRefused(f"could not cancel: {refused}") from None
            raise CancelUnavailable(f"could not cancel: Redis unavailable: {outage_line(error)}") from None

    def _registry_ttl_ms(
        self, message: dramatiq.Message[Any], now_ms: int, result_ttls: dict[str, int]
    ) -> int:
        """How long ``message``'s record lasts: its remaining delay plus its task's result TTL
        (looked up once per task in ``result_ttls``)."""
        ttl = result_ttls.get(message.actor_name)
        if ttl is None:
            ttl = result_ttls[message.actor_name] = self._result_ttl_ms(message.actor_name)
        return remaining_ms(message.options, now_ms) + ttl

    def _result_ttl_ms(self, task: str) -> int:
        """The result TTL of ``task`` in ms (as :mod:`shared.task_policies` resolves it)."""
        contract = TASKS.get(task)
        seconds = contract.result_ttl_seconds if contract is not None else None
        return round((seconds or self.settings.RESULT_TTL_SECONDS) * 1000)

    def publish_confirmed(
        self,
        messages: Sequence[dramatiq.Message[Any]],
        what: str,
        *,
        confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
    ) -> None:
        """Publish ready-made ``messages`` with publisher confirms, whatever
        BROKER_CONFIRM_DELIVERY says, riding out an outage like ``send_many`` (for
        SEND_RETRY_TIMEOUT_SECONDS, and ``confirm_timeout`` more for the last confirms).

        For callers that move existing messages (``greenroom dlq replay``) or make their
        own (``greenroom beat``); tasks are sent with ``send`` and ``send_many``. For example::

            producer.publish_confirmed([message], "message 6b8e...")
        """
        publisher = BatchPublisher(
            self.broker,
            messages,
            timeout=self.settings.SEND_RETRY_TIMEOUT_SECONDS,
            confirm_timeout=confirm_timeout,
        )
        self._with_retries(what, publisher.publish)

    def result_of(self, task: str, message_id: str, *, timeout: float = DEFAULT_RESULT_TIMEOUT) -> Any:
        """Wait up to ``timeout`` seconds for the result of a message sent earlier. For example::

        producer.result_of("echo", "6b8e...", timeout=2.5)   # 1
        """
        contract = _contract(task)
        seconds = timeout_seconds(timeout)
        check_message_id(message_id)
        if not contract.store_results:
            raise InvalidParameter("task", f"task {contract.name!r} does not store results")
        key_message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=contract.queue,
            actor_name=contract.name,
            args=(),
            kwargs={},
            options={},
            message_id=message_id,
        )
        try:
            return self.backend.get_result(key_message, block=True, timeout=seconds * 1000)
        except DramatiqResultTimeout:
            raise ResultTimeout(contract.name, message_id, seconds) from None
        except redis.RedisError as error:  # its messages name the host, never a password
            refused = redis_refusal_line(error, self.settings)
            if refused is not None:
                raise ResultRefused(contract.name, message_id, refused) from None
            raise ResultUnavailable(contract.name, message_id, outage_line(error)) from None
        except (DecodeError, KeyError, TypeError, ValueError):  # not what a worker stores
            raise ResultUnavailable(contract.name, message_id, "the stored result is not valid") from None
        except ResultFailure as failure:
            raise_for_failure(contract.name, message_id, failure)

    def _options(
        self, contract: TaskContract, *, delay: object, eta: object, priority: object
    ) -> dict[str, Any]:
        due_at = due_at_ms(delay=delay, eta=eta, now_ms=int(time.time() * 1000))
        chosen = message_priority(contract, priority, self.settings.QUEUE_MAX_PRIORITIES)
        return send_options(due_at=due_at, priority=chosen)

    def close(self) -> None:
        """Close RabbitMQ connections and the Redis connection pool."""
        self.broker.close()
        self.backend.close()

    def _publish(self, message: dramatiq.Message[Any]) -> None:
        """Publish, riding out a broker outage for up to SEND_RETRY_TIMEOUT_SECONDS.

        Dramatiq retries a failed publish a few times at once; a restarting
        RabbitMQ needs seconds, so this retries with exponential backoff until
        the deadline, then raises PublishError. A publish whose confirmation
        was lost may be retried after RabbitMQ did store it: the message then
        arrives twice, with the same message id (at-least-once). RabbitMQ refusing
        the settings (a login, a vhost, a dead-letter queue's TTL) is no outage:
        PublishError at once, naming the setting.
        """
        self._with_retries(f"message {message.message_id}", lambda: self.broker.enqueue(message))

    def _with_retries(self, what: str, publish: Callable[[], object]) -> None:
        def refuse_or_abandon(error: BaseException) -> None:
            self._abandon_span(error)
            refused = refusal_line(error, self.settings)
            if refused is not None:  # RabbitMQ refuses the settings: retrying cannot help
                raise PublishRefused(f"could not publish {what}: {refused}") from None

        def log_retry(error: BaseException, delay: float) -> None:
            logger.warning("Publishing %s failed, retrying in %.2fs: %s", what, delay, outage_line(error))

        try:
            retry_with_backoff(
                publish,
                retry_on=PUBLISH_ERRORS,
                timeout_seconds=self.settings.SEND_RETRY_TIMEOUT_SECONDS,
                policy=SEND_BACKOFF,
                on_failure=refuse_or_abandon,
                on_retry=log_retry,
            )
        except PUBLISH_ERRORS as error:
            raise PublishError(
                f"could not publish {what} within "
                f"{self.settings.SEND_RETRY_TIMEOUT_SECONDS:g}s: {outage_line(error)}"
            ) from None

    def _abandon_span(self, error: BaseException) -> None:
        tracing = self._tracing()
        if tracing is not None:
            tracing.abandon_publish(error)

    def _tracing(self) -> Tracing | None:
        return next((m for m in self.broker.middleware if isinstance(m, Tracing)), None)


def _environment_settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as error:
        raise InvalidSettings(str(error)) from None


def _contract(task: object) -> TaskContract:
    if not isinstance(task, str):
        raise UnknownTask(task, list(TASKS))
    return get_task(task)


_default_producer: Producer | None = None
_default_lock = threading.Lock()


def default_producer() -> Producer:
    """The process-wide Producer, created on first use from the environment."""
    global _default_producer
    with _default_lock:
        if _default_producer is None:
            _default_producer = Producer()
        return _default_producer


def send(task: str, /, **kwargs: Any) -> TaskHandle:
    """Publish one task with the default producer. See :meth:`Producer.send`. For example::

    send("echo", payload={"x": 1}).result(timeout=5)   # {'x': 1}
    """
    return default_producer().send(task, **kwargs)


def send_with_options(
    task: str,
    kwargs: Mapping[str, Any],
    *,
    delay: float | timedelta | None = None,
    eta: datetime | None = None,
    priority: int | None = None,
) -> TaskHandle:
    """Publish one task with options with the default producer. See
    :meth:`Producer.send_with_options`. For example::

    send_with_options("echo", {"payload": 1}, delay=90).message_id   # runs in 90 s
    """
    return default_producer().send_with_options(task, kwargs, delay=delay, eta=eta, priority=priority)


def send_many(
    task: str,
    many_kwargs: Iterable[Mapping[str, Any]],
    *,
    delay: float | timedelta | None = None,
    eta: datetime | None = None,
    priority: int | None = None,
) -> list[TaskHandle]:
    """Publish a batch with the default producer. See :meth:`Producer.send_many`. For example::

    handles = send_many("echo", [{"payload": i} for i in range(100)])
    """
    return default_producer().send_many(task, many_kwargs, delay=delay, eta=eta, priority=priority)


def result_of(task: str, message_id: str, *, timeout: float = DEFAULT_RESULT_TIMEOUT) -> Any:
    """Wait for the result of a message sent earlier. See :meth:`Producer.result_of`. For example::

    result_of("echo", "6b8e9d4a-...", timeout=5)   # {'x': 1}
    """
    return default_producer().result_of(task, message_id, timeout=timeout)


def cancel(*message_ids: str) -> list[CancelReport]:
    """Cancel messages sent earlier with the default producer. See :meth:`Producer.cancel`.
    For example::

    [report.status for report in cancel(handle.message_id)]   # ['cancelled']
    """
    return default_producer().cancel(*message_ids)


# Workflows are sent from here too: ``from shared.producer import pipeline, group, step``.
from shared.workflows import group, pipeline, step  # noqa: E402

__all__ = [
    "Producer",
    "TaskHandle",
    "cancel",
    "default_producer",
    "group",
    "pipeline",
    "result_of",
    "send",
    "send_many",
    "send_with_options",
    "step",
]
