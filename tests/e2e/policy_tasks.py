"""Contracts of the tasks the per-task policy tests run (queue ``policies``).

The test process imports this module to send them; the worker loads
:mod:`tests.e2e.policy_worker`, which implements them. Each task notes what it
did in Redis (REDIS_URL) under :data:`NOTES`, so a test sees across processes
what ran, when and how many at once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.tasks import RateLimit, TaskArguments, TaskContract

QUEUE = "policies"
#: Prefix of the Redis keys the tasks write: ``<NOTES>:<run>:<what>``.
NOTES = "greenroom-test-policies"

CONCURRENCY_LIMIT = 2
RATE_LIMIT = RateLimit(4, per_seconds=2.0)


class RunArguments(TaskArguments):
    run: str = Field(min_length=1, max_length=64, description="the test run, a key prefix")
    item: int = Field(ge=0, le=10_000)
    seconds: float = Field(default=0.0, ge=0, le=30)


class FlakyArguments(TaskArguments):
    run: str = Field(min_length=1, max_length=64)
    error: Literal["connection", "value"]


LIMITED = TaskContract(
    name="policies.limited",
    queue=QUEUE,
    arguments=RunArguments,
    description="Note how many run at once, sleep `seconds`.",
    concurrency_limit=CONCURRENCY_LIMIT,
    time_limit_seconds=20,
    store_results=False,
)
RATED = TaskContract(
    name="policies.rated",
    queue=QUEUE,
    arguments=RunArguments,
    description="Note when it started.",
    rate_limit=RATE_LIMIT,
    store_results=False,
)
FLAKY = TaskContract(
    name="policies.flaky",
    queue=QUEUE,
    arguments=FlakyArguments,
    description="Raise ConnectionError (retried) or ValueError (not).",
    retry_on=(ConnectionError,),
    max_retries=2,
    min_backoff_seconds=0.1,
    max_backoff_seconds=0.2,
    store_results=False,
)
SLOW = TaskContract(
    name="policies.slow",
    queue=QUEUE,
    arguments=RunArguments,
    description="Sleep `seconds`, past its 1 s time limit.",
    time_limit_seconds=1,
    max_retries=0,
    store_results=False,
)
FRESH = TaskContract(
    name="policies.fresh",
    queue=QUEUE,
    arguments=RunArguments,
    description="Return `item`, unless the message is older than 1 s.",
    max_age_seconds=1,
)
BRIEF = TaskContract(
    name="policies.brief_result",
    queue=QUEUE,
    arguments=RunArguments,
    description="Return `item`; its result is kept 5 s.",
    result_ttl_seconds=5,
)
