"""The beat loop: while this process leads, send every tick of every schedule once.

Any number of ``greenroom beat`` processes run this loop; the one holding the
lease (:mod:`shared.runtime.beat_lease`, renewed from a thread of its own) sends,
the others wait to take over. For each schedule the leader sends, in order,
the ticks after its cursor that are due (:mod:`shared.runtime.beat_ledger`
claims each one before it is published, so a tick goes out once even while two
processes believe they lead):

- a tick older than BEAT_CATCHUP_SECONDS is not sent: it is counted as missed
  (one WARNING line per schedule and catch-up) and the cursor moves past it;
- a tick whose publish fails (RabbitMQ unreachable, or silent, for a quarter of a
  lease) is counted as failed and tried again after a backoff (1 s, doubling up to
  30 s), and the schedule's later ticks wait behind it, until it is sent or falls
  out of the catch-up window; the turn stops at the first failed publish (the other
  schedules use the same RabbitMQ);
- a schedule whose state Redis refuses (a damaged key) is started again from now,
  with a warning, without holding the others up;
- a sent tick is one INFO line (``tick sent``) with the schedule, its scheduled
  time and the message id, which is derived from the tick
  (:func:`shared.schedules.tick_message_id`).

The leader also reads the results of the ``heartbeat`` ticks it sent: the latest
one a worker completed is ``greenroom_beat_heartbeat_completed_timestamp_seconds``
(kept in Redis, so the next leader starts from it).

A loop that makes no progress for a whole lease (a publish stuck on a RabbitMQ
connection that went silent) stops renewing the lease, so another process takes
over; a second SIGTERM stops the process at once (:mod:`shared.runtime.beat_service`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.results import ResultMissing

from observability.beat_metrics import BeatHealth, BeatMetrics
from observability.messaging_spans import SCHEDULE_OPTION
from observability.periodic import Periodic
from shared.errors import InvalidSchedule, PublishError, excerpt
from shared.producer import Producer
from shared.runtime.beat_lease import Lease
from shared.runtime.beat_ledger import MAX_SCHEDULES_CHARS, NotLeader, TickLedger
from shared.schedules import (
    HEARTBEAT,
    Schedule,
    interval_seconds,
    iso_utc,
    tick_message,
    ticks_after,
    ticks_in,
)
from shared.service_refusals import outage_line
from shared.settings import Settings

logger = logging.getLogger("greenroom.beat")

#: Longest sleep of the loop (and a quarter of a lease at most): it looks at its lease and the
#: clock at least this often, and turns well within the lease the watchdog allows it.
MAX_WAIT_SECONDS = 1.0
#: Heartbeat ticks whose result the leader still looks for, at most.
PENDING_HEARTBEATS = 32
#: The most missed ticks counted one by one for a cron schedule (more are reported as "more than").
MAX_COUNTED_TICKS = 100_000
#: How long a tick another process claimed and left stays its own before this one takes it over,
#: at least: time for that process, if it still runs, to record a send it made (seconds). With a
#: longer lease it is half a lease more (a publish gives up within half a lease).
TAKEOVER_GRACE_SECONDS = 2 * MAX_WAIT_SECONDS + 1.0
#: How often a follower compares its schedules with the leader's, in seconds.
COMPARE_SECONDS = 10.0
#: Redis errors that mean it takes no writes at all (an outage), not that one schedule's state is
#: damaged (redis-py's stubs lack OutOfMemoryError).
REDIS_UNWRITABLE: tuple[type[redis.RedisError], ...] = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.NoPermissionError,
    getattr(redis.exceptions, "OutOfMemoryError", redis.exceptions.ReadOnlyError),
)
#: Waits before a schedule whose tick failed to publish tries again: doubling, at most the last.
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 1.0, 30.0


def schedule_set(schedules: Sequence[Schedule]) -> str:
    """What a beat process sends, in a line two processes can compare (arguments as a digest,
    never their values): ``heartbeat=echo every 60s args:44136fa3; ...``."""
    entries = "; ".join(
        f"{s.name}={s.task} {s.when} args:{_digest(s.kwargs)}"
        for s in sorted(schedules, key=lambda s: s.name)
    )
    return entries[:MAX_SCHEDULES_CHARS]


def _digest(kwargs: Mapping[str, Any]) -> str:
    text = json.dumps(dict(kwargs), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def count_of(count: int, noun: str) -> str:
    """``"1 schedule"``, ``"3 schedules"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def publish_budget_seconds(lease_seconds: float) -> float:
    """How long one publish of a tick may take, retries and confirms included: a quarter of a
    lease each (a leader cut off from RabbitMQ gives up well before its lease ends)."""
    return lease_seconds / 4


