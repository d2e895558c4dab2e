"""Contracts of the tasks the workflow tests run (queue ``workflows``; ``workflows-idle`` is
consumed by no worker, so what reaches it stays countable).

The test process imports this module to send them; the worker loads
:mod:`tests.e2e.workflow_worker`, which implements them. Each task notes that it ran
in Redis (REDIS_URL) under :data:`NOTES`, so a test sees across processes what ran.
"""

from __future__ import annotations

from pydantic import Field

from shared.tasks import TaskArguments, TaskContract

QUEUE = "workflows"
IDLE_QUEUE = "workflows-idle"
#: Prefix of the Redis keys the tasks write: ``<NOTES>:<run>:<what>``.
NOTES = "greenroom-test-workflows"


class ValueArguments(TaskArguments):
    run: str = Field(min_length=1, max_length=64, description="the test run, a key prefix")
    value: int = Field(ge=-1_000_000, le=1_000_000)


class TotalArguments(TaskArguments):
    run: str = Field(min_length=1, max_length=64)
    values: list[int] = Field(max_length=100)


ADD_ONE = TaskContract(
    name="workflows.add_one",
    queue=QUEUE,
    arguments=ValueArguments,
    description="Note the value, return it plus one.",
    max_retries=0,
)
FAIL = TaskContract(
    name="workflows.fail",
    queue=QUEUE,
    arguments=ValueArguments,
    description="Note the value, raise ValueError (not retried).",
    max_retries=0,
)
FLAKY = TaskContract(
    name="workflows.flaky",
    queue=QUEUE,
    arguments=ValueArguments,
    description="Raise ConnectionError the first time (retried), then return the value.",
    retry_on=(ConnectionError,),
    max_retries=2,
    min_backoff_seconds=0.1,
    max_backoff_seconds=0.2,
)
TOTAL = TaskContract(
    name="workflows.total",
    queue=QUEUE,
    arguments=TotalArguments,
    description="Note the values, return their sum.",
    max_retries=0,
)
WAIT = TaskContract(
    name="workflows.wait",
    queue=QUEUE,
    arguments=ValueArguments,
    description="Note that it started, wait (up to 10 s) for the test's go, return the value.",
    max_retries=0,
)
REPEAT = TaskContract(
    name="workflows.repeat",
    queue=QUEUE,
    arguments=ValueArguments,
    description="Note the value, return a string of that many x.",
    max_retries=0,
)
FIRE = TaskContract(
    name="workflows.fire",
    queue=QUEUE,
    arguments=ValueArguments,
    description="Note the value; stores no result.",
    store_results=False,
)
IDLE = TaskContract(
    name="workflows.idle",
    queue=IDLE_QUEUE,
    arguments=ValueArguments,
    description="Never run: its queue has no worker.",
)
