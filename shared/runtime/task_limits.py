"""Concurrency and rate limits of a task, held across every worker process of the platform.

A contract's ``concurrency_limit`` (at most N running at once) and ``rate_limit``
(at most N started per period) are kept in Redis at REDIS_URL with Dramatiq's
rate limiters and their RedisBackend; a worker whose tasks have no limits never
builds the backend, so never imports redis-py for it.

:class:`TaskLimits`, a worker middleware (:func:`shared.broker.middleware_stack`
puts it right after AgeLimit, so a message too old to run takes no slot, and
before TimeLimit), takes a slot before the task runs. When the limit is reached
the message is not run and not failed: a copy goes back on its queue with a
delay (``broker.enqueue(copy, delay=...)``, the broker-side delay ladder), its
``retries`` untouched and its ``greenroom_throttles`` one higher, and the
message is skipped (acknowledged). The task line and ``greenroom_tasks_total``
say ``throttled``. If the copy cannot be published the message is dead-lettered
instead (never lost, never run over its limit).

Concurrency: N ConcurrentRateLimiter slots of one each (a distributed mutex per
slot), taken at the start and freed once the message is processed or skipped.
Each slot's key expires ``SLOT_TTL`` after it was taken (the task's time limit
plus RESULT_STORE_RETRY_SECONDS plus a minute) and only its holder refreshes it,
so a slot a SIGKILLed worker held frees itself. Rate: a WindowRateLimiter (it counts
starts per second of the clock, so any ``per_seconds`` whole seconds hold at most N)
for whole periods up to :data:`MAX_WINDOW_SECONDS`, else a BucketRateLimiter (fixed
periods); with either, a stretch across their boundaries may hold up to 2N starts.

The delay before a throttled message runs again (:func:`throttle_delay`), with
``k`` the times it was throttled before:

- concurrency limit: ``min(0.1 s * 2**k, 5 s)``, times a random factor in
  [0.5, 1.5): slots free as tasks end, which cannot be foreseen, so a short
  backoff; the jitter keeps the messages waiting for a slot from coming back together;
- rate limit: the time until the limiter's current period (one second for a
  window) ends, plus a random part of up to ``per_seconds * min(2**k, 8)``: about
  when the limit has room again, the messages over it spread over the next periods.

Redis unreachable: the message is throttled too (its limit cannot be checked),
with one WARNING line per message.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.rate_limits import BucketRateLimiter, ConcurrentRateLimiter, RateLimiter, WindowRateLimiter

from observability.task_logging import THROTTLED_OPTION
from shared.settings import Settings
from shared.task_policies import effective_policy
from shared.tasks import TASKS, RateLimit, TaskContract

if TYPE_CHECKING:
    from dramatiq.rate_limits import RateLimiterBackend

logger = logging.getLogger("greenroom.limits")

#: Prefix of the limiters' Redis keys: ``greenroom-limits:<kind>:<task>[:<slot>]``.
KEY_PREFIX = "greenroom-limits"
#: The message option counting how many times a limit put the message back.
THROTTLES_OPTION = "greenroom_throttles"
#: Rate limits with a whole period up to this many seconds use a sliding window
#: (one Redis key per second of the window is read at every start); others a fixed bucket.
MAX_WINDOW_SECONDS = 60
#: A concurrency slot outlives the task's time limit and result storage by this margin.
SLOT_TTL_MARGIN_SECONDS = 60.0
#: Concurrency-limit backoff: first delay, growth per throttle, longest delay (seconds).
CONCURRENCY_FIRST_DELAY = 0.1
CONCURRENCY_MAX_DELAY = 5.0
#: Rate-limit spread: up to this many periods after the limit has room again.
RATE_MAX_SPREAD_PERIODS = 8
#: Socket timeout of the limiters' Redis connection (a hung Redis must not hang a worker thread).
REDIS_SOCKET_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    """The limiters of one task: its concurrency slots and its rate limiter (either may be absent)."""

    slots: tuple[ConcurrentRateLimiter, ...]
    rate: RateLimiter | None
    rate_limit: RateLimit | None


class Throttle(Exception):
    """The task is over one of its limits: ``reason`` names which."""

    def __init__(self, reason: str, limit: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit


class TaskLimits(Middleware):
    """Holds each task to its contract's ``concurrency_limit`` and ``rate_limit`` (see the module)."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Callable[[], RateLimiterBackend] | None = None,
        contract_of: Callable[[str], TaskContract | None] = TASKS.get,
    ) -> None:
        self.settings = settings
        self._build_backend = backend or (lambda: redis_backend(settings))
        self._backend: RateLimiterBackend | None = None
        self._contract_of = contract_of
        self._limits: dict[str, Limits | None] = {}
        self._lock = threading.Lock()
        self._held = threading.local()  # the ExitStack of the slot this thread's task holds

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        held = contextlib.ExitStack()
        limits: Limits | None = None
        try:
            limits = self._limits_of(message.actor_name)
            if limits is None:
                return
            if limits.slots and not _take_a_slot(limits.slots, held):
                raise Throttle(f"concurrency_limit {len(limits.slots)} reached", "concurrency")
            if limits.rate is not None and limits.rate_limit is not None:
                with limits.rate.acquire(raise_on_failure=False) as started:
                    if not started:
                        rate = limits.rate_limit
                        raise Throttle(f"rate_limit {rate.count} per {rate.per_seconds:g} s reached", "rate")
        except Throttle as throttle:
            held.close()
            self._put_back(broker, message, throttle, limits.rate_limit if limits else None)
        except Exception as error:  # Redis unreachable or failing: the limit cannot be checked
            held.close()
            logger.warning(
                "Could not check the limits of task %s (%s); it waits as if throttled",
                message.actor_name,
                str(error) or type(error).__name__,
            )
            unavailable = Throttle("limits unavailable (Redis)", "concurrency")
            self._put_back(broker, message, unavailable, None)
        self._held.stack = held

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._release()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._release()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.close()

    def close(self) -> None:
        """Close the Redis connections of the limiters, if any were opened."""
        client = getattr(self._backend, "client", None)
        if client is not None:
            client.close()

    def _release(self) -> None:
        held: contextlib.ExitStack | None = getattr(self._held, "stack", None)
        if held is None:
            return
        self._held.stack = None
        try:
            held.close()
        except Exception as error:  # the slot's key expires on its own (SLOT_TTL)
            logger.warning("Could not free a concurrency slot (%s); it expires on its own", error)

    def _put_back(
        self, broker: dramatiq.Broker, message: MessageProxy, throttle: Throttle, rate_limit: RateLimit | None
    ) -> None:
        """Publish a delayed copy of ``message``, then skip it (or dead-letter it if publishing fails)."""
        throttles = int(message.options.get(THROTTLES_OPTION, 0))
        delay = throttle_delay(throttle.limit, throttles, rate_limit)
        copy = message.copy(options={THROTTLES_OPTION: throttles + 1})
        try:
            broker.enqueue(copy, delay=max(1, round(delay * 1000)))
        except Exception as error:
            message.fail()
            logger.error(
                "Could not put back throttled message %s (%s); it is dead-lettered instead "
                "(greenroom dlq replay brings it back)",
                message.message_id,
                str(error) or type(error).__name__,
            )
            raise SkipMessage("throttled, and the delayed copy could not be published") from None
        # The skipped message is acknowledged, never published again: notes for the task line
        # and the metrics, and no result stored for it (its copy stores the real one).
        message.options[THROTTLED_OPTION] = {
            "reason": throttle.reason,
            "retry_in_seconds": round(delay, 3),
            "throttles": throttles + 1,
        }
        message.options["store_results"] = False
        raise SkipMessage(throttle.reason)

    def _limits_of(self, actor_name: str) -> Limits | None:
        try:
            return self._limits[actor_name]
        except KeyError:
            pass
        with self._lock:
            if actor_name not in self._limits:
                contract = self._contract_of(actor_name)
                self._limits[actor_name] = self._build_limits(contract) if contract is not None else None
            return self._limits[actor_name]

    def _build_limits(self, contract: TaskContract) -> Limits | None:
        if contract.concurrency_limit is None and contract.rate_limit is None:
            return None
        if self._backend is None:
            self._backend = self._build_backend()
        backend = self._backend
        slots: tuple[ConcurrentRateLimiter, ...] = ()
        if contract.concurrency_limit is not None:
            ttl_ms = round(slot_ttl_seconds(contract, self.settings) * 1000)
            slots = tuple(
                ConcurrentRateLimiter(
                    backend, f"{KEY_PREFIX}:concurrency:{contract.name}:{slot}", limit=1, ttl=ttl_ms
                )
                for slot in range(contract.concurrency_limit)
            )
        rate: RateLimiter | None = None
        limit = contract.rate_limit
        if limit is not None:
            key = f"{KEY_PREFIX}:rate:{contract.name}"
            if limit.per_seconds == int(limit.per_seconds) and limit.per_seconds <= MAX_WINDOW_SECONDS:
                rate = WindowRateLimiter(backend, key, limit=limit.count, window=int(limit.per_seconds))
            else:
                rate = BucketRateLimiter(
                    backend, key, limit=limit.count, bucket=max(1, round(limit.per_seconds * 1000))
                )
        return Limits(slots=slots, rate=rate, rate_limit=limit)


