"""Importing the producer API loads no worker runtime, no CLI, no bench and no worker-side metrics."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO

#: Every project module ``import shared.producer`` may load; a module loaded that is not
#: here fails the test (add it only if a producer service really needs it).
PRODUCER_MODULES = {
    "observability",
    "observability.fallbacks",
    "observability.messaging_spans",
    "observability.opentelemetry_compat",
    "observability.span_exporters",
    "observability.task_logging",
    "observability.trace_carriers",
    "observability.tracer_provider",
    "observability.tracing",
    "shared",
    "shared.backoff",
    "shared.broker",
    "shared.cancellation",
    "shared.contracts",
    "shared.contracts.diagnostics",
    "shared.contracts.reports",
    "shared.delays",
    "shared.dramatiq_compat",
    "shared.errors",
    "shared.pika_compat",
    "shared.producer",
    "shared.producer_checks",
    "shared.publishing",
    "shared.queue_arguments",
    "shared.result_marks",
    "shared.results",
    "shared.service_refusals",
    "shared.service_urls",
    "shared.settings",
    "shared.strict_json",
    "shared.tasks",
    "shared.telemetry",
    "shared.workflows",
}

#: What a producer must never load, whatever the list above becomes.
FORBIDDEN_PREFIXES = ("shared.runtime", "shared.cli", "shared.bench", "workers")
FORBIDDEN_MODULES = {
    "observability.metrics",
    "observability.exposition",
    "observability.exemplars",
    "observability.worker_registry",
    "observability.queue_depth",
}

#: Prints the project modules the process has loaded, as JSON.
REPORT = (
    "import json, sys; "
    "print(json.dumps([m for m in sys.modules if m.split('.')[0] in ('shared', 'workers', 'observability')]))"
)


def loaded_after(statements: str) -> set[str]:
    """The project modules a fresh Python process has loaded once it ran ``statements``."""
    done = subprocess.run(
        [sys.executable, "-c", f"{statements}; {REPORT}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout))


def test_importing_the_producer_loads_only_the_producer_side() -> None:
    # When a fresh process imports the producer API
    loaded = loaded_after("import shared.producer")

    # Then it loaded only allowed modules: no worker runtime, CLI, bench or worker metrics
    assert not {m for m in loaded if m.startswith(FORBIDDEN_PREFIXES)}
    assert not loaded & FORBIDDEN_MODULES
    assert loaded - PRODUCER_MODULES == set()
    assert {"shared.producer", "shared.broker", "shared.tasks", "observability.tracing"} <= loaded


def test_sending_needs_the_contracts_but_still_no_worker_runtime() -> None:
    # When a producer process looks a task up (the first read of the task table)
    loaded = loaded_after("import shared.producer; shared.producer.get_task('echo')")

    # Then the contracts are loaded, and still nothing of the worker side
    assert {"shared.contracts", "shared.contracts.diagnostics", "shared.contracts.reports"} <= loaded
    assert loaded - PRODUCER_MODULES == set()
