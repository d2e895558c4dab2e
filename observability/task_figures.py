"""Task figures noted by worker threads, applied to the metrics by one thread in batches.

A worker thread only appends a tuple to a queue when a task starts waiting
(:class:`Waited`) or finishes (:class:`Finished`); :meth:`TaskFigures.flush`, run
by the metrics flusher thread, observes the durations and waits, adds up the
outcome counters, keeps the latest traced observation of each bucket as its
exemplar and shows how many tasks are in progress. Metric files and their
locks are then touched by one thread instead of by every worker thread at
every task.

>>> figures = TaskFigures(exemplars=None)
>>> series = figures.series_of("default", "echo")
>>> figures.note(Finished(series, "success", 0.012, None))
>>> figures.flush()   # greenroom_tasks_total{queue="default",actor="echo",outcome="success"} += 1
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from opentelemetry.trace import SpanContext
from prometheus_client import Counter, Gauge, Histogram

from observability.exemplars import ExemplarStore
from observability.metric_families import (
    DURATION,
    DURATION_BUCKETS,
    DURATION_NAME,
    IN_PROGRESS,
    OUTCOMES,
    QUEUE_WAIT,
    QUEUE_WAIT_NAME,
    TASKS,
    WAIT_BUCKETS,
)


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: hashed by identity, one per (queue, actor)
class Series:
    """The metric children of one (queue, actor), looked up once instead of per message."""

    label_pairs: tuple[tuple[str, str], ...]
    wait: Histogram
    duration: Histogram
    in_progress: Gauge
    outcomes: dict[str, Counter]

    @classmethod
    def of(cls, queue: str, actor: str) -> Series:
        return cls(
            label_pairs=(("actor", actor), ("queue", queue)),
            wait=QUEUE_WAIT.labels(queue, actor),
            duration=DURATION.labels(queue, actor),
            in_progress=IN_PROGRESS.labels(queue, actor),
            outcomes={outcome: TASKS.labels(queue, actor, outcome) for outcome in OUTCOMES},
        )


class Started(NamedTuple):
    at: float  # perf_counter()
    series: Series
    span_context: SpanContext | None
    message_id: str


class Waited(NamedTuple):
    series: Series
    seconds: float
    span_context: SpanContext | None


class Finished(NamedTuple):
    series: Series
    outcome: str
    seconds: float | None  # None: skipped before it started
    span_context: SpanContext | None


class TaskFigures:
    """The figures noted since the last flush, and the tasks running now (by thread id)."""

    def __init__(self, *, exemplars: ExemplarStore | None) -> None:
        self.exemplars = exemplars
        #: The task each worker thread runs, by ``threading.get_ident()``.
        self.started: dict[int, Started] = {}
        self._series: dict[tuple[str, str], Series] = {}
        self._noted: deque[Waited | Finished] = deque()
        self._in_progress_shown: dict[Series, int] = {}
        self._flushing = threading.Lock()

    def series_of(self, queue: str, actor: str) -> Series:
        key = (queue, actor)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series.of(queue, actor)
        return series

    def note(self, noted: Waited | Finished) -> None:
        """Keep ``noted`` for the next :meth:`flush` (any thread may call this)."""
        self._noted.append(noted)

    def flush(self) -> None:
        """Apply every noted figure to the metrics."""
        with self._flushing:
            finished: dict[tuple[Series, str], int] = {}
            while True:
                try:
                    noted = self._noted.popleft()
                except IndexError:
                    break
                if isinstance(noted, Waited):
                    self._observe(QUEUE_WAIT_NAME, WAIT_BUCKETS, noted.series.wait, noted, noted.seconds)
                    continue
                key = (noted.series, noted.outcome)
                finished[key] = finished.get(key, 0) + 1
                if noted.seconds is not None:
                    self._observe(
                        DURATION_NAME, DURATION_BUCKETS, noted.series.duration, noted, noted.seconds
                    )
            for (series, outcome), count in finished.items():
                series.outcomes[outcome].inc(count)
            self._show_in_progress()

    def _observe(
        self,
        name: str,
        buckets: tuple[float, ...],
        child: Histogram,
        noted: Waited | Finished,
        seconds: float,
    ) -> None:
        """Observe ``seconds``; a traced observation becomes its bucket's exemplar (the latest wins)."""
        child.observe(seconds)
        span_context = noted.span_context
        if self.exemplars is None or span_context is None or not sampled(span_context):
            return
        self.exemplars.observe(
            name,
            noted.series.label_pairs,
            value=seconds,
            buckets=buckets,
            trace_id=format(span_context.trace_id, "032x"),
        )

    def _show_in_progress(self) -> None:
        running: dict[Series, int] = dict.fromkeys(self._in_progress_shown, 0)
        for started in list(self.started.values()):
            running[started.series] = running.get(started.series, 0) + 1
        for series, count in running.items():
            if self._in_progress_shown.get(series) != count:
                series.in_progress.set(count)
                self._in_progress_shown[series] = count


def sampled(span_context: SpanContext) -> bool:
    """Whether a span context belongs to a sampled trace (exemplars link only to those)."""
    return span_context.is_valid and span_context.trace_flags.sampled
