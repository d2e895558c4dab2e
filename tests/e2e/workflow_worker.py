"""The worker module of the workflow tests: the production worker plus the ``workflows`` tasks.

Started as ``greenroom worker tests.e2e.workflow_worker --queues workflows``.
"""

from __future__ import annotations

import os

import redis

from tests.e2e.workflow_tasks import (
    ADD_ONE,
    FAIL,
    FIRE,
    FLAKY,
    NOTES,
    REPEAT,
    TOTAL,
    WAIT,
    TotalArguments,
    ValueArguments,
)
from workers import broker
from workers.actor import implements

__all__ = ["broker"]

_redis = redis.Redis.from_url(os.environ["REDIS_URL"])


def _note(run: str, what: str) -> None:
    _redis.rpush(f"{NOTES}:{run}:ran", what)


@implements(ADD_ONE)
def add_one(arguments: ValueArguments) -> int:
    _note(arguments.run, f"add_one {arguments.value}")
    return arguments.value + 1


@implements(FAIL)
def fail(arguments: ValueArguments) -> None:
    _note(arguments.run, f"fail {arguments.value}")
    raise ValueError(f"no good: {arguments.value}")


@implements(FLAKY)
def flaky(arguments: ValueArguments) -> int:
    _note(arguments.run, f"flaky {arguments.value}")
    if _redis.incr(f"{NOTES}:{arguments.run}:flaky") == 1:
        raise ConnectionError("the service is away")
    return arguments.value


@implements(TOTAL)
def total(arguments: TotalArguments) -> int:
    _note(arguments.run, f"total {arguments.values}")
    return sum(arguments.values)


@implements(WAIT)
def wait(arguments: ValueArguments) -> int:
    _note(arguments.run, f"wait {arguments.value}")
    _redis.blpop([f"{NOTES}:{arguments.run}:go"], timeout=10)
    return arguments.value


@implements(REPEAT)
def repeat(arguments: ValueArguments) -> str:
    _note(arguments.run, f"repeat {arguments.value}")
    return "x" * arguments.value


@implements(FIRE)
def fire(arguments: ValueArguments) -> None:
    _note(arguments.run, f"fire {arguments.value}")