def _take_a_slot(slots: tuple[ConcurrentRateLimiter, ...], held: contextlib.ExitStack) -> bool:
    """Take one free slot into ``held`` (tried from a random one on); False when all are taken."""
    start = random.randrange(len(slots))  # noqa: S311 (spreading load, not secrecy)
    for index in range(len(slots)):
        slot = slots[(start + index) % len(slots)]
        attempt = contextlib.ExitStack()
        if attempt.enter_context(slot.acquire(raise_on_failure=False)):
            held.push(attempt.pop_all())
            return True
        attempt.close()
    return False


def slot_ttl_seconds(contract: TaskContract, settings: Settings) -> float:
    """How long a concurrency slot lives unless freed: longer than the task can hold it.

    >>> from shared.settings import load_settings
    >>> from shared.contracts.diagnostics import ECHO
    >>> slot_ttl_seconds(ECHO, load_settings(_env_file=None))  # 300 s limit + 30 s result retry + 60 s
    390.0
    """
    time_limit: float = effective_policy(contract, settings)["time_limit_seconds"].value
    return time_limit + settings.RESULT_STORE_RETRY_SECONDS + SLOT_TTL_MARGIN_SECONDS


def throttle_delay(
    limit: str,
    throttles: int,
    rate_limit: RateLimit | None,
    *,
    now: float | None = None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds before a throttled message runs again (see the module for the choice).

    >>> throttle_delay("concurrency", 0, None, uniform=lambda low, high: low)
    0.05
    >>> throttle_delay("concurrency", 10, None, uniform=lambda low, high: high)
    7.5
    >>> throttle_delay("rate", 0, RateLimit(5, 1.0), now=100.25, uniform=lambda low, high: low)
    0.75
    """
    growth = 2.0 ** min(throttles, 30)
    if limit != "rate" or rate_limit is None:
        return min(CONCURRENCY_FIRST_DELAY * growth, CONCURRENCY_MAX_DELAY) * uniform(0.5, 1.5)
    now = time.time() if now is None else now
    period = rate_limit.per_seconds
    if period == int(period) and period <= MAX_WINDOW_SECONDS:
        period = 1.0  # a sliding window moves on each whole second
    room_in = period - math.fmod(now, period)
    return room_in + uniform(0.0, rate_limit.per_seconds * min(growth, RATE_MAX_SPREAD_PERIODS))


def redis_backend(settings: Settings) -> RateLimiterBackend:
    """Dramatiq's RedisBackend on REDIS_URL (imports redis-py: only for a task with limits)."""
    import redis
    from dramatiq.rate_limits.backends import RedisBackend

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS)
    backend: RateLimiterBackend = RedisBackend(client=client)
    return backend
