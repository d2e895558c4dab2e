"""Build the Dramatiq broker, result backend and middleware stack from Settings.

Workers and producers use the same builder, so both sides agree on queues,
confirms, results and tracing. This is the one place that lists greenroom's
middleware (:func:`middleware_stack`); the worker-only ones are imported only
when a worker's broker is built, so a producer process loads none of
:mod:`shared.runtime`.

>>> from shared.settings import load_settings
>>> broker = build_broker(load_settings(_env_file=None, BROKER_CONFIRM_DELIVERY=True), "producer")
>>> broker.confirm_delivery
True
>>> [type(m).__name__ for m in broker.middleware][-2:]
['CurrentMessage', 'Results']
>>> broker.close()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq
import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import MAX_DECLARE_ATTEMPTS, MAX_ENQUEUE_ATTEMPTS, RabbitmqBroker
from dramatiq.common import current_millis, q_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    Callbacks,
    CurrentMessage,
    Middleware,
    MiddlewareError,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.results import ResultBackend, Results
from opentelemetry.trace import TracerProvider

from observability.task_logging import TaskLogging
from shared import delays
from shared.dramatiq_compat import DeadLetterArgumentsBroker
from shared.queue_arguments import dead_letter_arguments
from shared.settings import Settings
from shared.telemetry import Role, tracing_middleware

if TYPE_CHECKING:
    from shared.results import RedisResultBackend
    from shared.runtime.consumer import GreenroomConsumer


class GreenroomBroker(DeadLetterArgumentsBroker):
    """RabbitmqBroker whose consumers check every body (at most ``max_message_bytes``) and
    whose dead-letter queues keep messages DEAD_LETTER_TTL_SECONDS.

    Dramatiq reads its retention (7 days) from an environment variable at import
    time; here it is a setting. RabbitMQ refuses to re-declare a queue with other
    arguments: after changing the retention, delete the ``.XQ`` queues (empty
    them with ``greenroom dlq replay --all`` first) or apply a RabbitMQ policy
    (:mod:`shared.service_refusals` says so in one line).

    Delayed and retrying messages wait on the TTL ladder (:mod:`shared.delays`), not in
    ``<queue>.DQ``: :meth:`join_ladder` declares the ladder (once per broker) and binds a
    queue to it, when a worker consumes the queue or a delayed message is first published
    for it; :meth:`enqueue` publishes a message that is not yet due on it. A process that
    sends nothing delayed never declares the ladder.
    """

    def __init__(self, *, dead_letter_ttl_ms: int, max_message_bytes: int, **options: Any) -> None:
        self._hooks: dict[str, list[Callable[..., Any]]] = {}
        self._hooks_of: list[Middleware] = []
        super().__init__(**options)
        self.dead_letter_ttl_ms = dead_letter_ttl_ms
        self.max_message_bytes = max_message_bytes
        self._ladder_declared = False
        self._on_ladder: set[str] = set()  # queues bound to the ladder's deliver exchange
        self._declaring_ladder = threading.Lock()

    # Dramatiq calls every hook of every middleware for each signal, most of them
    # the base class's no-ops: four signals per message times a dozen middleware.
    # These call only the hooks a middleware defines, with Dramatiq's error handling.

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for hook in self._hooks_for("before_" + signal):
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in before_%s of %r.", signal, _owner(hook), exc_info=True
                )

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for hook in self._hooks_for("after_" + signal, reverse=True):
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical(
                    "Unexpected failure in after_%s of %r.", signal, _owner(hook), exc_info=True
                )

    def _hooks_for(self, name: str, *, reverse: bool = False) -> list[Callable[..., Any]]:
        if self._hooks_of != self.middleware:  # middleware added or removed since: start again
            self._hooks_of = list(self.middleware)
            self._hooks.clear()
        hooks = self._hooks.get(name)
        if hooks is None:
            ordered = reversed(self.middleware) if reverse else self.middleware
            no_op = getattr(Middleware, name, None)
            hooks = [
                hook
                for hook in (getattr(middleware, name, None) for middleware in ordered)
                if hook is not None and getattr(hook, "__func__", None) is not no_op
            ]
            self._hooks[name] = hooks
        return hooks

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> GreenroomConsumer:
        """A consumer checking every body, with acks in batches (:mod:`shared.runtime.consumer`)."""
        from shared.runtime.consumer import GreenroomConsumer  # worker-only: producers never consume

        self.declare_queue(queue_name, ensure=True)
        self.join_ladder(queue_name)  # early arrivals go back on it
        return GreenroomConsumer(self, queue_name, prefetch, timeout)

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        return dead_letter_arguments(self.dead_letter_ttl_ms)

    def declare_queue(self, queue_name: str, *, ensure: bool = False) -> None:
        """Dramatiq's declare; a queue declared anew has lost its binding to the ladder."""
        canonical = q_name(queue_name)
        if canonical in self.queues_pending:
            self._on_ladder.discard(canonical)
        super().declare_queue(queue_name, ensure=ensure)

    def join_ladder(self, queue_name: str) -> None:
        """Declare the delay ladder (once per broker) and bind ``queue_name`` (declared before)
        to its deliver exchange, unless done already."""
        queue_name = q_name(queue_name)
        if queue_name in self._on_ladder:
            return
        attempts = 0
        while True:
            try:
                with self._declaring_ladder:
                    if not self._ladder_declared:
                        delays.declare_ladder(self.channel)
                        self._ladder_declared = True
                    delays.bind_queue(self.channel, queue_name)
                    self._on_ladder.add(queue_name)
                return
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
                del self.connection
                attempts += 1
                if attempts >= MAX_DECLARE_ATTEMPTS:
                    raise ConnectionClosed(e) from None
                self.logger.debug("Retrying the delay ladder's declaration due to closed connection.")

    def _leave_ladder(self) -> None:
        """The ladder or a binding may be gone (a publish on it failed on the channel): declare
        it again before the next publish."""
        with self._declaring_ladder:
            self._ladder_declared = False
            self._on_ladder.clear()

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        """Enqueue ``message``; one delayed ``delay`` ms, or whose ``greenroom_due_at`` is
        still ahead, goes on the delay ladder with its due time (and no ``eta``: Dramatiq's
        worker would hold such a message in memory). Others are published as Dramatiq does.

        Raises ConnectionClosed after MAX_ENQUEUE_ATTEMPTS failed publishes, as Dramatiq does.
        """
        now = current_millis()
        if delay is not None and delay > 0:
            delay = min(delay, delays.MAX_DELAY_SECONDS * 1000)  # a throttle's or a retry's, at most 7 days
            message = message.copy(
                queue_name=q_name(message.queue_name), options={delays.DUE_AT_OPTION: now + delay}
            )
            message.options.pop("eta", None)
        if delays.remaining_ms(message.options, now) == 0:
            return super().enqueue(message)
        return self._enqueue_delayed(message, delay)

    def _enqueue_delayed(self, message: dramatiq.Message[Any], delay: int | None) -> dramatiq.Message[Any]:
        """Dramatiq's publish loop (hooks, confirms, retries on a new connection), on the ladder."""
        queue_name = q_name(message.queue_name)
        attempts = 0
        while True:
            try:
                self.declare_queue(queue_name, ensure=True)
                self.join_ladder(queue_name)
                target = delays.publish_target(queue_name, message.options, current_millis())
                self.logger.debug("Enqueueing message %r on the delay ladder.", message.message_id)
                self.emit_before("enqueue", message, delay)
                self.channel.basic_publish(
                    exchange=target.exchange,
                    routing_key=target.routing_key,
                    body=message.encode(),
                    properties=pika.BasicProperties(
                        delivery_mode=2,
                        priority=message.options.get("broker_priority"),
                        headers=target.headers,
                    ),
                    mandatory=self.confirm_delivery,
                )
                self.emit_after("enqueue", message, delay)
                return message
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
                del self.connection
                if isinstance(e, pika.exceptions.AMQPChannelError):  # unroutable, or no such exchange
                    self.queues_pending.add(queue_name)
                    self._leave_ladder()
                attempts += 1
                if attempts >= MAX_ENQUEUE_ATTEMPTS:
                    raise ConnectionClosed(e) from None
                self.logger.debug(
                    "Retrying enqueue due to closed connection. [%d/%d] attempts made so far.",
                    attempts,
                    MAX_ENQUEUE_ATTEMPTS,
                )


