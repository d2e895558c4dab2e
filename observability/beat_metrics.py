"""The Prometheus metrics and health of one ``greenroom beat`` process (names are public interface).

- ``greenroom_beat_ticks_total{schedule,outcome}``: ticks by outcome: ``sent``
  (published and confirmed), ``missed`` (older than BEAT_CATCHUP_SECONDS when a
  leader came to them: counted, not sent) and ``failed`` (a publish that gave up;
  the tick is retried, so one tick may count as failed several times before sent).
- ``greenroom_beat_tick_lag_seconds{schedule}``: from a tick's scheduled time to
  RabbitMQ's confirmation of its message.
- ``greenroom_beat_last_sent_timestamp_seconds{schedule}``: when a tick of the
  schedule was last sent (before the first one: when a beat first took the
  schedule up), as the leader knows it from Redis.
- ``greenroom_beat_next_tick_timestamp_seconds{schedule}``: the scheduled time of
  the schedule's next tick to send (the oldest one not sent): overdue means stalled.
- ``greenroom_beat_schedule_interval_seconds{schedule}``: the time between the
  schedule's next two ticks.
- ``greenroom_beat_heartbeat_completed_timestamp_seconds``: the scheduled time of the
  latest ``heartbeat`` tick whose result a worker stored (before the first: when
  this process began to lead): the end-to-end proof that beat, RabbitMQ, workers and
  Redis all run.
- ``greenroom_beat_leader``: 1 while this process holds the lease, else 0.

The per-schedule gauges and the heartbeat's are the leader's: a process that stops
leading drops them (the heartbeat's reads 0), so ``max`` across processes is the
leader's value.

A beat is one process, so these live in a registry of its own (no multiprocess
directory); :class:`BeatHealth` answers ``/healthz`` and ``/readyz`` for
:func:`observability.exposition.make_server`.

>>> metrics = BeatMetrics(version="1.0")
>>> metrics.ticks.labels(schedule="heartbeat", outcome="sent").inc()
>>> metrics.registry.get_sample_value(
...     "greenroom_beat_ticks_total", {"schedule": "heartbeat", "outcome": "sent"})
1.0
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from observability.exposition import BuildInfoCollector

#: The outcomes of ``greenroom_beat_ticks_total``.
TICK_OUTCOMES = ("sent", "missed", "failed")

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class BeatMetrics:
    """The metric families of one beat process, in their own registry."""

    def __init__(self, *, version: str) -> None:
        self.registry = CollectorRegistry()
        self.ticks = Counter(
            "greenroom_beat_ticks",
            "Ticks of each schedule by outcome (sent; missed: older than the catch-up window; "
            "failed: a publish that gave up, retried).",
            ["schedule", "outcome"],
            registry=self.registry,
        )
        self.lag = Histogram(
            "greenroom_beat_tick_lag_seconds",
            "Time from a tick's scheduled time to RabbitMQ's confirmation of its message.",
            ["schedule"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.last_sent = Gauge(
            "greenroom_beat_last_sent_timestamp_seconds",
            "When a tick of the schedule was last sent (before the first: when beat took it up).",
            ["schedule"],
            registry=self.registry,
        )
        self.next_tick = Gauge(
            "greenroom_beat_next_tick_timestamp_seconds",
            "Scheduled time of the schedule's next tick to send (the oldest one not sent).",
            ["schedule"],
            registry=self.registry,
        )
        self.interval = Gauge(
            "greenroom_beat_schedule_interval_seconds",
            "Seconds between the schedule's next two ticks.",
            ["schedule"],
            registry=self.registry,
        )
        self.heartbeat_completed = Gauge(
            "greenroom_beat_heartbeat_completed_timestamp_seconds",
            "Scheduled time of the latest heartbeat tick a worker completed (before the first: "
            "when this process began to lead).",
            registry=self.registry,
        )
        self.leader = Gauge(
            "greenroom_beat_leader",
            "1 while this beat process holds the lease, else 0.",
            registry=self.registry,
        )
        self.registry.register(BuildInfoCollector(version))

    def stopped_leading(self) -> None:
        """Drop the leader's gauges: another process reports them now."""
        for gauge in (self.last_sent, self.next_tick, self.interval):
            gauge.clear()
        self.heartbeat_completed.set(0)


#: How long the beat loop may go without a turn before ``/healthz`` fails, in seconds.
STALL_SECONDS = 30.0


class BeatHealth:
    """Liveness and readiness of a beat process.

    Live while its loop turns (a turn at least every :data:`STALL_SECONDS`); ready
    while it reaches Redis (its last lease call succeeded), leading or not, and not
    shutting down.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, stall_seconds: float = STALL_SECONDS):
        self._clock = clock
        self._stall_seconds = stall_seconds
        self._last_turn = clock()
        self._redis_problem: str | None = "not connected to Redis yet"
        self.stopping = threading.Event()

    def turned(self) -> None:
        """The loop made a turn."""
        self._last_turn = self._clock()

    def reached_redis(self, problem: str | None) -> None:
        """The last lease call succeeded (``problem`` None) or failed (why)."""
        self._redis_problem = problem

    def liveness(self) -> tuple[bool, str]:
        idle = self._clock() - self._last_turn
        if idle > self._stall_seconds:
            return False, f"the beat loop has not turned for {idle:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "shutting down"
        if self._redis_problem is not None:
            return False, self._redis_problem
        return True, "ok"
