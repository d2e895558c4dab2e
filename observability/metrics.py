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

The middleware also watches its process's threads: ``greenroom_worker_capacity``
counts only live worker threads, and a worker or consumer thread that died
marks the process degraded (``/readyz`` fails, one CRITICAL line). At shutdown
it logs the message ids that RabbitMQ will redeliver: tasks still running at
the shutdown deadline and prefetched ones never started.

The middleware belongs before Retries in the broker's list (its after-hooks
then see whether a failed message will retry or is dead-lettered).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from opentelemetry import trace
from opentelemetry.trace import SpanContext
from prometheus_client import Counter, Gauge, Histogram

from observability.exemplars import ExemplarStore
from observability.histogram_tally import HistogramTally
from observability.worker_registry import READY, STOPPING, WorkerRegistry, degraded

logger = logging.getLogger("greenroom.metrics")
worker_logger = logging.getLogger("greenroom.worker")

#: Message ids named in one shutdown line at most (the count is always complete).
MAX_IDS_LOGGED = 100

#: Seconds between applying a worker process's noted task figures to its metric files.
FLUSH_INTERVAL_SECONDS = 0.1

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
REJECTED = Counter(
    "greenroom_messages_rejected",
    "Messages dead-lettered on arrival because a check of their body failed, by the field named.",
    ["queue", "field"],
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

    A worker thread only notes what happened to a task (a tuple on a queue); a
    flusher thread applies the notes to the metrics every ``flush_interval``
    seconds and once more at shutdown, so metric files and their locks are
    touched by one thread, in batches, instead of by every worker thread at
    every task. Figures therefore reach ``/metrics`` up to ``flush_interval``
    late; a process killed with SIGKILL loses at most its last interval.

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
        flush_interval: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self.worker_registry = worker_registry
        self.exemplars = exemplars
        self._forks = list(forks)
        self.clock = clock
        self.flush_interval = flush_interval
        self._started: dict[int, _Started] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._noted: deque[_Waited | _Finished] = deque()
        self._in_progress_shown: dict[_Series, int] = {}
        self._flushing = threading.Lock()
        self._stop_flusher = threading.Event()
        self._flusher: threading.Thread | None = None
        self._worker: dramatiq.Worker | None = None
        self._threads_shown: tuple[int, tuple[str, ...]] | None = None
        self._unstarted: list[str] | None = None

    @property
    def forks(self) -> list[Callable[[], int]]:
        return self._forks

    # Worker lifecycle ----------------------------------------------------------------

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._worker = worker
        self._threads_shown = None
        self._unstarted = None
        CAPACITY.set(worker.worker_threads)
        # Start every outcome of every actor at 0: rate() cannot see the first
        # increment of a series that appears with value 1.
        for name in broker.get_declared_actors():
            queue = broker.get_actor(name).queue_name
            for outcome in OUTCOMES:
                TASKS.labels(queue, name, outcome)
        if self.exemplars is not None:
            self.exemplars.start()
        self._stop_flusher.clear()
        self._flusher = threading.Thread(
            target=self._flush_every_interval, name="greenroom-metrics", daemon=True
        )
        self._flusher.start()
        if self.worker_registry is not None:
            self.worker_registry.mark(os.getpid(), READY)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._worker = None  # threads now stop on purpose: no longer watched
        if self.worker_registry is not None:
            self.worker_registry.mark(os.getpid(), STOPPING)

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        """The first consumer to stop sees what the stopped worker threads left on the work queue."""
        work_queue = getattr(thread, "work_queue", None)
        if self._unstarted is not None or work_queue is None:
            return
        with work_queue.mutex:
            self._unstarted = [item.message.message_id for item in work_queue.queue]

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._log_redelivered()
        self._stop_flusher.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
            self._flusher = None
        try:
            self.flush()
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
        message.options[READY_AT_OPTION] = message.options.get("eta") or int(self.clock() * 1000)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        series = self._series_of(message)
        ready_at = message.options.get(READY_AT_OPTION) or message.message_timestamp
        span_context = trace.get_current_span().get_span_context() if self.exemplars is not None else None
        self._note(_Waited(series, max(0.0, self.clock() - ready_at / 1000), span_context))
        self._started[threading.get_ident()] = _Started(
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
        if exception is None:
            self._finish(message, "success")
            return
        self._finish(message, "failure" if message.failed else "retry")

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._finish(message, "failure" if message.failed else "skipped")  # failure: dead-lettered

    def after_reject_message(self, broker: dramatiq.Broker, queue_name: str, rejection: Any) -> None:
        """A body failed its checks on arrival (:mod:`shared.runtime.consumer`); rare, so counted at once."""
        REJECTED.labels(queue_name, rejection.field).inc()

    def _finish(self, message: MessageProxy, outcome: str) -> None:
        started = self._started.pop(threading.get_ident(), None)
        if started is None:  # skipped before this middleware's before_process_message ran
            self._note(_Finished(self._series_of(message), outcome, None, None))
            return
        seconds = time.perf_counter() - started.at
        self._note(_Finished(started.series, outcome, seconds, started.span_context))

    def _note(self, noted: _Waited | _Finished) -> None:
        self._noted.append(noted)
        if self._flusher is None:  # not in a booted worker (no flusher): apply it at once
            self.flush()

    def _series_of(self, message: MessageProxy) -> _Series:
        key = (message.queue_name, message.actor_name)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series.of(*key)
        return series

    # Applying the notes --------------------------------------------------------------

    def flush(self) -> None:
        """Apply every noted figure to the metrics (the flusher thread calls this)."""
        with self._flushing:
            finished: dict[tuple[_Series, str], int] = {}
            tallies: dict[Histogram, tuple[Histogram, HistogramTally, _Series]] = {}
            while True:
                try:
                    noted = self._noted.popleft()
                except IndexError:
                    break
                if isinstance(noted, _Waited):
                    self._tally(tallies, QUEUE_WAIT, noted.series.wait, noted, noted.seconds)
                    continue
                key = (noted.series, noted.outcome)
                finished[key] = finished.get(key, 0) + 1
                if noted.seconds is not None:
                    self._tally(tallies, DURATION, noted.series.duration, noted, noted.seconds)
            for histogram, tally, series in tallies.values():
                tally.apply()
                self._keep_exemplars(histogram, tally, series)
            for (series, outcome), count in finished.items():
                series.outcomes[outcome].inc(count)
            self._show_in_progress()

    def _tally(
        self,
        tallies: dict[Histogram, tuple[Histogram, HistogramTally, _Series]],
        histogram: Histogram,
        child: Histogram,
        noted: _Waited | _Finished,
        seconds: float,
    ) -> None:
        entry = tallies.get(child)
        if entry is None:
            entry = tallies[child] = (histogram, HistogramTally(child), noted.series)
        span_context = noted.span_context
        traced = self.exemplars is not None and span_context is not None and _sampled(span_context)
        entry[1].add(seconds, span_context if traced else None)

    def _keep_exemplars(self, histogram: Histogram, tally: HistogramTally, series: _Series) -> None:
        """The latest traced observation of each bucket becomes its exemplar."""
        if self.exemplars is None:
            return
        buckets = tuple(tally.upper_bounds[:-1])
        for seconds, span_context in tally.exemplars.values():
            self.exemplars.observe(
                histogram._name,
                series.label_pairs,
                value=seconds,
                buckets=buckets,
                trace_id=format(span_context.trace_id, "032x"),
            )

    def _show_in_progress(self) -> None:
        running: dict[_Series, int] = dict.fromkeys(self._in_progress_shown, 0)
        for started in list(self._started.values()):
            running[started.series] = running.get(started.series, 0) + 1
        for series, count in running.items():
            if self._in_progress_shown.get(series) != count:
                series.in_progress.set(count)
                self._in_progress_shown[series] = count

    def _flush_every_interval(self) -> None:
        while not self._stop_flusher.wait(self.flush_interval):
            try:
                self.watch_threads()
                self.flush()
            except Exception:  # a full disk must not end metrics for good
                logger.exception("Could not update the worker's metrics.")

    # Threads and shutdown ------------------------------------------------------------

    def watch_threads(self) -> None:
        """Count live worker threads into the capacity gauge; mark the process degraded
        once a worker or consumer thread has died (Dramatiq never restarts them)."""
        worker = self._worker
        if worker is None:
            return
        live = sum(thread.is_alive() for thread in worker.workers)
        dead_consumers = tuple(
            sorted(queue for queue, thread in worker.consumers.items() if not thread.is_alive())
        )
        shown = (live, dead_consumers)
        if shown == self._threads_shown:
            return
        self._threads_shown = shown
        CAPACITY.set(live)
        lost = len(worker.workers) - live
        if not lost and not dead_consumers:
            return
        reason = _lost_threads(lost, len(worker.workers), dead_consumers)
        worker_logger.critical("Worker process lost threads: %s; it is no longer ready (restart it).", reason)
        if self.worker_registry is not None and self._worker is not None:
            self.worker_registry.mark(os.getpid(), degraded(reason))

    def _log_redelivered(self) -> None:
        running = [started.message_id for started in list(self._started.values())]
        if running:
            worker_logger.warning(
                "%d tasks still running at the shutdown deadline are abandoned: RabbitMQ redelivers them.",
                len(running),
                extra=_ids(running),
            )
        unstarted, self._unstarted = self._unstarted or [], None
        if unstarted:
            worker_logger.info(
                "%d prefetched messages were returned to RabbitMQ unstarted.",
                len(unstarted),
                extra=_ids(unstarted),
            )


def _lost_threads(lost: int, threads: int, dead_consumers: tuple[str, ...]) -> str:
    parts = [f"{lost} of {threads} worker threads died"] if lost else []
    if dead_consumers:
        parts.append(f"the consumer of {', '.join(dead_consumers)} died")
    return ", ".join(parts)


def _ids(message_ids: list[str]) -> dict[str, Any]:
    """The ``message_ids`` field of a shutdown line: at most MAX_IDS_LOGGED of them."""
    fields: dict[str, Any] = {"message_ids": message_ids[:MAX_IDS_LOGGED]}
    if len(message_ids) > MAX_IDS_LOGGED:
        fields["message_ids_not_shown"] = len(message_ids) - MAX_IDS_LOGGED
    return fields


class _Started(NamedTuple):
    at: float  # perf_counter()
    series: _Series
    span_context: SpanContext | None
    message_id: str


class _Waited(NamedTuple):
    series: _Series
    seconds: float
    span_context: SpanContext | None


class _Finished(NamedTuple):
    series: _Series
    outcome: str
    seconds: float | None  # None: skipped before it started
    span_context: SpanContext | None


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: hashed by identity, one per (queue, actor)
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


def _sampled(span_context: SpanContext) -> bool:
    """Whether a span context belongs to a sampled trace (exemplars link only to those)."""
    return span_context.is_valid and span_context.trace_flags.sampled
