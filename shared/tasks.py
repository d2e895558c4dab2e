"""Task contracts: what producers may send and what workers accept.

A contract names a task, the queue it travels on, a pydantic model for its
keyword arguments and its options. Producers validate against it before
publishing; workers validate again before running (a message may come from
anywhere). Nothing here imports worker code.

>>> get_task("echo").validate({"payload": {"x": 1}})
{'payload': {'x': 1}, 'delay_ms': 0}
>>> get_task("echo").validate({"delay_ms": -1})
Traceback (most recent call last):
  ...
shared.errors.InvalidTaskArguments: invalid arguments for task 'echo': payload: Field required; ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from shared.errors import InvalidTaskArguments, UnknownTask


class TaskArguments(BaseModel):
    """Base for argument models: unknown keywords are an error, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class TaskContract:
    """A task as both sides know it. ``None`` options fall back to the TASK_* settings."""

    name: str
    queue: str
    arguments: type[TaskArguments]
    description: str
    max_retries: int | None = None
    time_limit_seconds: float | None = None
    min_backoff_seconds: float | None = None
    store_results: bool = True

    def validate(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``kwargs`` against the contract; return them as JSON-ready values."""
        return self.parse(kwargs).model_dump(mode="json")

    def parse(self, kwargs: Mapping[str, Any]) -> TaskArguments:
        """Check ``kwargs`` against the contract; return the argument model."""
        try:
            return self.arguments.model_validate(dict(kwargs))
        except ValidationError as error:
            raise InvalidTaskArguments(self.name, _summarise(error)) from None


def _summarise(error: ValidationError) -> str:
    # Input values are left out on purpose: they may be large or secret.
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
        for e in error.errors(include_url=False, include_input=False)
    )


# Diagnostic tasks (queue "default") ----------------------------------------------


class EchoArguments(TaskArguments):
    payload: JsonValue
    delay_ms: int = Field(default=0, ge=0, le=600_000, description="simulated work, in milliseconds")


class FailArguments(TaskArguments):
    reason: str = Field(default="diagnostic failure", max_length=500)


ECHO = TaskContract(
    name="echo",
    queue="default",
    arguments=EchoArguments,
    description="Return `payload` after `delay_ms` of simulated work (checks, tests, benchmarks).",
)


class BenchEchoArguments(TaskArguments):
    payload: JsonValue
    sent_at: float = Field(default=0.0, ge=0, description="epoch seconds the producer sent it (queue wait)")


BENCH_ECHO = TaskContract(
    name="bench.echo",
    queue="greenroom-bench",
    arguments=BenchEchoArguments,
    max_retries=0,
    store_results=False,
    description="`greenroom bench`'s task: the same work as its bare-Dramatiq twin.",
)
FAIL = TaskContract(
    name="fail",
    queue="default",
    arguments=FailArguments,
    max_retries=0,
    description="Always raise (exercises dead-lettering, failure metrics and alerts).",
)


# Report tasks (queue "reports": CPU-heavy, fewer threads) ----------------------------


class BuildReportArguments(TaskArguments):
    report_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    rows: int = Field(default=50_000, ge=1, le=5_000_000)


class SyncInventoryArguments(TaskArguments):
    source: str = Field(min_length=1, max_length=200)
    fail_first: int = Field(default=0, ge=0, le=10, description="simulated upstream failures before success")


BUILD_REPORT = TaskContract(
    name="reports.build",
    queue="reports",
    arguments=BuildReportArguments,
    time_limit_seconds=120,
    description="Aggregate `rows` generated sales rows into a summary (CPU-bound).",
)
SYNC_INVENTORY = TaskContract(
    name="reports.sync_inventory",
    queue="reports",
    arguments=SyncInventoryArguments,
    max_retries=5,
    min_backoff_seconds=0.2,
    description="Pull stock levels from a flaky upstream; transient errors retry with backoff.",
)

TASKS: dict[str, TaskContract] = {
    contract.name: contract for contract in (ECHO, FAIL, BUILD_REPORT, SYNC_INVENTORY, BENCH_ECHO)
}


def get_task(name: str) -> TaskContract:
    """The contract called ``name``, or UnknownTask."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTask(name, list(TASKS)) from None
