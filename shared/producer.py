"""Send tasks by name from any service, without importing worker code.

>>> from shared.producer import send, send_many, result_of
>>> handle = send("echo", payload={"x": 1})
>>> handle.result(timeout=5)
{'x': 1}
>>> handles = send_many("echo", [{"payload": i} for i in range(3)])
>>> [h.result(timeout=5) for h in handles]
[0, 1, 2]
>>> result_of("echo", handle.message_id, timeout=5)   # when only the id was kept
{'x': 1}

Arguments are validated against the task's contract first: a bad argument or
an unknown task name raises and publishes nothing. With publisher confirms on
(BROKER_CONFIRM_DELIVERY, the default) ``send`` returning means RabbitMQ has
the message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.errors import BrokerConnectionError
from dramatiq.results import ResultFailure
from dramatiq.results import ResultTimeout as DramatiqResultTimeout
from opentelemetry.trace import TracerProvider

from observability.tracing import Tracing
from shared.batch_publisher import BatchPublisher
from shared.broker import build_broker, build_result_backend
from shared.errors import (
    GreenroomError,
    InvalidTaskArguments,
    PublishError,
    ResultTimeout,
    ResultUnavailable,
    TaskFailed,
)
from shared.results import RedisResultBackend
from shared.service_refusals import refusal_line
from shared.settings import Settings, get_settings, redact_url
from shared.tasks import TaskContract, get_task
from shared.telemetry import ensure_producer_tracing

#: How long TaskHandle.result() waits when no timeout is given, in seconds.
DEFAULT_RESULT_TIMEOUT = 10.0

#: Backoff between publish attempts while RabbitMQ is unreachable.
SEND_RETRY_FIRST_DELAY_SECONDS = 0.1
SEND_RETRY_MAX_DELAY_SECONDS = 1.0

logger = logging.getLogger("greenroom.producer")


@dataclass(frozen=True, slots=True)
class TaskHandle:
    """A sent task: its message id, and a way to wait for its result."""

    task: str
    message_id: str
    producer: Producer

    def result(self, timeout: float = DEFAULT_RESULT_TIMEOUT) -> Any:
        """Wait up to ``timeout`` seconds for the task's return value.

        Raises TaskFailed if the task finally failed, ResultTimeout if nothing
        arrived in time, ResultUnavailable if Redis could not be read.

        >>> send("echo", payload="hi").result(timeout=0.5)
        'hi'
        """
        return self.producer.result_of(self.task, self.message_id, timeout=timeout)


class Producer:
    """Publishes tasks to RabbitMQ and reads their results from Redis.

    Thread-safe: each thread gets its own RabbitMQ channel.

    >>> producer = Producer(load_settings())
    >>> producer.send("echo", payload=1).result()
    1
    >>> producer.close()
    """

    def __init__(
        self, settings: Settings | None = None, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        """``tracer_provider``: where producer spans go; by default the process's global
        provider, which is created from the settings if the application has none."""
        self.settings = settings or get_settings()
        if tracer_provider is None:
            ensure_producer_tracing(self.settings)
        self.broker: RabbitmqBroker = build_broker(self.settings, "producer", tracer_provider)
        self.backend: RedisResultBackend = build_result_backend(self.settings)

    def send(self, task: str, /, **kwargs: Any) -> TaskHandle:
        """Validate ``kwargs`` against the contract of ``task`` and publish it.

        >>> producer.send("reports.build", report_id="q3", rows=10_000).message_id
        '0c1f5a3e-...'
        """
        contract = get_task(task)
        message = self._message(contract, kwargs)
        self._publish(message)
        return TaskHandle(contract.name, message.message_id, self)

    def send_many(self, task: str, many_kwargs: Iterable[Mapping[str, Any]]) -> list[TaskHandle]:
        """Validate every item first, then publish them all; handles come back in order.

        If one item is invalid, nothing is published. The batch goes out with
        pipelined publisher confirms (not one round trip per message); it
        returns once RabbitMQ has confirmed every message, and rides out a
        broker outage like ``send``, re-sending only what was not confirmed.
        The batch is traced as one ``send <queue>`` span, the parent of every
        task's consumer span.

        >>> [h.message_id for h in producer.send_many("echo", [{"payload": 1}, {"payload": 2}])]
        ['6b8e...', 'a41c...']
        """
        contract = get_task(task)
        messages = [self._message(contract, kwargs) for kwargs in many_kwargs]
        publisher = BatchPublisher(self.broker, messages, timeout=self.settings.SEND_RETRY_TIMEOUT_SECONDS)
        tracing = self._tracing()
        with tracing.publishing_batch(contract.queue, len(messages)) if tracing else nullcontext():
            self._with_retries(f"a batch of {len(messages)}", publisher.publish)
        return [TaskHandle(contract.name, m.message_id, self) for m in messages]

    def result_of(self, task: str, message_id: str, *, timeout: float = DEFAULT_RESULT_TIMEOUT) -> Any:
        """Wait up to ``timeout`` seconds for the result of a message sent earlier.

        >>> producer.result_of("echo", "6b8e...", timeout=2.5)
        1
        """
        contract = get_task(task)
        if not contract.store_results:
            raise GreenroomError(f"task {contract.name!r} does not store results")
        key_message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=contract.queue,
            actor_name=contract.name,
            args=(),
            kwargs={},
            options={},
            message_id=message_id,
        )
        try:
            return self.backend.get_result(key_message, block=True, timeout=int(timeout * 1000))
        except DramatiqResultTimeout:
            raise ResultTimeout(contract.name, message_id, timeout) from None
        except redis.AuthenticationError:
            reason = f"REDIS_URL ({redact_url(self.settings.redis_url)}): Redis refused the login"
            raise ResultUnavailable(contract.name, message_id, reason) from None
        except redis.RedisError as error:  # its messages name the host, never a password
            raise ResultUnavailable(contract.name, message_id, f"{type(error).__name__}: {error}") from None
        except ResultFailure as failure:
            raise TaskFailed(contract.name, message_id, failure.orig_exc_type, failure.orig_exc_msg) from None

    def close(self) -> None:
        """Close RabbitMQ connections and the Redis connection pool."""
        self.broker.close()
        self.backend.client.close()

    def _message(self, contract: TaskContract, kwargs: Mapping[str, Any]) -> dramatiq.Message[Any]:
        """A validated message; too large a one raises InvalidTaskArguments (MAX_MESSAGE_BYTES)."""
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=contract.queue,
            actor_name=contract.name,
            args=(),
            kwargs=contract.validate(kwargs),
            options={},
        )
        size = len(message.encode())
        if size > self.settings.MAX_MESSAGE_BYTES:
            raise InvalidTaskArguments(
                contract.name,
                f"message is {size} bytes, more than MAX_MESSAGE_BYTES ({self.settings.MAX_MESSAGE_BYTES})",
            )
        return message

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
        deadline = time.monotonic() + self.settings.SEND_RETRY_TIMEOUT_SECONDS
        delay = SEND_RETRY_FIRST_DELAY_SECONDS
        while True:
            try:
                publish()
                return
            except BrokerConnectionError as error:
                self._abandon_span(error)
                refused = refusal_line(error, self.settings)
                if refused is not None:  # RabbitMQ refuses the settings: retrying cannot help
                    raise PublishError(f"could not publish {what}: {refused}") from None
                if time.monotonic() + delay > deadline:
                    raise PublishError(
                        f"could not publish {what} within "
                        f"{self.settings.SEND_RETRY_TIMEOUT_SECONDS:g}s: {error}"
                    ) from None
                logger.warning("Publishing %s failed, retrying in %.2fs: %s", what, delay, error)
                time.sleep(delay)
                delay = min(delay * 2, SEND_RETRY_MAX_DELAY_SECONDS)

    def _abandon_span(self, error: BaseException) -> None:
        tracing = self._tracing()
        if tracing is not None:
            tracing.abandon_publish(error)

    def _tracing(self) -> Tracing | None:
        return next((m for m in self.broker.middleware if isinstance(m, Tracing)), None)


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
    """Publish one task with the default producer. See :meth:`Producer.send`.

    >>> send("echo", payload={"x": 1}).result(timeout=5)
    {'x': 1}
    """
    return default_producer().send(task, **kwargs)


def send_many(task: str, many_kwargs: Iterable[Mapping[str, Any]]) -> list[TaskHandle]:
    """Publish a batch with the default producer. See :meth:`Producer.send_many`.

    >>> handles = send_many("echo", [{"payload": i} for i in range(100)])
    """
    return default_producer().send_many(task, many_kwargs)


def result_of(task: str, message_id: str, *, timeout: float = DEFAULT_RESULT_TIMEOUT) -> Any:
    """Wait for the result of a message sent earlier. See :meth:`Producer.result_of`.

    >>> result_of("echo", "6b8e9d4a-...", timeout=5)
    {'x': 1}
    """
    return default_producer().result_of(task, message_id, timeout=timeout)
