"""Pipelines and groups on real RabbitMQ, Redis and one two-process worker for the module.

Each task notes in Redis that it ran (:mod:`tests.e2e.workflow_tasks`), so a test sees
which steps ran and how often across both worker processes.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest
import redis
from dramatiq.broker import MessageProxy
from dramatiq.results import Results
from opentelemetry.sdk.trace import TracerProvider

from shared.bench.otlp_receiver import OtlpReceiver, ReceivedSpan
from shared.errors import InvalidTaskArguments, TaskCancelled, TaskFailed
from shared.producer import Producer, group, pipeline, step
from shared.results import RedisResultBackend
from shared.runtime.workflow_steps import GroupCompletion
from shared.settings import load_settings
from shared.workflows import WorkflowHandle
from tests.e2e.workflow_tasks import IDLE_QUEUE, NOTES, QUEUE
from tests.support import (
    GREENROOM,
    REPO,
    Process,
    Worker,
    free_port,
    greenroom_env,
    http_get,
    take_all,
    wait_for,
)

WORKER_MODULE = "tests.e2e.workflow_worker"
#: OTLP status codes of a span.
STATUS_UNSET, STATUS_ERROR = 0, 2
RETRIES = "dramatiq.message.retries"
#: The worker's MAX_MESSAGE_BYTES: a result of more cannot be piped into a next step.
WORKER_MAX_MESSAGE_BYTES = 65_536


class WorkflowWorker(Worker):
    """``greenroom worker tests.e2e.workflow_worker --queues workflows``, two processes."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        argv = [GREENROOM, "worker", WORKER_MODULE, "--queues", QUEUE, "--processes", "2", "--threads", "4"]
        self.processes = 2
        self.metrics_port = free_port()
        Process.__init__(
            self, argv, {**env, "METRICS_PORT": str(self.metrics_port), "PYTHONPATH": str(REPO)}, cwd
        )

    def outcome_count(self, actor: str, outcome: str) -> float:
        """greenroom_tasks_total for ``actor`` and ``outcome`` on /metrics."""
        _, body = http_get(self.url("/metrics"))
        wanted = (f'actor="{actor}"', f'outcome="{outcome}"')
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith("greenroom_tasks_total{") and all(w in line for w in wanted)
        )


@pytest.fixture(scope="module")
def worker(
    rabbitmq_url: str, redis_url: str, otlp_receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkflowWorker]:
    workdir = tmp_path_factory.mktemp("workflows")
    env = greenroom_env(rabbitmq_url, redis_url, otlp_receiver, workdir / "metrics")
    env.update(OTEL_BSP_SCHEDULE_DELAY="200", MAX_MESSAGE_BYTES=str(WORKER_MAX_MESSAGE_BYTES))
    started = WorkflowWorker(env, workdir)
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def producer(
    rabbitmq_url: str, redis_url: str, tracer_provider: TracerProvider, worker: WorkflowWorker
) -> Iterator[Producer]:
    settings = load_settings(_env_file=None, RABBITMQ_URL=rabbitmq_url, REDIS_URL=redis_url)
    producer = Producer(settings, tracer_provider=tracer_provider)
    yield producer
    producer.close()


