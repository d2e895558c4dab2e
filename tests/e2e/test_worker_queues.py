"""`greenroom worker --queues` takes the forms WORKER_QUEUES takes: names separated by commas
or spaces, or the flag repeated."""

from __future__ import annotations

import pytest

from shared.producer import Producer
from tests.e2e.conftest import StartWorker


@pytest.mark.parametrize(
    ("queues", "env"),
    [
        (["default,reports"], {}),
        (["default, reports"], {}),
        (["default", "reports"], {}),
        (["default", "-Q", "reports"], {}),  # the flag repeated
        ([], {"WORKER_QUEUES": "default reports"}),
    ],
    ids=["comma", "comma-space", "two-values", "repeated-flag", "env-space-separated"],
)
def test_a_worker_consumes_every_queue_named_in_any_accepted_form(
    start_worker: StartWorker, producer: Producer, queues: list[str], env: dict[str, str]
) -> None:
    start_worker(processes=1, threads=2, queues=queues, env=env)

    echoed = producer.send("echo", payload="default").result(timeout=15)
    report = producer.send("reports.build", report_id="q", rows=10).result(timeout=15)

    assert echoed == "default"
    assert report is not None
