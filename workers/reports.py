"""Report tasks on queue ``reports``: CPU-bound work and a flaky upstream.

Run this queue's process type with few threads per process (CPU-bound work
gains nothing from threads under the GIL) and scale it by processes.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from dramatiq.middleware import CurrentMessage

from shared.contracts.reports import (
    BUILD_REPORT,
    SYNC_INVENTORY,
    BuildReportArguments,
    SyncInventoryArguments,
)
from workers.actor import implements

REGIONS = ("north", "south", "east", "west")


class UpstreamUnavailable(ConnectionError):
    """A transient upstream error: retried with exponential backoff (the contract's ``retry_on``)."""


@implements(BUILD_REPORT)
def build_report(arguments: BuildReportArguments) -> dict[str, Any]:
    """Aggregate generated sales rows per region (deterministic per report_id)."""
    rng = random.Random(arguments.report_id)  # noqa: S311 - sample data, not security
    by_region: dict[str, list[float]] = {region: [] for region in REGIONS}
    for _ in range(arguments.rows):
        by_region[rng.choice(REGIONS)].append(round(rng.lognormvariate(3, 1), 2))
    return {
        "report_id": arguments.report_id,
        "rows": arguments.rows,
        "regions": {
            region: {
                "count": len(amounts),
                "total": round(sum(amounts), 2),
                "median": round(statistics.median(amounts), 2) if amounts else None,
            }
            for region, amounts in by_region.items()
        },
    }


@implements(SYNC_INVENTORY)
def sync_inventory(arguments: SyncInventoryArguments) -> dict[str, Any]:
    """Fail the first ``fail_first`` attempts (a flaky upstream), then succeed."""
    message = CurrentMessage.get_current_message()
    attempt = int(message.options.get("retries", 0)) if message else 0
    if attempt < arguments.fail_first:
        raise UpstreamUnavailable(f"{arguments.source} unavailable (attempt {attempt + 1})")
    return {"source": arguments.source, "attempts": attempt + 1, "status": "synced"}
