"""A real `greenroom worker` with real RabbitMQ and Redis: results, failures, dead letters, logs."""

from __future__ import annotations

from pathlib import Path

import dramatiq
import pytest

from shared.errors import TaskFailed
from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import run_cli


def test_500_echo_tasks_all_return_their_payload(start_worker: StartWorker, producer: Producer) -> None:
    # Given
    worker = start_worker(processes=2, threads=8)

    # When
    handles = producer.send_many("echo", [{"payload": {"n": n, "text": f"task-{n}"}} for n in range(500)])

    # Then
    results = [handle.result(timeout=30) for handle in handles]
    assert results == [{"n": n, "text": f"task-{n}"} for n in range(500)]
    succeeded = [e for e in worker.wait_for_task_events(500) if e["event"] == "succeeded"]
    assert len(succeeded) == 500
    assert {e["message_id"] for e in succeeded} == {h.message_id for h in handles}
    assert all(e["actor"] == "echo" and e["queue"] == "default" for e in succeeded)


def test_failing_task_is_dead_lettered_and_its_handle_raises(
    start_worker: StartWorker, producer: Producer
) -> None:
    worker = start_worker(processes=1, threads=2)

    handle = producer.send("fail", reason="disk on fire")

    with pytest.raises(TaskFailed, match="DiagnosticFailure: disk on fire"):
        handle.result(timeout=10)
    _ready, _delayed, dead = producer.broker.get_queue_message_counts("default")
    assert dead == 1
    [event] = [e for e in worker.wait_for_task_events(1) if e["message_id"] == handle.message_id]
    assert event["event"] == "failed"
    assert event["reason"] == "retries exhausted"


def test_message_breaking_the_contract_is_dead_lettered_at_once(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given: a message that skipped producer-side validation (sent with plain Dramatiq)
    worker = start_worker(processes=1, threads=2)
    message = dramatiq.Message(
        queue_name="default", actor_name="echo", args=(), kwargs={"payload": 1, "delay_ms": -5}, options={}
    )

    # When
    producer.broker.enqueue(message)

    # Then: rejected without retries, with a line saying why
    with pytest.raises(TaskFailed, match="InvalidTaskArguments: invalid arguments for task 'echo': delay_ms"):
        producer.result_of("echo", message.message_id, timeout=10)
    [event] = [e for e in worker.wait_for_task_events(1) if e["message_id"] == message.message_id]
    assert event["event"] == "dead-lettered"
    assert event["retries"] == 0
    assert "delay_ms: Input should be greater than or equal to 0" in event["error"]
    assert producer.broker.get_queue_message_counts("default")[2] == 1


def test_transient_failures_retry_with_backoff_then_succeed(
    start_worker: StartWorker, producer: Producer
) -> None:
    worker = start_worker(processes=1, threads=2)

    handle = producer.send("reports.sync_inventory", source="warehouse-7", fail_first=2)

    assert handle.result(timeout=20) == {"source": "warehouse-7", "attempts": 3, "status": "synced"}
    events = [
        (e["event"], e["retries"])
        for e in worker.wait_for_task_events(3)
        if e["message_id"] == handle.message_id
    ]
    assert events == [("retrying", 0), ("retrying", 1), ("succeeded", 2)]


def test_report_task_runs_on_the_reports_queue(start_worker: StartWorker, producer: Producer) -> None:
    start_worker(processes=1, threads=2, queues=["reports"])
    report = producer.send("reports.build", report_id="q3", rows=20_000).result(timeout=30)
    assert report["rows"] == 20_000
    assert sum(region["count"] for region in report["regions"].values()) == 20_000


def test_every_line_the_worker_prints_is_json(start_worker: StartWorker, producer: Producer) -> None:
    worker = start_worker(processes=2, threads=2)
    producer.send("echo", payload=1).result(timeout=10)
    with pytest.raises(TaskFailed):
        producer.send("fail").result(timeout=10)

    worker.signal()
    assert worker.wait(timeout=30) == 0

    lines = worker.json_lines()  # raises on the first non-JSON line
    assert lines, "the worker printed nothing"
    assert all({"timestamp", "level", "logger", "message"} <= line.keys() for line in lines)
    tracebacks = [line for line in lines if "exc_info" in line]
    assert tracebacks, "the failing task's traceback should be a field of a JSON line"
    assert worker.stderr_lines == []
    assert lines[-1]["message"] == "greenroom worker stopped"


def test_check_roundtrip_runs_echo_through_a_worker(
    start_worker: StartWorker, producer: Producer, service_env: dict[str, str], workdir: Path
) -> None:
    start_worker(processes=1, threads=2)
    completed = run_cli(["check", "--roundtrip", "--timeout", "10"], service_env, workdir)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.splitlines()[-1].startswith("roundtrip ok (message ")


def test_check_roundtrip_fails_without_a_worker(
    producer: Producer, service_env: dict[str, str], workdir: Path
) -> None:
    completed = run_cli(["check", "--roundtrip", "--timeout", "0.5"], service_env, workdir)
    assert completed.returncode == 1
    assert "roundtrip FAILED: no result for task 'echo'" in completed.stdout