def takeover_grace_seconds(lease_seconds: float) -> float:
    """TAKEOVER_GRACE_SECONDS, or longer than a publish may take (two budgets and a second)."""
    return max(TAKEOVER_GRACE_SECONDS, 2 * publish_budget_seconds(lease_seconds) + 1.0)


class Beat:
    """The loop of one beat process. ``clock`` gives the wall time in seconds (ticks are
    wall-clock times, the same on every host whose clock is synchronised)."""

    def __init__(
        self,
        *,
        settings: Settings,
        schedules: Sequence[Schedule],
        producer: Producer,
        lease: Lease,
        ledger: TickLedger,
        metrics: BeatMetrics,
        health: BeatHealth,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.schedules = list(schedules)
        self.producer = producer
        self.lease = lease
        self.ledger = ledger
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.monotonic = monotonic
        self.catchup_ms = settings.BEAT_CATCHUP_SECONDS * 1000
        self.takeover_grace = takeover_grace_seconds(settings.BEAT_LEASE_SECONDS)
        self.confirm_timeout = publish_budget_seconds(settings.BEAT_LEASE_SECONDS)
        self.max_wait = min(MAX_WAIT_SECONDS, settings.BEAT_LEASE_SECONDS / 4)
        self._cursors: dict[str, int] | None = None  # while leading: each schedule's cursor
        self._to_start: set[str] = set()  # schedules whose state is read (or reset) again
        self._retry_at: dict[str, tuple[int, float]] = {}  # schedule -> (wall ms, last wait) after a failure
        # Ticks sent and not yet recorded in Redis: (schedule, tick) -> sent at (epoch ms).
        self._unsettled: dict[tuple[str, int], int] = {}
        self._heartbeats: collections.deque[dramatiq.Message[Any]] = collections.deque(
            maxlen=PENDING_HEARTBEATS
        )
        self._left_claims: dict[tuple[str, int, str], float] = {}  # (schedule, tick, holder) -> first seen
        self._wake = threading.Event()
        self._keeper = Periodic(
            self._refresh_lease,
            interval=min(0.5, settings.BEAT_LEASE_SECONDS / 4),
            name="greenroom-beat-lease",
        )
        self.schedule_set = schedule_set(self.schedules)
        self._compared_at = -math.inf  # when a follower last compared its schedules with the leader's
        self._differs_from: str | None = None  # the leader's schedule set this one was said to differ from
        self._redis_failing = False
        self._progress_at = monotonic()  # the loop's last turn or sent tick
        self._stuck = False

    def run(self, stop: threading.Event) -> None:
        """Lead or wait until ``stop`` is set; then hand the lease over at once."""
        self._refresh_lease()
        self._keeper.start()
        try:
            while not stop.is_set():
                self._progressed()
                wait = self._turn(stop)
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            self._keeper.stop()
            self._step_down("shutting down")
            self._release()

    def wake(self) -> None:
        """End the loop's current wait (a stop was asked for)."""
        self._wake.set()

    def release_now(self) -> None:
        """Give the lease up from a signal handler, whatever the loop is doing (best effort)."""
        self._release()

    def _progressed(self) -> None:
        self._progress_at = self.monotonic()
        self.health.turned()

    # The lease (its own thread) ----------------------------------------------------

    def _refresh_lease(self) -> None:
        leading_before = self.lease.held()
        if self._loop_stuck():
            return  # the lease lapses: another process takes over
        try:
            leads = self.lease.refresh()
        except redis.RedisError as error:
            leads = self.lease.held()
            self.health.reached_redis(f"Redis: {outage_line(error)}")
            if not self._redis_failing:
                logger.warning(
                    "Beat cannot reach Redis (%s); it leads no longer than its lease.", outage_line(error)
                )
            self._redis_failing = True
        else:
            self.health.reached_redis(None)
            if self._redis_failing:
                logger.info("Beat reaches Redis again.")
            self._redis_failing = False
        self.metrics.leader.set(1 if leads else 0)
        if leads != leading_before:
            self._wake.set()

    def _loop_stuck(self) -> bool:
        """Whether the loop has made no progress for a whole lease (said once per stall)."""
        idle = self.monotonic() - self._progress_at
        stuck = idle > self.settings.BEAT_LEASE_SECONDS
        if stuck and not self._stuck:
            logger.error(
                "The beat loop has made no progress for %.0fs (a publish stuck on RabbitMQ?): it "
                "neither renews nor takes the lease until it does, so that another beat process leads",
                idle,
            )  # fmt: skip
            self.metrics.leader.set(0)
        self._stuck = stuck
        return stuck

    def _release(self) -> None:
        try:
            self.lease.release()
        except redis.RedisError as error:
            logger.warning("Could not release the lease (%s); it expires by itself.", outage_line(error))
        self.metrics.leader.set(0)

    # The loop ---------------------------------------------------------------------

    def _turn(self, stop: threading.Event) -> float:
        """One pass over the schedules; how long to wait before the next one."""
        try:
            self._settle_unsettled()  # leading or not: RabbitMQ has these ticks
            if not self.lease.held():
                self._step_down("lost its lease")
                self._compare_schedules()
                return self.max_wait
            cursors = self._cursors if self._cursors is not None else self._take_up()
            for schedule in self.schedules:
                if stop.is_set() or not self.lease.held():
                    break
                if not self._send_due_isolated(schedule, cursors):
                    break  # a publish failed: RabbitMQ is the same for the others
        except NotLeader:
            self._step_down("another process leads")
            return self.max_wait
        except redis.RedisError as error:
            logger.warning("Beat could not use Redis (%s); trying again.", outage_line(error))
            return self.max_wait
        return self._until_next_tick()

    def _send_due_isolated(self, schedule: Schedule, cursors: dict[str, int]) -> bool:
        """Send the schedule's due ticks; a state Redis refuses for this schedule is read again
        next turn (reset if damaged). False if a publish failed."""
        try:
            if schedule.name in self._to_start:
                cursors[schedule.name] = self._start(schedule, self._now_ms())
                self._to_start.discard(schedule.name)
            cursor, published = self._send_due(schedule, cursors[schedule.name])
            cursors[schedule.name] = cursor
            self._progressed()  # a long catch-up count is progress too (the lease is not let go)
            return published
        except REDIS_UNWRITABLE:
            raise  # Redis cannot write at all: an outage, not this schedule's state
        except redis.ResponseError as error:
            if schedule.name not in self._to_start and not str(error).startswith("DAMAGED"):
                logger.warning(
                    "Redis refused a command for schedule %s (%s); reading its state again",
                    schedule.name, error, extra={"schedule": schedule.name},
                )  # fmt: skip
            self._to_start.add(schedule.name)
            return True

    def _compare_schedules(self) -> None:
        """As a follower, every COMPARE_SECONDS: warn once if the leader sends other schedules."""
        now = self.monotonic()
        if now - self._compared_at < COMPARE_SECONDS:
            return
        self._compared_at = now
        leaders = self.ledger.leaders_schedules()
        if leaders is None or leaders == self.schedule_set or leaders == self._differs_from:
            return
        self._differs_from = leaders
        logger.warning(
            "The leading beat process sends other schedules than this one would (leader: %s; this "
            "process: %s): run the same code and BEAT_HEARTBEAT_SECONDS on every beat",
            excerpt(leaders, 400), excerpt(self.schedule_set, 400),
        )  # fmt: skip

    def _take_up(self) -> dict[str, int]:
        """Begin to lead: read (or start) every schedule's cursor."""
        now_ms = self._now_ms()
        cursors = {schedule.name: self._start(schedule, now_ms) for schedule in self.schedules}
        self._to_start.clear()
        self.ledger.publish_schedules(self.schedule_set)
        completed = self.ledger.heartbeat_completed()
        self.metrics.heartbeat_completed.set((completed if completed is not None else now_ms) / 1000)
        self._cursors = cursors
        logger.info(
            "Beat leads (%s)", count_of(len(self.schedules), "schedule"), extra={"holder": self.lease.holder}
        )
        return cursors

    def _start(self, schedule: Schedule, now_ms: int) -> int:
        state = self.ledger.start(schedule.name, now_ms)
        if state.reset:
            logger.warning(
                "The state of schedule %s in Redis was damaged; it starts again from now",
                schedule.name, extra={"schedule": schedule.name},
            )  # fmt: skip
        self.metrics.last_sent.labels(schedule=schedule.name).set(state.sent_at_ms / 1000)
        self.metrics.interval.labels(schedule=schedule.name).set(interval_seconds(schedule, now_ms))
        return state.cursor_ms

    def _step_down(self, why: str) -> None:
        if self._cursors is None:
            return
        self._cursors = None
        self._retry_at.clear()
        self._left_claims.clear()
        self.metrics.stopped_leading()
        logger.info("Beat no longer leads (%s)", why, extra={"holder": self.lease.holder})

    def _send_due(self, schedule: Schedule, cursor: int) -> tuple[int, bool]:
        """Send the schedule's due ticks after ``cursor`` in order; the new cursor, and False
        if a publish failed."""
        now_ms = self._now_ms()
        cursor = self._skip_missed(schedule, cursor, now_ms - self.catchup_ms)
        published = True
        retry = self._retry_at.get(schedule.name)
        if retry is None or now_ms >= retry[0]:
            for tick in ticks_after(schedule, cursor):
                if tick > now_ms or not self.lease.held():
                    break
                outcome = self._send_tick(schedule, tick)
                if outcome != "sent":
                    published = outcome != "failed"
                    break  # tried again later; later ticks wait behind it
                cursor = tick
        self.metrics.next_tick.labels(schedule=schedule.name).set(next(ticks_after(schedule, cursor)) / 1000)
        return cursor, published

    def _skip_missed(self, schedule: Schedule, cursor: int, oldest_ms: int) -> int:
        """Count the ticks after ``cursor`` scheduled before ``oldest_ms`` as missed; the new cursor."""
        missed, last = ticks_in(schedule, cursor, oldest_ms - 1, most=MAX_COUNTED_TICKS)
        if missed == 0:
            return cursor
        before = self.ledger.skip_to(schedule.name, last)
        if before is not None:  # this process moved the cursor: it counts them
            counted = (
                missed if before == cursor else ticks_in(schedule, before, last, most=MAX_COUNTED_TICKS)[0]
            )
            first = iso_utc(next(ticks_after(schedule, before)))
            capped = schedule.cron is not None and counted >= MAX_COUNTED_TICKS
            self.metrics.ticks.labels(schedule=schedule.name, outcome="missed").inc(counted)
            logger.warning(
                "%s%d ticks of schedule %s missed (%s to %s): older than BEAT_CATCHUP_SECONDS=%d",
                "more than " if capped else "", counted, schedule.name, first,
                iso_utc(last), self.settings.BEAT_CATCHUP_SECONDS,
                extra={"schedule": schedule.name, "missed": counted, "first_missed": first,
                       "last_missed": iso_utc(last)},
            )  # fmt: skip
        self._retry_at.pop(schedule.name, None)
        return last

    def _send_tick(self, schedule: Schedule, tick: int) -> str:
        """Claim, publish and record one tick: ``"sent"`` (or settled already), ``"failed"`` (its
        publish failed), ``"later"`` (wait for another process, or for Redis)."""
        if (schedule.name, tick) in self._unsettled:
            return "later"  # sent; recorded once Redis answers (never published twice from here)
        status, holder = self.ledger.claim(schedule.name, tick)
        if status != "held":
            self._left_claims = {
                key: seen for key, seen in self._left_claims.items() if key[:2] != (schedule.name, tick)
            }
        if status == "settled":
            return "sent"
        if status == "held" and holder is not None:
            if not self._may_take_over(schedule.name, tick, holder):
                return "later"
            logger.warning(
                "Tick %s of schedule %s was claimed by %s, which no longer leads, and not recorded as "
                "sent: sending it (twice, if that process had handed it to RabbitMQ before it stopped)",
                iso_utc(tick), schedule.name, holder, extra={"schedule": schedule.name},
            )  # fmt: skip
        try:
            message = tick_message(schedule, tick, self.settings)
        except InvalidSchedule as error:  # its contract changed under it: nothing will ever send it
            self._failed(schedule, tick, f"not sent: {error}")
            return "failed"
        self.producer.register_sent([message])
        if not self.lease.held():
            return "later"  # paused or cut off since the claim: the next leader sends it
        try:
            self.producer.publish_confirmed(
                [message], f"tick {message.message_id}", confirm_timeout=self.confirm_timeout
            )
        except PublishError as error:
            self._failed(schedule, tick, f"not confirmed by RabbitMQ, trying again: {error}")
            return "failed"
        self._sent(schedule, tick, message)
        return "sent"

    def _failed(self, schedule: Schedule, tick: int, why: str) -> None:
        """Count a failed tick and back the schedule off before it tries again."""
        _, last_wait = self._retry_at.get(schedule.name, (0, 0.0))
        wait = min(RETRY_MAX_SECONDS, max(RETRY_FIRST_SECONDS, 2 * last_wait))
        self._retry_at[schedule.name] = (self._now_ms() + round(wait * 1000), wait)
        self.metrics.ticks.labels(schedule=schedule.name, outcome="failed").inc()
        logger.warning(
            "Tick %s of schedule %s %s (next attempt in %gs)", iso_utc(tick), schedule.name, why, wait,
            extra={"schedule": schedule.name},
        )  # fmt: skip

    def _may_take_over(self, schedule: str, tick: int, holder: str) -> bool:
        """Take over a tick ``holder`` claimed, once it has left it for the takeover grace."""
        key = (schedule, tick, holder)
        first_seen = self._left_claims.setdefault(key, self.monotonic())
        if self.monotonic() - first_seen < self.takeover_grace:
            return False
        del self._left_claims[key]
        return self.ledger.take_over(schedule, tick, holder)

    def _sent(self, schedule: Schedule, tick: int, message: dramatiq.Message[Any]) -> None:
        sent_at = self._now_ms()
        self._unsettled[(schedule.name, tick)] = sent_at
        self._settle_unsettled()
        self._retry_at.pop(schedule.name, None)
        self._progressed()
        self.metrics.ticks.labels(schedule=schedule.name, outcome="sent").inc()
        self.metrics.lag.labels(schedule=schedule.name).observe(max(0, sent_at - tick) / 1000)
        self.metrics.last_sent.labels(schedule=schedule.name).set(sent_at / 1000)
        self.metrics.interval.labels(schedule=schedule.name).set(interval_seconds(schedule, sent_at))
        logger.info(
            "tick sent",
            extra={
                "schedule": schedule.name,
                "task": schedule.task,
                "scheduled_at": iso_utc(tick),
                "message_id": message.message_id,
                "lag_seconds": round((sent_at - tick) / 1000, 3),
            },
        )
        if schedule.name == HEARTBEAT:
            self._check_heartbeats()
            self._heartbeats.append(message)

    def _settle_unsettled(self) -> None:
        """Record the sent ticks in Redis (those sent while it could not be reached too)."""
        for (name, tick), sent_at in list(self._unsettled.items()):
            outcome = self.ledger.settle_sent(name, tick, sent_at)
            del self._unsettled[(name, tick)]
            if outcome != "sent":
                logger.warning(
                    "Tick %s of schedule %s was sent by another beat process too (%s): "
                    "a leader stopped while it sent it",
                    iso_utc(tick), name, outcome, extra={"schedule": name},
                )  # fmt: skip

    def _check_heartbeats(self) -> None:
        """Mark the latest heartbeat tick whose result a worker stored; forget it and older ones."""
        for index in range(len(self._heartbeats) - 1, -1, -1):
            message = self._heartbeats[index]
            try:
                self.producer.backend.get_result(message)
            except ResultMissing:
                continue
            except redis.RedisError:
                return
            except Exception:  # noqa: S110 - a stored failure or an unreadable value: it arrived
                pass
            at_ms = message.options[SCHEDULE_OPTION]["at"]
            self.metrics.heartbeat_completed.set(at_ms / 1000)
            self.ledger.record_heartbeat_completed(at_ms)
            for _ in range(index + 1):
                self._heartbeats.popleft()
            return

    def _until_next_tick(self) -> float:
        if self._cursors is None:
            return self.max_wait
        now_ms = self._now_ms()
        soonest = min((self._due(s, self._cursors[s.name]) for s in self.schedules), default=now_ms + 60_000)
        return max(0.0, min(self.max_wait, (soonest - now_ms) / 1000))

    def _due(self, schedule: Schedule, cursor: int) -> int:
        """When the schedule next has something to do: its next tick, or its retry after a failure."""
        retry_at, _ = self._retry_at.get(schedule.name, (0, 0.0))
        return max(next(ticks_after(schedule, cursor)), retry_at)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)
