"""Prometheus metrics for Dramatiq workers, safe across Dramatiq's forked processes.

Metric families (their names are part of greenroom's public interface):

- ``greenroom_tasks_total{queue,actor,outcome}``: outcome is ``success``,
  ``retry``, ``failure`` (dead-lettered) or ``skipped``.
- ``greenroom_task_duration_seconds{queue,actor}``: processing time.
- ``greenroom_task_queue_wait_seconds{queue,actor}``: from enqueue (or, for a
  delayed or retried message, from when it became due) to the start of processing.
- ``greenroom_tasks_in_progress{queue,actor}`` and ``greenroom_worker_capacity``
  (threads across live worker processes): saturation = in progress / capacity.

prometheus_client must run in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set
before it is imported; ``greenroom worker`` does this). The families
``greenroom_queue_messages`` and ``greenroom_build_info`` are produced at
scrape time by :mod:`observability.exposition`.

The middleware belongs before Retries in the broker's list (its after-hooks
then see whether a failed message will retry or is dead-lettered).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from observability.exemplars import ExemplarStore
from observability.worker_registry import READY, STOPPING, WorkerRegistry

#: Message option: epoch milliseconds at which the message became due (set on every enqueue).
READY_AT_OPTION = "greenroom_ready_at"

OUTCOMES = ("success", "retry", "failure", "skipped")

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
WAIT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

TASKS = Counter(
    "greenroom_tasks",
    "Tasks finished by worker processes, by outcome (failure = dead-lettered).",
    ["queue", "actor", "outcome"],
    registry=None,
)
DURATION = Histogram(
    "greenroom_task_duration_seconds",
    "Time spent processing a task.",
    ["queue", "actor"],
    buckets=DURATION_BUCKETS,
    registry=None,
)
QUEUE_WAIT = Histogram(
    "greenroom_task_queue_wait_seconds",
    "Time from enqueue (or due time for delayed and retried messages) to the start of processing.",
    ["queue", "actor"],
    buckets=WAIT_BUCKETS,
    registry=None,
)
IN_PROGRESS = Gauge(
    "greenroom_tasks_in_progress",
    "Tasks being processed right now.",
    ["queue", "actor"],
    multiprocess_mode="livesum",
    registry=None,
)
CAPACITY = Gauge(
    "greenroom_worker_capacity",
    "Worker threads across live worker processes.",
    multiprocess_mode="livesum",
    registry=None,
)


class Metrics(Middleware):
    """Records task metrics and registers the process as ready to the health server.

    >>> broker.add_middleware(Metrics(worker_registry=registry, exemplars=store, forks=[serve]),
    ...                       before=Retries)
    """

    def __init__(
        self,
        *,
        worker_registry: WorkerRegistry | None = None,
        exemplars: ExemplarStore | None = None,
        forks: Sequence[Callable[[], int]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.worker_registry = worker_registry
        self.exemplars = exemplars
        self._forks = list(forks)
        self.clock = clock
        self._started: dict[int, tuple[float, str | None]] = {}
        self._series: dict[tuple[str, str], _Series] = {}

    @property
    def forks(self) -> list[Callable[[], int]]:
        return self._forks

    # Worker lifecycle ----------------------------------------------------------------

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        CAPACITY.set(worker.worker_threads)
        # Start every outcome of every actor at 0: rate() cannot see the first
        # increment of a series that appears with value 1.
        for name in broker.get_declared_actors():
            queue = broker.get_actor(name).queue_name
            for outcome in OUTCOMES:
                TASKS.labels(queue, name, outcome)
        if self.exemplars is not None:
            self.exemplars.start()
        if self.worker_registry is not None:
            self.worker_registry.mark(os.getpid(), READY)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.worker_registry is not None:
            self.worker_registry.mark(os.getpid(), STOPPING)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        CAPACITY.set(0)
        if self.exemplars is not None:
            self.exemplars.stop()
        if self.worker_registry is not None:
            self.worker_registry.remove(os.getpid())

    # Messages ------------------------------------------------------------------------

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        message.options[READY_AT_OPTION] = message.options.get("eta") or int(self.clock() * 1000)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        series = self._series_of(message)
        ready_at = message.options.get(READY_AT_OPTION) or message.message_timestamp
        trace_id = _sampled_trace_id() if self.exemplars is not None else None
        self._observe(
            series, QUEUE_WAIT, series.wait, WAIT_BUCKETS, max(0.0, self.clock() - ready_at / 1000), trace_id
        )
        series.in_progress.inc()
        self._started[threading.get_ident()] = (time.perf_counter(), trace_id)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            self._finish(message, "success")
            return
        self._finish(message, "failure" if message.failed else "retry")

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._finish(message, "failure" if message.failed else "skipped")  # failure: dead-lettered

    def _finish(self, message: MessageProxy, outcome: str) -> None:
        started = self._started.pop(threading.get_ident(), None)
        series = self._series_of(message)
        series.outcomes[outcome].inc()
        if started is None:
            return  # skipped before this middleware's before_process_message ran
        series.in_progress.dec()
        began, trace_id = started
        self._observe(
            series, DURATION, series.duration, DURATION_BUCKETS, time.perf_counter() - began, trace_id
        )

    def _series_of(self, message: MessageProxy) -> _Series:
        key = (message.queue_name, message.actor_name)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series.of(*key)
        return series

    def _observe(
        self,
        series: _Series,
        histogram: Histogram,
        child: Histogram,
        buckets: tuple[float, ...],
        value: float,
        trace_id: str | None,
    ) -> None:
        child.observe(value)
        if self.exemplars is not None and trace_id is not None:
            self.exemplars.observe(
                histogram._name, series.label_pairs, value=value, buckets=buckets, trace_id=trace_id
            )


@dataclass(frozen=True, slots=True)
class _Series:
    """The metric children of one (queue, actor), looked up once instead of per message."""

    label_pairs: tuple[tuple[str, str], ...]
    wait: Histogram
    duration: Histogram
    in_progress: Gauge
    outcomes: dict[str, Counter]

    @classmethod
    def of(cls, queue: str, actor: str) -> _Series:
        return cls(
            label_pairs=(("actor", actor), ("queue", queue)),
            wait=QUEUE_WAIT.labels(queue, actor),
            duration=DURATION.labels(queue, actor),
            in_progress=IN_PROGRESS.labels(queue, actor),
            outcomes={outcome: TASKS.labels(queue, actor, outcome) for outcome in OUTCOMES},
        )


def _sampled_trace_id() -> str | None:
    """The current span's trace id (32 hex digits) if it is sampled, for exemplars."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid and span_context.trace_flags.sampled:
        return format(span_context.trace_id, "032x")
    return None
