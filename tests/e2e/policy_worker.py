"""The worker module of the per-task policy tests: the production worker plus the ``policies`` tasks.

Started as ``greenroom worker tests.e2e.policy_worker --queues policies``.
"""

from __future__ import annotations

import os
import time

import redis

from tests.e2e.policy_tasks import (
    BRIEF,
    FLAKY,
    FRESH,
    LIMITED,
    NOTES,
    RATED,
    SLOW,
    FlakyArguments,
    RunArguments,
)
from workers import broker
from workers.actor import implements

__all__ = ["broker"]

_redis = redis.Redis.from_url(os.environ["REDIS_URL"])


@implements(LIMITED)
def limited(arguments: RunArguments) -> None:
    key = f"{NOTES}:{arguments.run}"
    running = _redis.incr(f"{key}:running")
    _redis.rpush(f"{key}:levels", running)
    try:
        time.sleep(arguments.seconds)
    finally:
        _redis.decr(f"{key}:running")
    _redis.rpush(f"{key}:done", arguments.item)


@implements(RATED)
def rated(arguments: RunArguments) -> None:
    _redis.rpush(f"{NOTES}:{arguments.run}:starts", f"{arguments.item} {time.time():.6f}")


@implements(FLAKY)
def flaky(arguments: FlakyArguments) -> None:
    _redis.incr(f"{NOTES}:{arguments.run}:{arguments.error}")
    if arguments.error == "connection":
        raise ConnectionError("the service is away")
    raise ValueError("a bug: retrying will not help")


@implements(SLOW)
def slow(arguments: RunArguments) -> None:
    # Short sleeps: Dramatiq's time limit interrupts Python code, not one long C call.
    deadline = time.monotonic() + arguments.seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


@implements(FRESH)
def fresh(arguments: RunArguments) -> int:
    return arguments.item


@implements(BRIEF)
def brief_result(arguments: RunArguments) -> int:
    return arguments.item
