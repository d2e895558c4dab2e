"""The README's "Adding a task" steps, followed on a copy of the project: two new files, nothing else.

1. declare a contract in ``shared/contracts/<name>.py``;
2. implement it in ``workers/<name>.py`` with ``@implements(CONTRACT)``;
3. run a worker on the contract's queue and ``greenroom send`` the task.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import StartWorker
from tests.support import REPO, delete_queues, run_cli

#: Step 1, as the README shows it.
CONTRACT = textwrap.dedent(
    '''
    """Greeting tasks on queue ``greetings``."""

    from pydantic import Field

    from shared.tasks import TaskArguments, TaskContract


    class GreetArguments(TaskArguments):
        name: str = Field(min_length=1, max_length=100)


    GREET = TaskContract(
        name="greetings.greet",
        queue="greetings",
        arguments=GreetArguments,
        description="Greet `name`.",
    )
    '''
)

#: Step 2, as the README shows it.
IMPLEMENTATION = textwrap.dedent(
    '''
    """Greeting tasks."""

    from shared.contracts.greetings import GREET, GreetArguments
    from workers.actor import implements


    @implements(GREET)
    def greet(arguments: GreetArguments) -> dict[str, str]:
        return {"greeting": f"Hello, {arguments.name}!"}
    '''
)

QUEUE = "greetings"


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """shared/, workers/ and observability/ copied, plus the two files of the new task."""
    copy = tmp_path / "project"
    for package in ("shared", "workers", "observability"):
        shutil.copytree(REPO / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "shared" / "contracts" / "greetings.py").write_text(CONTRACT)
    (copy / "workers" / "greetings.py").write_text(IMPLEMENTATION)
    return copy


@pytest.fixture
def greetings_queue(rabbitmq_url: str) -> Iterator[str]:
    yield QUEUE
    delete_queues(rabbitmq_url, QUEUE)


def test_a_new_contract_and_worker_module_are_all_a_task_needs(
    start_worker: StartWorker,
    service_env: dict[str, str],
    project_copy: Path,
    greetings_queue: str,
    workdir: Path,
) -> None:
    # Given: the copy of the project first on the path, and no other change anywhere
    env = {**service_env, "PYTHONPATH": str(project_copy)}

    # When: step 3, a worker on the new queue, then the task sent from the command line
    worker = start_worker(env=env, processes=1, threads=2, queues=[greetings_queue])
    sent = run_cli(
        ["send", "greetings.greet", "--kwargs", '{"name": "Ada"}', "--wait", "--timeout", "20"], env, workdir
    )

    # Then: the task ran on the new queue and its result came back
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {"greeting": "Hello, Ada!"}
    [event] = [e for e in worker.wait_for_task_events(1) if e["event"] == "succeeded"]
    assert (event["actor"], event["queue"]) == ("greetings.greet", greetings_queue)


def test_the_project_itself_does_not_know_the_new_task(service_env: dict[str, str], workdir: Path) -> None:
    # The test above passes because of the two new files, not because the task exists already.
    sent = run_cli(["send", "greetings.greet", "--kwargs", '{"name": "Ada"}'], service_env, workdir)
    assert sent.returncode == 2
    assert "unknown task 'greetings.greet'" in sent.stderr
