"""Diagnostic tasks on queue ``default``: used by checks and tests.

>>> ECHO.validate({"payload": {"x": 1}})
{'payload': {'x': 1}, 'delay_ms': 0}
>>> ECHO_ASYNC.arguments is ECHO.arguments
True
>>> FAIL.max_retries
0
"""

from __future__ import annotations

from pydantic import Field, JsonValue

from shared.tasks import TaskArguments, TaskContract


class EchoArguments(TaskArguments):
    payload: JsonValue
    delay_ms: int = Field(default=0, ge=0, le=600_000, description="simulated work, in milliseconds")


class FailArguments(TaskArguments):
    reason: str = Field(default="diagnostic failure", max_length=500)


ECHO = TaskContract(
    name="echo",
    queue="default",
    arguments=EchoArguments,
    description="Return `payload` after `delay_ms` of simulated work (checks and tests).",
)
ECHO_ASYNC = TaskContract(
    name="echo_async",
    queue="default",
    arguments=EchoArguments,
    description="`echo` as an async actor: `delay_ms` awaited with asyncio.sleep (checks and tests).",
)
FAIL = TaskContract(
    name="fail",
    queue="default",
    arguments=FailArguments,
    max_retries=0,
    description="Always raise (exercises dead-lettering, failure metrics and alerts).",
)
