"""Async actors on a real worker: results, the task line, spans, metrics, time limits and retries.

The worker runs ``tests.e2e.async_worker`` (the production worker module, so
``echo`` and ``echo_async`` are there, plus three async test tasks) on queue
``default``, exporting its spans to the session's OTLP receiver.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.bench.otlp_receiver import OtlpReceiver, ReceivedSpan
from shared.errors import TaskFailed
from shared.producer import Producer
from tests.e2e.async_contracts import ASYNC_NESTED, ASYNC_RAISE, ASYNC_SLEEP
from tests.support import GREENROOM, REPO, Process, Worker, free_port, http_get, take_all, wait_for

WORKER_MODULE = "tests.e2e.async_worker"


class AsyncCasesWorker(Worker):
    """``greenroom worker tests.e2e.async_worker --queues default``, the repository on PYTHONPATH."""

    def __init__(self, env: dict[str, str], cwd: Path, *, processes: int, threads: int) -> None:
        self.processes = processes
        self.metrics_port = free_port()
        argv = [GREENROOM, "worker", WORKER_MODULE, "--queues", "default"]
        argv += ["--processes", str(processes), "--threads", str(threads)]
        env = {**env, "METRICS_PORT": str(self.metrics_port), "PYTHONPATH": str(REPO)}
        Process.__init__(self, argv, env, cwd)


StartWorker = Callable[..., AsyncCasesWorker]


@pytest.fixture
def start_worker(service_env: dict[str, str], workdir: Path, clean_queues: None) -> Iterator[StartWorker]:
    started: list[AsyncCasesWorker] = []

    def start(*, processes: int = 1, threads: int = 4) -> AsyncCasesWorker:
        env = {**service_env, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        worker = AsyncCasesWorker(env, workdir, processes=processes, threads=threads)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_async_and_sync_actors_on_one_worker_have_the_same_results_task_lines_spans_and_metrics(
    start_worker: StartWorker, producer: Producer, otlp_receiver: OtlpReceiver
) -> None:
    # Given one worker process with four threads
    worker = start_worker(processes=1, threads=4)

    # When echo and echo_async are sent side by side, each with 100 ms of (simulated or awaited) work
    handles = {
        actor: producer.send_many(actor, [{"payload": [actor, n], "delay_ms": 100} for n in range(6)])
        for actor in ("echo", "echo_async")
    }

    # Then both return their payloads
    for actor, sent in handles.items():
        assert [handle.result(timeout=20) for handle in sent] == [[actor, n] for n in range(6)]

    # And each task has the same task line: succeeded, its ids, its consumer span's trace and span ids
    events = {event["message_id"]: event for event in worker.wait_for_task_events(12)}
    consumers = _wait_for_consumer_spans(otlp_receiver, [h.message_id for s in handles.values() for h in s])
    for actor, sent in handles.items():
        for handle in sent:
            event, span = events[handle.message_id], consumers[handle.message_id]
            assert (event["event"], event["actor"], event["queue"]) == ("succeeded", actor, "default")
            assert event["duration_seconds"] >= 0.1
            assert (event["trace_id"], event["span_id"]) == (span.trace_id, span.span_id)
            assert span.name == "process default"
            assert span.attributes["dramatiq.actor.name"] == actor
    # the consumer spans of both kinds carry the same attributes
    shapes = {
        actor: {tuple(sorted(consumers[h.message_id].attributes)) for h in sent}
        for actor, sent in handles.items()
    }
    assert shapes["echo"] == shapes["echo_async"] and len(shapes["echo"]) == 1

    # And the metrics count both, with their durations
    _wait_for_count(worker, "echo", "success", 6)
    _wait_for_count(worker, "echo_async", "success", 6)
    for actor in ("echo", "echo_async"):
        assert _sample(worker, "greenroom_task_duration_seconds_count", actor=actor) == 6
        assert _sample(worker, "greenroom_task_duration_seconds_bucket", actor=actor, le="0.05") == 0


def test_a_span_opened_inside_a_coroutine_is_a_child_of_the_consumer_span(
    start_worker: StartWorker, producer: Producer, otlp_receiver: OtlpReceiver
) -> None:
    worker = start_worker()

    handle = producer.send(ASYNC_NESTED.name, label="inner")
    # Dramatiq's current message is the task's inside the coroutine too
    assert handle.result(timeout=20) == {"label": "inner", "message_id": handle.message_id}

    consumer = _wait_for_consumer_spans(otlp_receiver, [handle.message_id])[handle.message_id]
    wait_for(lambda: bool(_named(otlp_receiver, "nested inner")), 10, "the span opened in the coroutine")
    [nested] = _named(otlp_receiver, "nested inner")
    assert (nested.trace_id, nested.parent_span_id) == (consumer.trace_id, consumer.span_id)
    assert nested.kind == "INTERNAL"
    # The line logged inside the coroutine names the task and the nested span
    worker.wait_for_task_events(1)
    [inside] = [line for line in worker.json_lines() if line.get("message") == "inside the nested span"]
    assert (inside["message_id"], inside["actor"]) == (handle.message_id, "tests.async_nested")
    assert (inside["trace_id"], inside["span_id"]) == (nested.trace_id, nested.span_id)


def test_an_async_task_over_its_time_limit_is_cancelled_retried_then_failed(
    start_worker: StartWorker, producer: Producer, otlp_receiver: OtlpReceiver, rabbitmq_url: str
) -> None:
    worker = start_worker()

    # When a coroutine awaits 30 s under its 1 s time limit (one retry allowed)
    handle = producer.send(ASYNC_SLEEP.name, seconds=30)

    # Then it fails within a few seconds, not 30
    with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
        handle.result(timeout=15)
    events = worker.wait_for_task_events(2)
    assert [(e["event"], e["retries"]) for e in events] == [("retrying", 0), ("failed", 1)]
    assert all(e["error"].startswith("TimeLimitExceeded") for e in events)
    assert all(1 <= e["duration_seconds"] < 5 for e in events)
    # And each attempt's coroutine was cancelled (inside it, with the task's fields), never finished
    lines = worker.json_lines()
    cancelled = [line for line in lines if line.get("message") == "async sleep cancelled"]
    assert [(line["message_id"], line["retries"]) for line in cancelled] == [
        (handle.message_id, 0),
        (handle.message_id, 1),
    ]
    assert not [line for line in lines if line.get("message") == "async sleep finished"]
    # And it is counted and traced as a failed sync task is, then dead-lettered
    _wait_for_count(worker, "tests.async_sleep", "retry", 1)
    _wait_for_count(worker, "tests.async_sleep", "failure", 1)
    assert [message["message_id"] for message in _dead_letters(rabbitmq_url)] == [handle.message_id]
    spans = _wait_for_consumer_spans(otlp_receiver, [handle.message_id], count=2)
    assert spans[handle.message_id].status_code == 2  # STATUS_CODE_ERROR


def test_an_async_task_that_raises_is_retried_then_dead_lettered(
    start_worker: StartWorker, producer: Producer, rabbitmq_url: str
) -> None:
    worker = start_worker()

    handle = producer.send(ASYNC_RAISE.name, reason="upstream down")

    with pytest.raises(TaskFailed, match="AsyncFailure"):
        handle.result(timeout=15)
    events = worker.wait_for_task_events(3)
    assert [(e["event"], e["retries"]) for e in events] == [("retrying", 0), ("retrying", 1), ("failed", 2)]
    assert {e["error"] for e in events} == {"AsyncFailure: upstream down"}
    assert events[-1]["reason"] == "retries exhausted"
    _wait_for_count(worker, "tests.async_raise", "retry", 2)
    _wait_for_count(worker, "tests.async_raise", "failure", 1)
    assert [message["message_id"] for message in _dead_letters(rabbitmq_url)] == [handle.message_id]


# Helpers ------------------------------------------------------------------------------------


def _wait_for_consumer_spans(
    receiver: OtlpReceiver, message_ids: list[str], count: int = 1
) -> dict[str, ReceivedSpan]:
    """The last consumer span of each message, once ``count`` of each have arrived."""
    wait_for(
        lambda: all(len(receiver.consumer_spans(message_ids).get(m, [])) >= count for m in message_ids),
        15,
        "the consumer spans",
    )
    return {message_id: spans[-1] for message_id, spans in receiver.consumer_spans(message_ids).items()}


def _named(receiver: OtlpReceiver, name: str) -> list[ReceivedSpan]:
    return [span for span in receiver.spans() if span.name == name]


def _wait_for_count(worker: Worker, actor: str, outcome: str, count: int) -> None:
    """Wait until ``greenroom_tasks_total`` of ``actor`` and ``outcome`` is ``count`` (the worker
    applies its figures to the metrics on a short period, not at the task line)."""
    wait_for(
        lambda: _sample(worker, "greenroom_tasks_total", actor=actor, outcome=outcome) == count,
        10,
        f"{count} {outcome} of {actor} on /metrics",
    )


def _sample(worker: Worker, name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels include ``labels`` (0 if there is none)."""
    status, body = http_get(worker.url("/metrics"))
    assert status == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _dead_letters(rabbitmq_url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    def arrived() -> bool:
        messages.extend(json.loads(body) for body in take_all(rabbitmq_url, "default.XQ"))
        return bool(messages)

    wait_for(arrived, 10, "a dead letter in default.XQ")
    return messages
