"""Fixtures that start real `greenroom worker` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Worker

StartWorker = Callable[..., Worker]

#: Modules that test workers load (``greenroom worker tests.e2e.<module>``): importing one
#: installs a worker's broker and connects to services, so pytest does not collect them.
collect_ignore = ["async_worker.py", "policy_worker.py", "cancel_worker.py", "workflow_worker.py"]


@pytest.fixture
def start_worker(service_env: dict[str, str], workdir: Path, clean_queues: None) -> Iterator[StartWorker]:
    """Start `greenroom worker` processes (waiting until every process is ready); stop them afterwards."""
    started: list[Worker] = []

    def start(*, env: dict[str, str] | None = None, **options: Any) -> Worker:
        worker = Worker({**service_env, **(env or {})}, workdir, **options)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()
