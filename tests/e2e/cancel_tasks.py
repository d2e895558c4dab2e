"""Contracts of the tasks the cancellation tests run (queues ``cancels`` and ``cancels.late``).

The test process imports this module to send them; the worker loads
:mod:`tests.e2e.cancel_worker`, which implements them. Each task notes in Redis
(REDIS_URL) under :data:`NOTES` when it started and how it ended, so a test sees
across processes what ran, and when an interrupted task stopped.
"""

from __future__ import annotations

from pydantic import Field

from shared.tasks import TaskArguments, TaskContract

QUEUE = "cancels"
#: A queue only the worker a test starts after its cancel consumes (the restart test).
LATE_QUEUE = "cancels.late"
#: Prefix of the Redis keys the tasks write: ``<NOTES>:<run>:<what>``.
NOTES = "greenroom-test-cancels"


class RunArguments(TaskArguments):
    run: str = Field(min_length=1, max_length=64, description="the test run, a key prefix")
    item: int = Field(ge=0, le=10_000)
    seconds: float = Field(default=0.0, ge=0, le=60)


CANCELLABLE = TaskContract(
    name="cancels.cancellable",
    queue=QUEUE,
    arguments=RunArguments,
    description="Note the start, run `seconds` in short sleeps, note the end; a cancel interrupts it.",
    cancellable=True,
    time_limit_seconds=90,
)
STUBBORN = TaskContract(
    name="cancels.stubborn",
    queue=QUEUE,
    arguments=RunArguments,
    description="As cancels.cancellable, but a cancel lets it finish.",
    time_limit_seconds=90,
)
QUICK = TaskContract(
    name="cancels.quick",
    queue=QUEUE,
    arguments=RunArguments,
    description="Note that it ran; return `item`.",
)
LATE = TaskContract(
    name="cancels.late",
    queue=LATE_QUEUE,
    arguments=RunArguments,
    description="As cancels.quick, on its own queue.",
)