def _owner(hook: Callable[..., Any]) -> object:
    return getattr(hook, "__self__", hook)


def build_result_backend(settings: Settings) -> RedisResultBackend:
    """The Redis result backend at REDIS_URL."""
    from shared.results import RedisResultBackend  # imports redis: see LazyResultBackend

    return RedisResultBackend(url=settings.redis_url, store_retry_seconds=settings.RESULT_STORE_RETRY_SECONDS)


class LazyResultBackend:
    """Stands in for a result backend and builds it when it is first used.

    A worker process thereby opens its results connection pool only once one of
    its tasks stores (or reads) a result. (Every worker imports redis-py at boot
    all the same: cancellation, :mod:`shared.runtime.cancellation`, loads the
    pending cancels from Redis before the first message.)

    >>> from dramatiq.results.backends import StubBackend
    >>> built = []
    >>> lazy = LazyResultBackend(lambda: built.append("stub") or StubBackend(namespace="results"))
    >>> built
    []
    >>> lazy.namespace, lazy.namespace, built   # built once, at the first use
    ('results', 'results', ['stub'])
    """

    def __init__(self, build: Callable[[], ResultBackend]) -> None:
        self._build = build
        self._backend: ResultBackend | None = None
        self._building = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        backend = self._backend
        if backend is None:
            with self._building:
                if self._backend is None:
                    self._backend = self._build()
                backend = self._backend
        return getattr(backend, name)


