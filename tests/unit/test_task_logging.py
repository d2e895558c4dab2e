"""TaskLogging: one line per finished task with the right event (StubBroker: pure middleware logic)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

from observability.task_logging import TaskContextFilter, TaskLogging


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker(middleware=[TaskLogging(), Retries(max_retries=1, min_backoff=1, max_backoff=1)])
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.close()


@pytest.fixture
def worker(broker: StubBroker) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def task_lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.handler.addFilter(TaskContextFilter())
    caplog.set_level(logging.INFO)
    return caplog


def _events(caplog: pytest.LogCaptureFixture, actor: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "greenroom.task" and getattr(r, "actor", None) == actor]


def test_success_logs_one_succeeded_line_with_task_fields(
    broker: StubBroker, worker: dramatiq.Worker, task_lines: pytest.LogCaptureFixture
) -> None:
    # Given
    @dramatiq.actor(queue_name="q")
    def ok() -> None:
        logging.getLogger("app").info("inside")

    # When
    message = ok.send()
    broker.join("q")
    worker.join()

    # Then
    [line] = _events(task_lines, "ok")
    assert line.event == "succeeded"  # type: ignore[attr-defined]
    assert line.message_id == message.message_id  # type: ignore[attr-defined]
    assert line.queue == "q"  # type: ignore[attr-defined]
    assert line.retries == 0  # type: ignore[attr-defined]
    assert line.duration_seconds >= 0  # type: ignore[attr-defined]
    [inside] = [r for r in task_lines.records if r.name == "app"]
    assert inside.message_id == message.message_id  # type: ignore[attr-defined]


def test_failure_retries_then_fails(
    broker: StubBroker, worker: dramatiq.Worker, task_lines: pytest.LogCaptureFixture
) -> None:
    @dramatiq.actor(queue_name="q")
    def boom() -> None:
        raise RuntimeError("kaput")

    boom.send()
    broker.join("q", fail_fast=False)
    worker.join()

    events = [(r.event, r.retries) for r in _events(task_lines, "boom")]  # type: ignore[attr-defined]
    assert events == [("retrying", 0), ("failed", 1)]
    assert _events(task_lines, "boom")[-1].error == "RuntimeError: kaput"  # type: ignore[attr-defined]
    assert len(broker.dead_letters) == 1


def test_expected_exception_is_dead_lettered_without_retry(
    broker: StubBroker, worker: dramatiq.Worker, task_lines: pytest.LogCaptureFixture
) -> None:
    @dramatiq.actor(queue_name="q", throws=(ValueError,))
    def reject() -> None:
        raise ValueError("bad arguments")

    reject.send()
    broker.join("q", fail_fast=False)
    worker.join()

    [line] = _events(task_lines, "reject")
    assert line.event == "dead-lettered"  # type: ignore[attr-defined]
    assert line.reason == "rejected without retry"  # type: ignore[attr-defined]
    assert len(broker.dead_letters) == 1


def test_no_task_fields_outside_a_task(task_lines: pytest.LogCaptureFixture) -> None:
    logging.getLogger("app").info("outside")
    [record] = [r for r in task_lines.records if r.name == "app"]
    assert not hasattr(record, "message_id")
