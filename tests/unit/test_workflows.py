"""Workflows checked at send, and the messages they publish (no services: a producer that records)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.results import ResultFailure, ResultMissing, Results
from dramatiq.results.backends import StubBackend
from opentelemetry.sdk.trace import TracerProvider

import shared.workflows as workflows
from shared.cancellation import CANCELLED_OPTION
from shared.errors import InvalidParameter, InvalidTaskArguments, TaskCancelled, TaskFailed, UnknownTask
from shared.producer import Producer, group, pipeline, step
from shared.result_marks import raise_for_failure
from shared.runtime.cancellation import Cancellation
from shared.runtime.message_checks import check_fields
from shared.runtime.workflow_steps import (
    GroupCompletion,
    PipelineSteps,
    _next_message,
    _NotSendable,
    chain_from,
)
from shared.settings import load_settings
from shared.tasks import TASKS
from tests.e2e import workflow_tasks  # noqa: F401  # declares the workflows.* contracts


class RecordingProducer(Producer):
    """A Producer that records what it would register and publish instead of doing it."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(load_settings(_env_file=None, **settings), tracer_provider=TracerProvider())
        self.registered: list[dramatiq.Message[Any]] = []
        self.published: list[dramatiq.Message[Any]] = []

    def register_sent(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        self.registered.extend(messages)

    def publish_batch(
        self,
        messages: Sequence[dramatiq.Message[Any]],
        queue_name: str,
        options: Mapping[str, Any],
        *,
        register: bool = True,
    ) -> None:
        if register:
            self.register_sent(messages)
        self.published.extend(messages)


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProducer]:
    barriers: list[tuple[str, int]] = []
    monkeypatch.setattr(
        workflows, "_create_barrier", lambda _p, wid, members, _c: barriers.append((wid, len(members)))
    )
    recording = RecordingProducer()
    recording.barriers = barriers  # type: ignore[attr-defined]
    yield recording
    recording.close()


def _add(value: Any = None, **options: Any) -> workflows.Step:
    kwargs = {} if value is None else {"value": value}
    return step("workflows.add_one", run="r", **kwargs, **options)


def _queue_of_actor(name: str) -> str | None:
    contract = TASKS.get(name)
    return contract.queue if contract else None


def test_a_pipeline_publishes_its_first_step_carrying_the_others(producer: RecordingProducer) -> None:
    handle = pipeline(_add(1), _add(pipe_as="value"), _add(pipe_as="value")).send(producer)

    [first] = producer.published
    assert first.message_id == handle.message_ids[0]
    # every step registered (for cancel), in one go before the first is published
    assert [m.message_id for m in producer.registered] == list(handle.message_ids)
    chain = chain_from(first.asdict())
    assert [m["message_id"] for m in chain] == list(handle.message_ids)
    assert [m["options"]["greenroom_workflow"] for m in chain] == [
        {"id": handle.workflow_id, "kind": "pipeline", "step": n} for n in (1, 2, 3)
    ]
    assert "greenroom_pipe_as" not in chain[0]["options"]
    assert [m["options"]["greenroom_pipe_as"] for m in chain[1:]] == ["value", "value"]
    assert chain[1]["kwargs"] == {"run": "r"}  # the piped argument is left for the worker to check
    # And a worker accepts what it is given (the checks on arrival)
    check_fields(json.loads(first.encode()), "workflows", _queue_of_actor, int(time.time() * 1000))


def test_a_group_with_a_completion_step_carries_it_on_every_member(producer: RecordingProducer) -> None:
    handle = group([_add(1), _add(2)]).then(step("workflows.total", run="r", pipe_as="values")).send(producer)

    assert [m.message_id for m in producer.published] == list(handle.message_ids[:2])
    assert [m.message_id for m in producer.registered] == list(handle.message_ids)
    assert producer.barriers == [(handle.workflow_id, 2)]  # type: ignore[attr-defined]
    for number, member in enumerate(producer.published, 1):
        assert member.options["group_completion_uuid"] == f"greenroom-group:{handle.workflow_id}"
        [completion] = member.options["group_completion_callbacks"]
        assert completion["message_id"] == handle.message_ids[2]
        assert completion["options"]["greenroom_pipe_as"] == "values"
        assert member.options["greenroom_workflow"] == {
            "id": handle.workflow_id,
            "kind": "group",
            "step": number,
        }
        check_fields(json.loads(member.encode()), "workflows", _queue_of_actor, int(time.time() * 1000))


