"""Report tasks on queue ``reports``: CPU-bound work (few threads per process) and a flaky upstream.

>>> BUILD_REPORT.validate({"report_id": "q3"})
{'report_id': 'q3', 'rows': 50000}
>>> SYNC_INVENTORY.validate({"source": "erp", "fail_first": 11})
Traceback (most recent call last):
  ...
shared.errors.InvalidTaskArguments: invalid arguments for task 'reports.sync_inventory': fail_first: ...
"""

from __future__ import annotations

from pydantic import Field

from shared.tasks import TaskArguments, TaskContract


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
    max_backoff_seconds=5,
    retry_on=(ConnectionError, TimeoutError),  # an upstream away, not a bug: only these retry
    max_age_seconds=3600,  # stock levels an hour old are not worth pulling: a newer sync follows
    description="Pull stock levels from a flaky upstream; transient errors retry with backoff.",
)