def build_broker(
    settings: Settings, role: Role, tracer_provider: TracerProvider | None = None
) -> GreenroomBroker:
    """A RabbitmqBroker at RABBITMQ_URL with greenroom's middleware stack for ``role``."""
    return GreenroomBroker(
        url=connection_url(settings),
        confirm_delivery=settings.BROKER_CONFIRM_DELIVERY,
        middleware=middleware_stack(settings, role, tracer_provider),
        dead_letter_ttl_ms=settings.DEAD_LETTER_TTL_SECONDS * 1000,
        max_message_bytes=settings.MAX_MESSAGE_BYTES,
        queue_max_priorities=settings.QUEUE_MAX_PRIORITIES,
    )


def middleware_stack(
    settings: Settings, role: Role, tracer_provider: TracerProvider | None = None
) -> list[Middleware]:
    """Every middleware of a broker, in order.

    A producer's stack is a worker's without the worker-only middleware (which
    only act while processing messages); those are imported here, for a
    worker. A producer still declares the same actor options (plain Retries
    stands in for RetriesKeepingFailedEnqueues), so an actor is valid on both.

    Order matters. Dramatiq runs ``before_*`` hooks in list order and
    ``after_*`` hooks in reverse, so a worker's batched log lines are all
    written after every other middleware has shut down, Tracing keeps the
    consumer span current around everything else, TaskLogging (next) writes
    its line after Retries has decided whether a failed message retries or
    dies, Cancellation skips a cancelled message before AgeLimit and TaskLimits see it,
    the workflow middleware publishes a step's next step after Results stored its
    result and marks later steps once Retries has failed one, AsyncIO starts the
    event loop thread async actors run on, and freezing the boot objects comes after every other boot step.
    """
    retry_options: dict[str, Any] = {
        "max_retries": settings.TASK_MAX_RETRIES,
        "min_backoff": int(settings.TASK_MIN_BACKOFF_SECONDS * 1000),
        "max_backoff": int(settings.TASK_MAX_BACKOFF_SECONDS * 1000),
    }
    first: list[Middleware] = []
    after_task_logging: list[Middleware] = []
    last: list[Middleware] = []
    limits: list[Middleware] = []  # TaskLimits: after AgeLimit (too old: no slot), before TimeLimit
    cancellation: list[Middleware] = []  # before AgeLimit and TaskLimits: a cancelled message takes no slot
    workflows: list[Middleware] = []  # before Retries (their after_* hooks see its verdict) and Results
    retries: Middleware = Retries(**retry_options)
    if role == "worker":
        from shared.runtime.batched_logs import BatchedWorkerLogs
        from shared.runtime.boot_freeze import FreezeBootObjects
        from shared.runtime.cancellation import Cancellation
        from shared.runtime.metrics_setup import metrics_middleware
        from shared.runtime.retries import RetriesKeepingFailedEnqueues
        from shared.runtime.task_limits import TaskLimits
        from shared.runtime.term_signals import CoalesceTermSignals
        from shared.runtime.workflow_steps import workflow_middleware

        first = [BatchedWorkerLogs()]
        after_task_logging = [metrics_middleware(settings), CoalesceTermSignals()]
        retries = RetriesKeepingFailedEnqueues(**retry_options)
        limits = [TaskLimits(settings)]
        cancellation = [Cancellation(settings)]
        workflows = workflow_middleware(settings)
        last = [AsyncIO(), FreezeBootObjects()]
    return [
        *first,
        *tracing_middleware(settings, role, tracer_provider),
        TaskLogging(),
        *after_task_logging,
        *cancellation,
        AgeLimit(),
        *limits,
        TimeLimit(time_limit=int(settings.TASK_TIME_LIMIT_SECONDS * 1000)),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        *workflows,
        retries,
        CurrentMessage(),
        Results(
            backend=LazyResultBackend(lambda: build_result_backend(settings)),
            result_ttl=settings.RESULT_TTL_SECONDS * 1000,
        ),
        *last,
    ]


_BLOCKED_TIMEOUT = "blocked_connection_timeout"  # pika's URL query parameter


def connection_url(settings: Settings) -> str:
    """RABBITMQ_URL with a ``blocked_connection_timeout`` (replacing one it names).

    During a memory or disk alarm RabbitMQ blocks every connection that publishes;
    pika then closes a connection blocked for this long, and Dramatiq retries the
    enqueue on a new one (MAX_ENQUEUE_ATTEMPTS in all). A share of
    SEND_RETRY_TIMEOUT_SECONDS per attempt makes ``send`` and ``send_many`` raise
    PublishError within that timeout, and a worker thread's enqueue (Retries)
    raise ConnectionClosed, instead of waiting for the alarm to end.
    """
    parts = urlsplit(settings.rabbitmq_url)
    timeout = settings.SEND_RETRY_TIMEOUT_SECONDS / MAX_ENQUEUE_ATTEMPTS
    query = [pair for pair in parse_qsl(parts.query, keep_blank_values=True) if pair[0] != _BLOCKED_TIMEOUT]
    query.append((_BLOCKED_TIMEOUT, f"{timeout:g}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def install_broker(settings: Settings) -> RabbitmqBroker:
    """Build the broker and make it Dramatiq's global one (worker processes)."""
    broker = build_broker(settings, "worker")
    dramatiq.set_broker(broker)
    return broker
