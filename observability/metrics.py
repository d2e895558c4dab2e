"""Prometheus metrics for Dramatiq workers, safe across Dramatiq's forked processes.

The families are listed in :mod:`observability.metric_families`; the families
``greenroom_queue_messages`` and ``greenroom_build_info`` are produced at
scrape time by :mod:`observability.exposition`, ``greenroom_degraded`` by
:mod:`observability.fallbacks`.

The middleware also watches its process's threads
(:mod:`observability.thread_watch`): ``greenroom_worker_capacity`` counts
only live worker threads, and a worker or consumer thread that died marks the
process degraded (``/readyz`` fails, one CRITICAL line). At shutdown it logs
the message ids that RabbitMQ will redeliver
(:mod:`observability.redelivery_report`).

The composition root (``shared.broker.middleware_stack``, through
``shared.runtime.metrics_setup.metrics_middleware``) puts the middleware on
workers only, right after TaskLogging and before the Dramatiq middleware and
Retries: its ``before_process_message`` runs before those of the middleware
that can skip a message (``AgeLimit``, say), and its after-hooks (Dramatiq runs
``after_*`` hooks in reverse) run once Retries has decided whether a failed
message retries or is dead-lettered, so the outcome counted is ``retry`` or
``failure``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from opentelemetry import trace

from observability import fallbacks
from observability.exemplars import ExemplarStore
from observability.metric_families import CAPACITY, OUTCOMES, REJECTED, TASKS
from observability.periodic import Periodic
from observability.redelivery_report import RedeliveryReport
from observability.task_figures import Finished, Series, Started, TaskFigures, Waited
from observability.task_logging import skip_outcome, was_cancelled
from observability.thread_watch import ThreadWatch
from observability.worker_registry import READY, STOPPING, WorkerRegistry

logger = logging.getLogger("greenroom.metrics")

#: Seconds between applying a worker process's noted task figures to its metric files.
FLUSH_INTERVAL_SECONDS = 0.1

#: Message option: epoch milliseconds at which the message became due (set on every enqueue).
READY_AT_OPTION = "greenroom_ready_at"
#: Message option: epoch milliseconds at which a delayed message is due (``shared.delays.DUE_AT_OPTION``).
DUE_AT_OPTION = "greenroom_due_at"


class Metrics(Middleware):
    """Records task metrics and registers the process as ready to the health server.

    A worker thread only notes what happened to a task; a flusher thread
    (:class:`observability.periodic.Periodic`) applies the notes to the
    metrics every ``flush_interval`` seconds and once more at shutdown
    (:class:`observability.task_figures.TaskFigures`). Figures therefore reach
    ``/metrics`` up to ``flush_interval`` late; a process killed with SIGKILL
    loses at most its last interval.
    """

    def __init__(
        self,
        *,
        worker_registry: WorkerRegistry | None = None,
        exemplars: ExemplarStore | None = None,
        forks: Sequence[Callable[[], int]] = (),
        clock: Callable[[], float] = time.time,
        flush_interval: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self.worker_registry = worker_registry
        self.exemplars = exemplars
        self._forks = list(forks)
        self.clock = clock
        self.figures = TaskFigures(exemplars=exemplars)
        self.threads = ThreadWatch(worker_registry=worker_registry)
        self.redelivery = RedeliveryReport()
        self._flusher = Periodic(self._tick, interval=flush_interval, name="greenroom-metrics")

    @property
    def forks(self) -> list[Callable[[], int]]:
        return self._forks

    # Worker lifecycle ----------------------------------------------------------------

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.threads.watch(worker)
        self.redelivery.reset()
        CAPACITY.set(worker.worker_threads)
        fallbacks.export_reported()  # fallbacks reported before this process wrote metrics
        # Start every outcome of every actor at 0: rate() cannot see the first
        # increment of a series that appears with value 1.
        for name in broker.get_declared_actors():
            queue = broker.get_actor(name).queue_name
            for outcome in OUTCOMES:
                TASKS.labels(queue, name, outcome)
        if self.exemplars is not None:
            self.exemplars.start()
        self._flusher.start()
        if self.worker_registry is not None:
            self.worker_registry.mark(os.getpid(), READY)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.threads.unwatch()  # threads now stop on purpose: no longer watched
        if self.worker_registry is not None:
            self.worker_registry.mark(os.getpid(), STOPPING)

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        """The first consumer to stop sees what the stopped worker threads left on the work queue."""
        self.redelivery.capture_unstarted(getattr(thread, "work_queue", None))

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.redelivery.log(running=[started.message_id for started in list(self.figures.started.values())])
        try:
            self._flusher.stop()  # with a last flush
            CAPACITY.set(0)
            if self.exemplars is not None:
                self.exemplars.stop()
        finally:  # the health server waits for this process to leave the registry before it exits
            if self.worker_registry is not None:
                self.worker_registry.remove(os.getpid())

    # Messages ------------------------------------------------------------------------

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        """The message is ready when enqueued, or when due if it is delayed (the delay ladder's
        ``greenroom_due_at``, Dramatiq's ``eta``): queue wait counts from then."""
        options = message.options
        due_at = options.get(DUE_AT_OPTION) or options.get("eta") or 0
        options[READY_AT_OPTION] = int(max(self.clock() * 1000, due_at))

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        series = self._series_of(message)
        ready_at = message.options.get(READY_AT_OPTION) or message.message_timestamp
        span_context = trace.get_current_span().get_span_context() if self.exemplars is not None else None
        self._note(Waited(series, max(0.0, self.clock() - ready_at / 1000), span_context))
        self.figures.started[threading.get_ident()] = Started(
            time.perf_counter(), series, span_context, message.message_id
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:  # failed: it ran, but its next workflow step could not be published
            self._finish(message, "failure" if message.failed else "success")
            return
        if was_cancelled(message):  # interrupted while running
            self._finish(message, "cancelled")
            return
        self._finish(message, "failure" if message.failed else "retry")

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._finish(message, skip_outcome(broker, message).outcome)  # skipped, throttled, cancelled, failure

    def after_reject_message(self, broker: dramatiq.Broker, queue_name: str, rejection: Any) -> None:
        """A body failed its checks on arrival (:mod:`shared.runtime.consumer`); rare, so counted at once."""
        REJECTED.labels(queue_name, rejection.field).inc()

    def flush(self) -> None:
        """Apply every noted figure to the metrics (the flusher thread calls this)."""
        self.figures.flush()

    def _finish(self, message: MessageProxy, outcome: str) -> None:
        started = self.figures.started.pop(threading.get_ident(), None)
        if started is None or outcome == "throttled":  # skipped before it started, or not run: no duration
            self._note(Finished(self._series_of(message), outcome, None, None))
            return
        seconds = time.perf_counter() - started.at
        self._note(Finished(started.series, outcome, seconds, started.span_context))

    def _note(self, noted: Waited | Finished) -> None:
        self.figures.note(noted)
        if not self._flusher.running:  # not in a booted worker (no flusher): apply it at once
            self.figures.flush()

    def _series_of(self, message: MessageProxy) -> Series:
        return self.figures.series_of(message.queue_name, message.actor_name)

    def _tick(self) -> None:
        self.threads.check()
        self.figures.flush()
