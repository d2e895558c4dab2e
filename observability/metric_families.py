"""The Prometheus metric families a worker process writes (their names are public interface).

- ``greenroom_tasks_total{queue,actor,outcome}``: outcome is ``success``,
  ``retry``, ``failure`` (dead-lettered), ``skipped`` (not run: older than its
  ``max_age``, say) or ``throttled`` (over a concurrency or rate limit: put back
  on the queue with a delay, to run later).
- ``greenroom_task_duration_seconds{queue,actor}``: processing time.
- ``greenroom_task_queue_wait_seconds{queue,actor}``: from enqueue (or, for a
  delayed or retried message, from when it became due) to the start of processing.
- ``greenroom_messages_rejected_total{queue,field}``: bodies dead-lettered on arrival.
- ``greenroom_tasks_in_progress{queue,actor}`` and ``greenroom_worker_capacity``
  (threads across live worker processes): saturation = in progress / capacity.

prometheus_client must run in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set
before it is imported; ``greenroom worker`` does this), so this module is
imported only where metrics are written.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OUTCOMES = ("success", "retry", "failure", "skipped", "throttled", "cancelled")

TASKS_NAME = "greenroom_tasks"
DURATION_NAME = "greenroom_task_duration_seconds"
QUEUE_WAIT_NAME = "greenroom_task_queue_wait_seconds"

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
    TASKS_NAME,
    "Tasks finished by worker processes, by outcome (failure = dead-lettered).",
    ["queue", "actor", "outcome"],
    registry=None,
)
DURATION = Histogram(
    DURATION_NAME,
    "Time spent processing a task.",
    ["queue", "actor"],
    buckets=DURATION_BUCKETS,
    registry=None,
)
QUEUE_WAIT = Histogram(
    QUEUE_WAIT_NAME,
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
