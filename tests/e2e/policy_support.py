"""Starting a worker on the ``policies`` tasks, and reading what they noted in Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.policy_tasks import NOTES, QUEUE
from tests.support import GREENROOM, REPO, Process, Worker, delete_queues, free_port, http_get

#: The worker module that implements the ``policies`` tasks.
POLICY_WORKER = "tests.e2e.policy_worker"


class PolicyWorker(Worker):
    """``greenroom worker tests.e2e.policy_worker --queues policies``."""

    def __init__(self, env: Mapping[str, str], cwd: Path, *, processes: int = 2, threads: int = 4) -> None:
        argv = [GREENROOM, "worker", POLICY_WORKER, "--queues", QUEUE]
        argv += ["--processes", str(processes), "--threads", str(threads)]
        self.processes = processes
        self.metrics_port = free_port()
        environment = {**env, "METRICS_PORT": str(self.metrics_port), "PYTHONPATH": str(REPO)}
        Process.__init__(self, argv, environment, cwd)

    def outcome_count(self, actor: str, outcome: str) -> float:
        """greenroom_tasks_total for ``actor`` and ``outcome`` on /metrics."""
        _, body = http_get(self.url("/metrics"))
        prefix = "greenroom_tasks_total{"
        total = 0.0
        for line in body.splitlines():
            if line.startswith(prefix) and f'actor="{actor}"' in line and f'outcome="{outcome}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def events_of(self, actor: str) -> list[dict[str, Any]]:
        return [event for event in self.task_events() if event.get("actor") == actor]

    def event_count(self, actor: str, event: str) -> int:
        """How many task lines of ``actor`` say ``event``."""
        return sum(line["event"] == event for line in self.events_of(actor))


StartPolicyWorker = Callable[..., PolicyWorker]


@pytest.fixture
def start_policy_worker(
    service_env: dict[str, str], workdir: Path, clean_queues: None, rabbitmq_url: str
) -> Iterator[StartPolicyWorker]:
    started: list[PolicyWorker] = []

    def start(**options: Any) -> PolicyWorker:
        worker = PolicyWorker(service_env, workdir, **options)
        started.append(worker)
        return worker.wait_ready()  # type: ignore[return-value]

    yield start
    for worker in started:
        worker.stop()
    delete_queues(rabbitmq_url, QUEUE)


@pytest.fixture
def notes(redis_url: str) -> Iterator[redis.Redis[str]]:
    """The Redis client the tests read the tasks' notes with; notes and limiter keys removed after."""
    client: redis.Redis[str] = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    for pattern in (f"{NOTES}:*", "greenroom-limits:*policies.*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()