@pytest.fixture(scope="module")
def notes(redis_url: str) -> Iterator[redis.Redis[str]]:
    client: redis.Redis[str] = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    keys = list(client.scan_iter(f"{NOTES}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def run() -> str:
    return uuid.uuid4().hex[:12]


def _ran(notes: redis.Redis[str], run: str) -> list[str]:
    return notes.lrange(f"{NOTES}:{run}:ran", 0, -1)


def test_a_pipeline_pipes_each_result_into_the_next_step(
    producer: Producer, notes: redis.Redis[str], run: str
) -> None:
    # When a three-step pipeline is sent, each later step receiving the previous result
    handle = pipeline(
        step("workflows.add_one", run=run, value=1),
        step("workflows.add_one", run=run, pipe_as="value"),
        step("workflows.add_one", run=run, pipe_as="value"),
    ).send(producer)

    # Then the last result is 1 + 1 + 1 + 1, the steps ran in order, once each
    assert handle.result(timeout=20) == 4
    assert _ran(notes, run) == ["add_one 1", "add_one 2", "add_one 3"]
    assert len(set(handle.message_ids)) == 3


def test_a_failing_middle_step_stops_the_pipeline(
    producer: Producer,
    worker: WorkflowWorker,
    notes: redis.Redis[str],
    run: str,
    otlp_receiver: OtlpReceiver,
    tracer_provider: TracerProvider,
) -> None:
    # When the middle step of a pipeline fails (it is not retried)
    handle = pipeline(
        step("workflows.add_one", run=run, value=1),
        step("workflows.fail", run=run, pipe_as="value"),
        step("workflows.add_one", run=run, pipe_as="value"),
    ).send(producer)

    # Then the handle's result names step 2, and step 3 never ran
    with pytest.raises(TaskFailed) as failed:
        handle.result(timeout=20)
    assert (failed.value.task, failed.value.message_id) == ("workflows.fail", handle.message_ids[1])
    assert failed.value.error == "no good: 2"
    assert _ran(notes, run) == ["add_one 1", "fail 2"]
    # And the failed step's line says so as for any task
    events = _events_of(worker, handle.message_ids[1], count=1)
    assert [e["event"] for e in events] == ["failed"]
    assert not _events_of(worker, handle.message_ids[2], count=0)
    wait_for(lambda: worker.outcome_count("workflows.fail", "failure") >= 1, 10, "the failure on /metrics")
    # And the trace: step 2's span failed and descends from step 1's; step 3 has none
    spans, attempts = _attempt_spans(otlp_receiver, tracer_provider, handle.message_ids[:2], count=2)
    first, second = attempts[handle.message_ids[0]][0], attempts[handle.message_ids[1]][0]
    assert second.trace_id == first.trace_id and first.span_id in _ancestors(spans, second)
    assert (first.status_code, second.status_code) == (STATUS_UNSET, STATUS_ERROR)
    assert not _attempt_spans(otlp_receiver, tracer_provider, handle.message_ids[2:], count=0)[1]


def test_a_piped_value_is_checked_when_the_step_arrives(
    producer: Producer, notes: redis.Redis[str], run: str
) -> None:
    # When a step's result breaks the next step's contract (a string piped as an integer)
    handle = pipeline(
        step("workflows.repeat", run=run, value=3),
        step("workflows.add_one", run=run, pipe_as="value"),
    ).send(producer)

    # Then the next step is rejected by the worker (not run), and the result says why
    with pytest.raises(TaskFailed) as failed:
        handle.result(timeout=20)
    assert (failed.value.task, failed.value.error_type) == ("workflows.add_one", "InvalidTaskArguments")
    assert _ran(notes, run) == ["repeat 3"]


def test_a_result_too_large_to_pipe_stops_the_pipeline(
    producer: Producer, worker: WorkflowWorker, notes: redis.Redis[str], run: str
) -> None:
    handle = pipeline(
        step("workflows.repeat", run=run, value=WORKER_MAX_MESSAGE_BYTES),
        step("workflows.add_one", run=run, pipe_as="value"),
    ).send(producer)

    with pytest.raises(TaskFailed) as failed:
        handle.result(timeout=20)
    assert (failed.value.task, failed.value.message_id) == ("workflows.repeat", handle.message_ids[0])
    assert failed.value.error_type == "NextStepNotSent"
    assert failed.value.error.startswith("result too large to pipe")
    assert _ran(notes, run) == [f"repeat {WORKER_MAX_MESSAGE_BYTES}"]
    wait_for(lambda: worker.count("the next step was not sent: result too large") == 1, 10, "the ERROR line")


def test_a_retried_step_sends_the_next_step_once(
    producer: Producer,
    notes: redis.Redis[str],
    run: str,
    otlp_receiver: OtlpReceiver,
    tracer_provider: TracerProvider,
) -> None:
    # When a pipeline's middle step fails once (ConnectionError, retried) and then succeeds
    handle = pipeline(
        step("workflows.add_one", run=run, value=1),
        step("workflows.flaky", run=run, pipe_as="value"),
        step("workflows.add_one", run=run, pipe_as="value"),
    ).send(producer)

    # Then the last step ran exactly once, with the retried step's result
    assert handle.result(timeout=20) == 3
    assert _ran(notes, run) == ["add_one 1", "flaky 2", "flaky 2", "add_one 2"]
    # And in the trace, the retry descends from the failed attempt, step 3 from the retry
    spans, attempts = _attempt_spans(otlp_receiver, tracer_provider, handle.message_ids, count=4)
    failed, retried = sorted(
        attempts[handle.message_ids[1]], key=lambda s: s.attributes["dramatiq.message.retries"]
    )
    (last,) = attempts[handle.message_ids[2]]
    assert failed.span_id in _ancestors(spans, retried) and retried.span_id in _ancestors(spans, last)
    assert (failed.status_code, retried.status_code) == (STATUS_ERROR, STATUS_UNSET)


def test_a_group_gives_every_members_result_in_order(
    producer: Producer, notes: redis.Redis[str], run: str
) -> None:
    handle = group(step("workflows.add_one", run=run, value=n) for n in range(6)).send(producer)

    assert handle.result(timeout=20) == [1, 2, 3, 4, 5, 6]
    assert sorted(_ran(notes, run)) == sorted(f"add_one {n}" for n in range(6))


def test_a_groups_completion_step_runs_once_with_the_results_in_order(
    producer: Producer, notes: redis.Redis[str], run: str
) -> None:
    # When a group of ten (run side by side by two processes) is followed by a completion step
    members = [step("workflows.add_one", run=run, value=n) for n in range(10)]
    handle = group(members).then(step("workflows.total", run=run, pipe_as="values")).send(producer)

    # Then the completion step got every member's result, in member order, and ran once
    assert handle.result(timeout=20) == sum(range(1, 11))
    ran = _ran(notes, run)
    assert [line for line in ran if line.startswith("total")] == [f"total {list(range(1, 11))}"]
    assert len(handle.message_ids) == 11


def test_a_failed_member_stops_the_completion_step(
    producer: Producer, notes: redis.Redis[str], run: str
) -> None:
    members = [step("workflows.add_one", run=run, value=1), step("workflows.fail", run=run, value=7)]
    handle = group(members).then(step("workflows.total", run=run, pipe_as="values")).send(producer)

    with pytest.raises(TaskFailed) as failed:
        handle.result(timeout=20)
    assert (failed.value.task, failed.value.message_id) == ("workflows.fail", handle.message_ids[1])
    assert not [line for line in _ran(notes, run) if line.startswith("total")]


def test_a_pipeline_cancelled_mid_way_runs_no_later_step(
    producer: Producer,
    notes: redis.Redis[str],
    run: str,
    otlp_receiver: OtlpReceiver,
    tracer_provider: TracerProvider,
) -> None:
    # Given a pipeline whose first step is running (its contract is not cancellable)
    handle = pipeline(
        step("workflows.wait", run=run, value=1),
        step("workflows.add_one", run=run, pipe_as="value"),
        step("workflows.add_one", run=run, pipe_as="value"),
    ).send(producer)
    wait_for(lambda: _ran(notes, run) == ["wait 1"], 10, "the first step to start")

    # When the pipeline is cancelled, then the first step is let finish
    reports = handle.cancel()
    notes.rpush(f"{NOTES}:{run}:go", "go")

    # Then the steps not yet run were cancelled: the result names step 2, which never ran
    assert [r.message_id for r in reports] == list(handle.message_ids)
    assert all(r.cancelled for r in reports[1:])
    with pytest.raises(TaskCancelled) as cancelled:
        handle.result(timeout=20)
    assert (cancelled.value.task, cancelled.value.message_id) == ("workflows.add_one", handle.message_ids[1])
    assert producer.result_of("workflows.wait", handle.message_ids[0], timeout=5) == 1
    assert _ran(notes, run) == ["wait 1"]
    # And the trace holds step 1 only: the cancelled steps were never sent
    _, attempts = _attempt_spans(otlp_receiver, tracer_provider, handle.message_ids, count=1)
    assert list(attempts) == [handle.message_ids[0]]


class _RecordingBroker:
    """What GroupCompletion uses of a broker: its middleware (Results) and enqueue, recorded."""

    def __init__(self, backend: RedisResultBackend) -> None:
        self.middleware = [Results(backend=backend)]
        self.enqueued: list[dramatiq.Message[Any]] = []
        self.actors: dict[str, Any] = {}  # none declared: a next step's queue is taken as its actor's

    def enqueue(self, message: dramatiq.Message[Any]) -> None:
        self.enqueued.append(message)


def test_a_group_member_counts_once_however_often_it_arrives_and_a_stranger_not_at_all(
    producer: Producer, rabbitmq_url: str, redis_url: str, run: str
) -> None:
    # Given a group of three on a queue no worker consumes, every member's result stored,
    # and the worker side of groups driven here (as Dramatiq's worker would call it)
    members = [step("workflows.idle", run=run, value=n) for n in range(3)]
    handle = group(members).then(step("workflows.total", run=run, pipe_as="values")).send(producer)
    published = _published(rabbitmq_url, handle)
    backend = RedisResultBackend(url=redis_url)
    broker = _RecordingBroker(backend)
    completion = GroupCompletion(load_settings(_env_file=None, REDIS_URL=redis_url))
    sent = [published[n] for n in range(3)]
    for number, message in enumerate(sent):
        backend.store_result(message, number * 10, 60_000)

    def arrive(number: int) -> None:
        proxy = MessageProxy(sent[number])
        completion.after_process_message(broker, proxy, result=number * 10)  # type: ignore[arg-type]

    # When members arrive, some of them again (redelivered after a lost ack), and a forged
    # message naming the group (a copy of a member under another id) arrives too
    for number in (0, 0, 1):
        arrive(number)
    forged = sent[0].copy(message_id=str(uuid.uuid4()))
    completion.after_process_message(broker, MessageProxy(forged), result=99)  # type: ignore[arg-type]
    assert broker.enqueued == []
    for number in (2, 2, 1, 0):
        arrive(number)

    # Then the completion step was sent once, with the members' results in member order
    [sent_completion] = broker.enqueued
    assert sent_completion.message_id == handle.message_ids[3]
    assert sent_completion.kwargs == {"run": run, "values": [0, 10, 20]}
    # And the group's done set expires with the group
    assert 0 < backend.client.pttl(f"greenroom-group:{handle.workflow_id}:done") <= 3_600_000
    backend.close()
    completion.rate_limiter_backend.client.close()


def test_a_group_count_lost_to_a_crash_is_recovered_from_the_done_set(
    producer: Producer, rabbitmq_url: str, redis_url: str, run: str
) -> None:
    # Given a group of two whose first member was counted in the done set, but the worker
    # died before the barrier's decrement (so the barrier alone would never release)
    handle = (
        group([step("workflows.idle", run=run, value=n) for n in range(2)])
        .then(step("workflows.total", run=run, pipe_as="values"))
        .send(producer)
    )
    published = _published(rabbitmq_url, handle)
    backend = RedisResultBackend(url=redis_url)
    broker = _RecordingBroker(backend)
    completion = GroupCompletion(load_settings(_env_file=None, REDIS_URL=redis_url))
    first, second = published
    backend.store_result(first, 1, 60_000)
    backend.store_result(second, 2, 60_000)
    backend.client.sadd(f"greenroom-group:{handle.workflow_id}:done", first.message_id)

    # When the second member arrives, then the first one is redelivered
    completion.after_process_message(broker, MessageProxy(second), result=2)  # type: ignore[arg-type]
    completion.after_process_message(broker, MessageProxy(first), result=1)  # type: ignore[arg-type]

    # Then the completion step was sent once
    assert [m.kwargs["values"] for m in broker.enqueued] == [[1, 2]]
    backend.close()
    completion.rate_limiter_backend.client.close()


def _published(rabbitmq_url: str, handle: WorkflowHandle) -> list[dramatiq.Message[Any]]:
    """The group members of ``handle`` as the producer published them, in order (taken off the queue)."""
    wait_for(
        lambda: _message_count(rabbitmq_url, IDLE_QUEUE) == len(handle.message_ids) - 1, 10, "the members"
    )
    by_id = {}
    for body in take_all(rabbitmq_url, IDLE_QUEUE):
        message = dramatiq.Message(**json.loads(body))
        by_id[message.message_id] = message
    return [by_id[message_id] for message_id in handle.message_ids[:-1]]


def test_one_bad_step_publishes_nothing(producer: Producer, rabbitmq_url: str, run: str) -> None:
    # Given: a queue no worker consumes
    def waiting() -> int:
        return _message_count(rabbitmq_url, IDLE_QUEUE)

    # When a pipeline and a group each hold one bad step after good ones
    with pytest.raises(InvalidTaskArguments, match="value"):
        pipeline(step("workflows.idle", run=run, value=1), step("workflows.idle", run=run, value="x")).send(
            producer
        )
    with pytest.raises(InvalidTaskArguments, match="value"):
        group([step("workflows.idle", run=run, value=1), step("workflows.idle", run=run)]).send(producer)

    # Then nothing reached the queue (a good group does: the count sees what is published)
    assert waiting() == 0
    group([step("workflows.idle", run=run, value=n) for n in range(2)]).send(producer)
    wait_for(lambda: waiting() == 2, 10, "the good group's two messages")
    _purge(rabbitmq_url, IDLE_QUEUE)


def test_one_trace_per_pipeline_each_step_descending_from_the_one_before(
    producer: Producer, otlp_receiver: OtlpReceiver, tracer_provider: TracerProvider, run: str
) -> None:
    handle = pipeline(
        step("workflows.add_one", run=run, value=1),
        step("workflows.add_one", run=run, pipe_as="value"),
        step("workflows.add_one", run=run, pipe_as="value"),
    ).send(producer)
    assert handle.result(timeout=20) == 4

    spans, consumers, send = _workflow_spans(handle, otlp_receiver, tracer_provider)
    assert {s.trace_id for s in consumers} == {send.trace_id}
    for number, span in enumerate(consumers, 1):
        assert span.attributes["greenroom.workflow.id"] == handle.workflow_id
        assert span.attributes["greenroom.workflow.kind"] == "pipeline"
        assert span.attributes["greenroom.workflow.step"] == number
        assert send.span_id in _ancestors(spans, span)
    for before, after in itertools.pairwise(consumers):
        assert before.span_id in _ancestors(spans, after), "a step's spans do not descend from the one before"


def test_one_trace_per_group_the_completion_descending_from_a_member(
    producer: Producer, otlp_receiver: OtlpReceiver, tracer_provider: TracerProvider, run: str
) -> None:
    members = [step("workflows.add_one", run=run, value=n) for n in range(3)]
    handle = group(members).then(step("workflows.total", run=run, pipe_as="values")).send(producer)
    assert handle.result(timeout=20) == 6

    spans, consumers, send = _workflow_spans(handle, otlp_receiver, tracer_provider)
    assert send.attributes.get("messaging.batch.message_count") == 3
    assert {s.trace_id for s in consumers} == {send.trace_id}
    assert all(send.span_id in _ancestors(spans, span) for span in consumers)
    member_ids = {span.span_id for span in consumers[:3]}
    assert len(member_ids & _ancestors(spans, consumers[3])) == 1, "the completion descends from one member"
    assert [s.attributes["greenroom.workflow.step"] for s in consumers] == [1, 2, 3, 4]


def _workflow_spans(
    handle: WorkflowHandle, receiver: OtlpReceiver, tracer_provider: TracerProvider
) -> tuple[dict[str, ReceivedSpan], list[ReceivedSpan], ReceivedSpan]:
    """Every span received by id, the steps' consumer spans in step order, and the send span."""
    tracer_provider.force_flush()

    def consumers() -> dict[str, ReceivedSpan]:
        received = receiver.consumer_spans(handle.message_ids)
        return {message_id: spans[-1] for message_id, spans in received.items()}

    wait_for(lambda: len(consumers()) == len(handle.message_ids), 15, "every step's consumer span")
    spans = {s.span_id: s for s in receiver.spans()}
    steps = [consumers()[message_id] for message_id in handle.message_ids]
    wait_for(lambda: steps[0].parent_span_id in {s.span_id for s in receiver.spans()}, 10, "the send span")
    spans = {s.span_id: s for s in receiver.spans()}
    send = spans[steps[0].parent_span_id]
    assert send.kind == "PRODUCER"
    return spans, steps, send


def _attempt_spans(
    receiver: OtlpReceiver, tracer_provider: TracerProvider, message_ids: Sequence[str], *, count: int
) -> tuple[dict[str, ReceivedSpan], dict[str, list[ReceivedSpan]]]:
    """Every span received by id, and the consumer spans of ``message_ids`` by message id (each
    attempt one), once ``count`` of them have arrived (with 0: what arrived within a second)."""
    tracer_provider.force_flush()
    if count:
        wait_for(
            lambda: sum(map(len, receiver.consumer_spans(message_ids).values())) >= count,
            15,
            f"{count} consumer spans",
        )
    else:
        time.sleep(1.0)  # a span that should not come: give the exporter its period
    return {s.span_id: s for s in receiver.spans()}, receiver.consumer_spans(message_ids)


def _ancestors(spans: dict[str, ReceivedSpan], span: ReceivedSpan) -> set[str]:
    found: set[str] = set()
    parent = spans.get(span.parent_span_id)
    while parent is not None and parent.span_id not in found:
        found.add(parent.span_id)
        parent = spans.get(parent.parent_span_id)
    return found


def _events_of(worker: WorkflowWorker, message_id: str, *, count: int) -> list[dict[str, Any]]:
    if count:
        wait_for(
            lambda: len([e for e in worker.task_events() if e.get("message_id") == message_id]) >= count,
            10,
            f"the task line of {message_id}",
        )
    return [e for e in worker.task_events() if e.get("message_id") == message_id]


def _message_count(rabbitmq_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0  # never declared: nothing was published to it
    finally:
        connection.close()


def _purge(rabbitmq_url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().queue_purge(queue)
    finally:
        connection.close()