def test_a_group_without_a_completion_step_needs_no_barrier(producer: RecordingProducer) -> None:
    handle = group(_add(n) for n in range(3)).send(producer)

    assert len(producer.published) == 3 and producer.barriers == []  # type: ignore[attr-defined]
    assert all("group_completion_uuid" not in m.options for m in producer.published)
    assert handle.all_results


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda: pipeline(), "at least one step"),
        (lambda: group([]), "at least one step"),
        (lambda: pipeline(_add(1), pipeline(_add(2))), "step 2 is a Pipeline"),
        (lambda: group([_add(1), group([_add(2)])]), "step 2 is a Group"),
        (lambda: group(_add(1)), "iterable of step"),
        (lambda: group([_add(1)]).then(_add(2)).then(_add(3)), "at most one completion step"),
        (lambda: pipeline(*[_add(1)] * 101), "at most 100 steps"),
        (lambda: step("workflows.add_one", pipe_as=3), "pipe_as"),
    ],
)
def test_shapes_that_are_not_workflows_are_refused(build: Any, problem: str) -> None:
    with pytest.raises(InvalidParameter, match=problem):
        build()


@pytest.mark.parametrize(
    ("build", "error", "problem"),
    [
        (lambda: pipeline(_add(pipe_as="value")), InvalidParameter, "first step of a pipeline"),
        (
            lambda: pipeline(_add(1), _add(2, pipe_as="value")),
            InvalidParameter,
            "both as pipe_as and as an argument",
        ),
        (lambda: pipeline(_add(1), _add(pipe_as="valu")), InvalidParameter, "'valu' is not an argument"),
        (lambda: pipeline(_add(1), _add("x")), InvalidTaskArguments, "value"),
        (lambda: pipeline(_add(1), step("workflows.add_one", pipe_as="value")), InvalidTaskArguments, "run"),
        (lambda: pipeline(_add(1), _add(float("nan"))), InvalidTaskArguments, "value"),
        (lambda: pipeline(_add(1), step("nope")), UnknownTask, "nope"),
        (lambda: group([_add(1), _add(pipe_as="value")]), InvalidParameter, "a group member has no pipe_as"),
        (
            lambda: pipeline(_add(1), step("workflows.fire", run="r", pipe_as="value")),
            InvalidParameter,
            "the last step",
        ),
        (
            lambda: group([_add(1), step("workflows.fire", run="r", value=1)]),
            InvalidParameter,
            r"step 2 \(workflows.fire\)",
        ),
        (
            lambda: group([_add(1)]).then(step("workflows.fire", run="r", pipe_as="value")),
            InvalidParameter,
            "the completion step",
        ),
    ],
)
def test_one_bad_step_publishes_nothing(
    producer: RecordingProducer, build: Any, error: type[Exception], problem: str
) -> None:
    with pytest.raises(error, match=problem):
        build().send(producer)
    assert producer.published == [] and producer.registered == []
    assert producer.barriers == []  # type: ignore[attr-defined]


def test_a_step_that_stores_no_results_may_sit_inside_a_pipeline(producer: RecordingProducer) -> None:
    pipeline(step("workflows.fire", run="r", value=1), _add(5)).send(producer)
    assert len(producer.published) == 1


def test_the_size_of_the_first_step_counts_every_step_it_carries() -> None:
    small = RecordingProducer(MAX_MESSAGE_BYTES=2048)
    try:
        steps = [step("workflows.total", run="r", values=[999_999] * 100) for _ in range(3)]
        with pytest.raises(InvalidTaskArguments, match=r"step 1's message .* more than MAX_MESSAGE_BYTES"):
            pipeline(*steps).send(small)
        assert small.published == []
    finally:
        small.close()


def _carried(pipe_as: str | None = "value") -> dict[str, Any]:
    options = {"greenroom_pipe_as": pipe_as} if pipe_as else {}
    message = dramatiq.Message("workflows", "workflows.add_one", (), {"run": "r"}, options)
    return message.asdict()


