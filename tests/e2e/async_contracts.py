"""Contracts of the async test tasks (tests/e2e/test_async_actors.py), on queue ``default``.

Imported by the test process (to send them) and by :mod:`tests.e2e.async_worker`
(to implement them); no production process knows them.
"""

from __future__ import annotations

from pydantic import Field

from shared.tasks import TaskArguments, TaskContract


class SleepArguments(TaskArguments):
    seconds: float = Field(ge=0, le=60)


class RaiseArguments(TaskArguments):
    reason: str = Field(max_length=200)


class NestedArguments(TaskArguments):
    label: str = Field(max_length=50)


#: Awaits ``seconds``: over its 1 s time limit it is cancelled, retried once, then failed.
ASYNC_SLEEP = TaskContract(
    name="tests.async_sleep",
    queue="default",
    arguments=SleepArguments,
    max_retries=1,
    time_limit_seconds=1,
    description="Await asyncio.sleep(seconds), logging if it is cancelled.",
)
#: Raises after an await: retried twice, then dead-lettered.
ASYNC_RAISE = TaskContract(
    name="tests.async_raise",
    queue="default",
    arguments=RaiseArguments,
    max_retries=2,
    description="Raise AsyncFailure(reason) after an await.",
)
#: Opens a span of its own around awaits and logs a line inside it.
ASYNC_NESTED = TaskContract(
    name="tests.async_nested",
    queue="default",
    arguments=NestedArguments,
    description="Open the span 'nested <label>' in the coroutine and log in it; return label and message id.",
)
