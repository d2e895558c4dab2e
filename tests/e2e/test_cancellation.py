"""Cancellation against real RabbitMQ, Redis and a worker of two processes (started once here).

A cancelled task that has not started is skipped (task line ``cancelled``, metric outcome
``cancelled``, ``result()`` raises TaskCancelled); a running one is interrupted only if its
contract is ``cancellable``; a cancel of a finished or unknown task says so (exit 1);
a cancel made while no worker runs holds when one starts.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider

from shared.bench.otlp_receiver import OtlpReceiver, ReceivedSpan
from shared.errors import TaskCancelled
from shared.producer import Producer
from tests.e2e.cancel_tasks import CANCELLABLE, LATE, LATE_QUEUE, NOTES, QUEUE, QUICK, STUBBORN
from tests.support import (
    GREENROOM,
    REPO,
    Process,
    Worker,
    delete_queues,
    free_port,
    greenroom_env,
    http_get,
    take_all,
    wait_for,
)

#: The worker module that implements the ``cancels`` tasks.
CANCEL_WORKER = "tests.e2e.cancel_worker"

#: OTLP status code of a span that is not an error.
STATUS_UNSET = 0
#: What a report adds for a task that is not cancellable.
NOT_CANCELLABLE = " (if it is running already, it finishes: the task is not cancellable)"


class CancelWorker(Worker):
    """``greenroom worker tests.e2e.cancel_worker --queues <queues>``."""

    def __init__(self, env: Mapping[str, str], cwd: Path, *, queues: tuple[str, ...], processes: int) -> None:
        argv = [GREENROOM, "worker", CANCEL_WORKER, "--queues", *queues]
        argv += ["--processes", str(processes), "--threads", "2"]
        self.processes = processes
        self.metrics_port = free_port()
        Process.__init__(self, argv, {**env, "METRICS_PORT": str(self.metrics_port)}, cwd)

    def outcome_count(self, actor: str, outcome: str) -> float:
        """greenroom_tasks_total for ``actor`` and ``outcome`` on /metrics."""
        _, body = http_get(self.url("/metrics"))
        total = 0.0
        for line in body.splitlines():
            series = line.startswith("greenroom_tasks_total{") and f'actor="{actor}"' in line
            if series and f'outcome="{outcome}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def lines_of(self, message_id: str) -> list[dict[str, Any]]:
        return [line for line in self.task_events() if line.get("message_id") == message_id]


@pytest.fixture(scope="module")
def env(
    rabbitmq_url: str, redis_url: str, otlp_receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment of the module's greenroom processes (tests/conftest.py's service_env)."""
    env = greenroom_env(rabbitmq_url, redis_url, otlp_receiver, tmp_path_factory.mktemp("metrics"))
    return {**env, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def worker(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, rabbitmq_url: str
) -> Iterator[CancelWorker]:
    """One worker of two processes for the module, on the ``cancels`` queue."""
    started = CancelWorker(env, tmp_path_factory.mktemp("worker"), queues=(QUEUE,), processes=2)
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()
        delete_queues(rabbitmq_url, QUEUE)


@pytest.fixture(scope="module")
def notes(redis_url: str) -> Iterator[redis.Redis[str]]:
    """The Redis client the tests read the tasks' notes with; notes removed after."""
    client: redis.Redis[str] = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    keys = list(client.scan_iter(f"{NOTES}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _consumer_spans(
    receiver: OtlpReceiver, tracer_provider: TracerProvider, message_ids: Sequence[str]
) -> list[ReceivedSpan]:
    """The consumer span of each of ``message_ids`` (one each), once all have arrived."""
    tracer_provider.force_flush()
    wait_for(lambda: len(receiver.consumer_spans(message_ids)) == len(message_ids), 15, "every consumer span")
    return [span for spans in receiver.consumer_spans(message_ids).values() for span in spans]


def cancel_command(env: Mapping[str, str], *message_ids: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GREENROOM, "cancel", *message_ids],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_tasks_cancelled_before_they_start_are_skipped(
    worker: CancelWorker,
    producer: Producer,
    notes: redis.Redis[str],
    otlp_receiver: OtlpReceiver,
    tracer_provider: TracerProvider,
) -> None:
    # Given: 8 tasks that wait 1 s in RabbitMQ before they are due
    run = uuid.uuid4().hex
    handles = producer.send_many(QUICK.name, [{"run": run, "item": item} for item in range(8)], delay=1)

    # When: they are cancelled at once (and the first one again)
    reports = producer.cancel(*(handle.message_id for handle in handles))
    again = handles[0].cancel()

    # Then: each report says cancelled, the second cancel already cancelled
    assert [report.status for report in reports] == ["cancelled"] * 8, [r.line for r in reports]
    first_line = f"message {handles[0].message_id} (task {QUICK.name}): cancelled{NOT_CANCELLABLE}"
    assert reports[0].line == first_line
    assert again.status == "already cancelled" and again.cancelled
    # And: every result raises TaskCancelled naming the task, none ran, each line says cancelled
    for handle in handles:
        with pytest.raises(TaskCancelled, match=f"task '{QUICK.name}' .* was cancelled"):
            handle.result(timeout=15)
    assert not list(notes.scan_iter(f"{NOTES}:{run}:*")), "a cancelled task ran"
    wait_for(lambda: all(worker.lines_of(h.message_id) for h in handles), 5, "8 task lines")
    lines = [line for handle in handles for line in worker.lines_of(handle.message_id)]
    assert [line["event"] for line in lines] == ["cancelled"] * 8, lines
    wait_for(
        lambda: worker.outcome_count(QUICK.name, "cancelled") >= 8, 5, "outcome cancelled counted 8 times"
    )
    assert worker.outcome_count(QUICK.name, "failure") == 0
    # And: each skip is a consumer span marked skipped and cancelled, no error, in the send's trace
    spans = _consumer_spans(otlp_receiver, tracer_provider, [h.message_id for h in handles])
    assert all(s.attributes.get("greenroom.task.cancelled") is True for s in spans)
    assert all(s.attributes.get("dramatiq.message.skipped") is True for s in spans)
    assert {s.status_code for s in spans} == {STATUS_UNSET}
    assert len({s.trace_id for s in spans}) == 1, "a send_many batch is one trace"


def test_running_cancellable_tasks_are_interrupted_on_both_processes_not_retried(
    worker: CancelWorker,
    producer: Producer,
    notes: redis.Redis[str],
    rabbitmq_url: str,
    otlp_receiver: OtlpReceiver,
    tracer_provider: TracerProvider,
) -> None:
    # Given: 4 cancellable tasks that would run 30 s, all running (2 threads a process: both processes)
    run = uuid.uuid4().hex
    handles = producer.send_many(CANCELLABLE.name, [{"run": run, "item": i, "seconds": 30} for i in range(4)])
    keys = [f"{NOTES}:{run}:{item}" for item in range(4)]
    wait_for(lambda: all(notes.llen(f"{key}:started") == 1 for key in keys), 10, "4 tasks to start")
    pids = {notes.lindex(f"{key}:started", 0).split()[0] for key in keys}  # type: ignore[union-attr]
    assert len(pids) == 2, pids

    # When: they are cancelled
    cancelled_at = time.time()
    reports = producer.cancel(*(handle.message_id for handle in handles))

    # Then: each is interrupted within a second, and its result raises TaskCancelled
    assert [report.status for report in reports] == ["cancelled"] * 4, [r.line for r in reports]
    for handle in handles:
        with pytest.raises(TaskCancelled):
            handle.result(timeout=10)
    wait_for(lambda: all(notes.llen(f"{key}:ended") == 1 for key in keys), 5, "the tasks' end notes")
    ends = [notes.lindex(f"{key}:ended", 0).split() for key in keys]  # type: ignore[union-attr]
    latencies = sorted(round((float(when) - cancelled_at) * 1000) for _how, when in ends)
    print(f"interrupted {latencies} ms after the cancel")  # the figure docs/cancellation.md cites
    assert all(how == "interrupted" for how, _when in ends) and latencies[-1] < 1000, (ends, latencies)
    # And: one task line each, cancelled; not retried (a retry starts after a 0.1 s backoff); no dead letter
    wait_for(lambda: all(worker.lines_of(h.message_id) for h in handles), 5, "4 task lines")
    time.sleep(1.0)  # the absence of a retry can only be seen by waiting for one
    lines = [line for handle in handles for line in worker.lines_of(handle.message_id)]
    assert [line["event"] for line in lines] == ["cancelled"] * 4, lines
    assert all(line["reason"] == "interrupted while running" for line in lines), lines
    assert all(notes.llen(f"{key}:started") == 1 for key in keys), "a cancelled task was retried"
    assert take_all(rabbitmq_url, f"{QUEUE}.XQ") == []
    errors = [line for line in worker.json_lines() if line["level"] in ("ERROR", "CRITICAL")]
    assert errors == [], "an interrupt by a cancel is no error"
    wait_for(lambda: worker.outcome_count(CANCELLABLE.name, "cancelled") == 4, 5, "outcome cancelled x4")
    assert worker.outcome_count(CANCELLABLE.name, "failure") == 0
    # And: each interrupted run is one consumer span, marked cancelled, not an error, not skipped
    spans = _consumer_spans(otlp_receiver, tracer_provider, [h.message_id for h in handles])
    assert all(s.attributes.get("greenroom.task.cancelled") is True for s in spans)
    assert not any(s.attributes.get("dramatiq.message.skipped") for s in spans)
    assert {s.status_code for s in spans} == {STATUS_UNSET}


def test_a_running_task_not_cancellable_finishes_and_its_result_stands(
    worker: CancelWorker, producer: Producer, notes: redis.Redis[str]
) -> None:
    # Given: a task that is not cancellable, running for 1 s
    run = uuid.uuid4().hex
    handle = producer.send(STUBBORN.name, run=run, item=7, seconds=1.0)
    wait_for(lambda: notes.llen(f"{NOTES}:{run}:7:started") == 1, 10, "the task to start")

    # When: it is cancelled
    (report,) = producer.cancel(handle.message_id)

    # Then: the cancel is recorded, but the task finishes and its result stands
    assert report.status == "cancelled", report.line
    assert handle.result(timeout=10) == 7
    assert notes.lindex(f"{NOTES}:{run}:7:ended", 0).startswith("finished")  # type: ignore[union-attr]
    wait_for(lambda: worker.lines_of(handle.message_id), 5, "the task line")
    assert [line["event"] for line in worker.lines_of(handle.message_id)] == ["succeeded"]


def test_greenroom_cancel_says_finished_and_unknown_and_exits_1(
    worker: CancelWorker, producer: Producer, env: dict[str, str]
) -> None:
    # Given: a task that finished, one that waits, and an id never sent
    finished = producer.send(QUICK.name, run=uuid.uuid4().hex, item=3)
    assert finished.result(timeout=10) == 3
    waiting = producer.send_with_options(QUICK.name, {"run": uuid.uuid4().hex, "item": 4}, delay=60)
    unknown = str(uuid.uuid4())

    # When / Then: cancelling the finished and the unknown ones says so, exit 1
    done = cancel_command(env, finished.message_id, unknown)
    assert done.returncode == 1, done
    assert done.stdout.splitlines() == [
        f"message {finished.message_id} (task {QUICK.name}): finished, not cancelled (it succeeded)",
        f"message {unknown}: unknown (never sent by a greenroom producer, or its record expired)",
    ]
    # And: cancelling the waiting one succeeds, exit 0; again: already cancelled, exit 0
    first, second = cancel_command(env, waiting.message_id), cancel_command(env, waiting.message_id)
    assert (first.returncode, first.stdout) == (
        0,
        f"message {waiting.message_id} (task {QUICK.name}): cancelled{NOT_CANCELLABLE}\n",
    )
    assert second.returncode == 0 and second.stdout.endswith(": already cancelled\n"), second


def test_a_cancel_made_while_no_worker_runs_holds_when_one_starts(
    env: dict[str, str],
    producer: Producer,
    notes: redis.Redis[str],
    tmp_path: Path,
    rabbitmq_url: str,
) -> None:
    # Given: a task sent to a queue no worker consumes, and cancelled
    run = uuid.uuid4().hex
    handle = producer.send(LATE.name, run=run, item=5)
    assert handle.cancel().status == "cancelled"

    # When: a worker starts on that queue
    late = CancelWorker(env, tmp_path, queues=(LATE_QUEUE,), processes=1)
    try:
        late.wait_ready()
        # Then: it skips the task (it loaded the cancellation at boot)
        with pytest.raises(TaskCancelled):
            handle.result(timeout=15)
        assert notes.llen(f"{NOTES}:{run}:5:started") == 0
    finally:
        late.stop()
        delete_queues(rabbitmq_url, LATE_QUEUE)