def test_the_worker_pipes_the_result_into_the_next_step() -> None:
    carried = _carried()
    built = _next_message(RecordingBroker(), carried, 41, max_bytes=4096)
    assert built.kwargs == {"run": "r", "value": 41}
    assert built.message_id == carried["message_id"]
    assert built.message_timestamp >= carried["message_timestamp"]  # its age counts from now


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ("x" * 5000, "result too large to pipe"),
        (float("nan"), "cannot be piped as JSON"),
        (object(), "as JSON"),
    ],
)
def test_a_result_that_cannot_be_piped_stops_the_pipeline(result: Any, problem: str) -> None:
    with pytest.raises(_NotSendable, match=problem):
        _next_message(RecordingBroker(), _carried(), result, max_bytes=4096)


def test_a_step_without_pipe_as_ignores_the_result() -> None:
    assert _next_message(RecordingBroker(), _carried(None), 41, max_bytes=4096).kwargs == {"run": "r"}


def test_chain_from_stops_at_the_step_limit() -> None:
    message: dict[str, Any] = {"message_id": "last", "options": {}}
    for n in range(150):
        message = {"message_id": str(n), "options": {"greenroom_next": message}}
    assert len(chain_from(message)) == workflows.MAX_STEPS + 1
    assert json.dumps(chain_from({"options": None})) == '[{"options": null}]'


# The worker side: marks for later steps, the next step sent or not (a broker that records) --------


class RecordingBroker:
    """What the workflow middleware uses of a broker: its middleware (Results, Cancellation)
    and enqueue, recorded."""

    def __init__(self, *, cancelled: frozenset[str] = frozenset()) -> None:
        self.backend = StubBackend()
        self.middleware: list[Any] = [
            Results(backend=self.backend),
            _Cancelled(load_settings(_env_file=None), cancelled),
        ]
        self.enqueued: list[dramatiq.Message[Any]] = []
        self.actors: dict[
            str, Any
        ] = {}  # none declared here: a next step's own queue is taken as its actor's

    def enqueue(self, message: dramatiq.Message[Any]) -> None:
        self.enqueued.append(message)

    def result_of(self, data: Mapping[str, Any]) -> Any:
        """What a producer reading ``data``'s result gets (marks raised as TaskFailed/TaskCancelled)."""
        message = dramatiq.Message(
            data["queue_name"], data["actor_name"], (), {}, {}, message_id=data["message_id"]
        )
        try:
            return self.backend.get_result(message)
        except ResultFailure as failure:
            raise_for_failure(data["actor_name"], data["message_id"], failure)


class _Cancelled(Cancellation):
    def __init__(self, settings: Any, ids: frozenset[str]) -> None:
        super().__init__(settings)
        self.ids = ids

    def is_cancelled(self, message_id: str) -> bool:
        return message_id in self.ids


def _three_steps(producer: RecordingProducer) -> tuple[MessageProxy, list[Mapping[str, Any]]]:
    pipeline(_add(1), _add(pipe_as="value"), _add(pipe_as="value")).send(producer)
    [first] = producer.published
    return MessageProxy(first), chain_from(first.options["greenroom_next"])


def test_a_step_that_finally_fails_marks_every_later_step(producer: RecordingProducer) -> None:
    broker, steps = RecordingBroker(), PipelineSteps(load_settings(_env_file=None))
    first, later = _three_steps(producer)
    first.fail()
    steps.after_process_message(broker, first, exception=ValueError("no rows"))  # type: ignore[arg-type]

    assert broker.enqueued == []
    for data in later:
        with pytest.raises(TaskFailed) as failed:
            broker.result_of(data)
        assert (failed.value.task, failed.value.message_id) == ("workflows.add_one", first.message_id)
        assert (failed.value.error_type, failed.value.error) == ("ValueError", "no rows")


def test_a_step_that_will_retry_marks_nothing_and_sends_nothing(producer: RecordingProducer) -> None:
    broker, steps = RecordingBroker(), PipelineSteps(load_settings(_env_file=None))
    first, later = _three_steps(producer)
    steps.after_process_message(broker, first, exception=ConnectionError("away"))  # type: ignore[arg-type]

    assert broker.enqueued == []
    with pytest.raises(ResultMissing):
        broker.result_of(later[0])


def test_a_step_skipped_because_it_was_cancelled_marks_the_later_steps_cancelled(
    producer: RecordingProducer,
) -> None:
    broker, steps = RecordingBroker(), PipelineSteps(load_settings(_env_file=None))
    first, later = _three_steps(producer)
    first.options[CANCELLED_OPTION] = True
    steps.after_skip_message(broker, first)  # type: ignore[arg-type]

    for data in later:
        with pytest.raises(TaskCancelled) as cancelled:
            broker.result_of(data)
        assert cancelled.value.message_id == first.message_id


def test_a_cancelled_next_step_is_not_sent(producer: RecordingProducer) -> None:
    first, later = _three_steps(producer)
    broker = RecordingBroker(cancelled=frozenset({later[0]["message_id"]}))
    PipelineSteps(load_settings(_env_file=None)).after_process_message(broker, first, result=2)  # type: ignore[arg-type]

    assert broker.enqueued == []
    for data in later:  # it and the step after it, both naming it
        with pytest.raises(TaskCancelled) as cancelled:
            broker.result_of(data)
        assert cancelled.value.message_id == later[0]["message_id"]


def test_a_step_that_succeeds_sends_the_next_one_with_its_result(producer: RecordingProducer) -> None:
    broker = RecordingBroker()
    first, later = _three_steps(producer)
    PipelineSteps(load_settings(_env_file=None)).after_process_message(broker, first, result=2)  # type: ignore[arg-type]

    [sent] = broker.enqueued
    assert (sent.message_id, sent.kwargs) == (later[0]["message_id"], {"run": "r", "value": 2})
    assert chain_from(sent.options["greenroom_next"]) == later[1:]


def test_a_result_a_worker_would_refuse_on_arrival_stops_the_pipeline_here(
    producer: RecordingProducer,
) -> None:
    # A lone surrogate (os.listdir's name for a file not in UTF-8) is escaped by json.dumps,
    # but a consumer dead-letters such a body: the next step is not sent, the later ones marked
    broker = RecordingBroker()
    first, later = _three_steps(producer)
    PipelineSteps(load_settings(_env_file=None)).after_process_message(broker, first, result="caf\udce9")  # type: ignore[arg-type]

    assert broker.enqueued == []
    for data in later:
        with pytest.raises(TaskFailed) as failed:
            broker.result_of(data)
        assert (failed.value.message_id, failed.value.error_type) == (first.message_id, "NextStepNotSent")
        assert "refused on arrival: body: holds a lone UTF-16 surrogate escape" in failed.value.error


def test_a_next_step_whose_publish_fails_dead_letters_the_step(producer: RecordingProducer) -> None:
    broker = RecordingBroker()
    broker.enqueue = _refuse  # type: ignore[method-assign]
    first, _later = _three_steps(producer)
    PipelineSteps(load_settings(_env_file=None)).after_process_message(broker, first, result=2)  # type: ignore[arg-type]

    assert first.failed


def _refuse(message: dramatiq.Message[Any]) -> None:
    raise ConnectionError("RabbitMQ is away")


def _group_member(producer: RecordingProducer) -> tuple[MessageProxy, Mapping[str, Any]]:
    group([_add(1), _add(2)]).then(step("workflows.total", run="r", pipe_as="values")).send(producer)
    member = producer.published[0]
    return MessageProxy(member), member.options["group_completion_callbacks"][0]


def test_a_cancelled_group_member_marks_the_completion_step_cancelled(producer: RecordingProducer) -> None:
    broker, completion = RecordingBroker(), GroupCompletion(load_settings(_env_file=None))
    member, completion_data = _group_member(producer)
    member.options[CANCELLED_OPTION] = True
    completion.after_skip_message(broker, member)  # type: ignore[arg-type]

    with pytest.raises(TaskCancelled) as cancelled:
        broker.result_of(completion_data)
    assert cancelled.value.message_id == member.message_id
    assert completion._limiter is None  # no Redis connection was needed


def test_a_member_naming_another_groups_barrier_is_ignored(producer: RecordingProducer) -> None:
    broker, completion = RecordingBroker(), GroupCompletion(load_settings(_env_file=None))
    member, completion_data = _group_member(producer)
    member.options["group_completion_uuid"] = "someone-elses-key"
    member.fail()
    completion.after_process_message(broker, member, exception=ValueError("x"))  # type: ignore[arg-type]

    with pytest.raises(ResultMissing):
        broker.result_of(completion_data)
    assert completion._limiter is None
