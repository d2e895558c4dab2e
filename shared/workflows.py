"""Pipelines and groups of tasks, every step checked against its contract before anything is sent.

A :func:`pipeline` runs its steps one after the other, each step able to receive the
result of the one before as a keyword argument (``pipe_as``); a :func:`group` runs
its steps side by side and may be followed by one completion step (:meth:`Group.then`)
that runs once every member has succeeded, receiving their results in order. With
RabbitMQ, Redis and a worker running::

    from shared.producer import group, pipeline, step

    handle = pipeline(
        step("echo", payload={"x": 1}),
        step("echo", pipe_as="payload"),   # gets the first step's result as `payload`
    ).send()
    handle.result(timeout=30)              # {'x': 1}
    group([step("echo", payload=n) for n in range(3)]).send().result()   # [0, 1, 2]
    group([step("echo", payload=n) for n in range(3)]).then(step("echo", pipe_as="payload")).send()

Everything is checked at ``send``, before anything is published (one bad step and
nothing is): each step's arguments against its contract (a piped argument must be one
the contract has; its value is checked by the worker when it arrives), strict JSON,
the message size, and that every step whose result is read stores results. A worker
(:mod:`shared.runtime.workflow_steps`) sends each next step when the one before
succeeds; a step that finally fails or is cancelled stops the workflow and the
handle's ``result`` raises TaskFailed or TaskCancelled naming that step.

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from shared.producer import Producer
>>> from shared.settings import load_settings
>>> producer = Producer(load_settings(_env_file=None), tracer_provider=TracerProvider())
>>> pipeline(step("echo", payload=1), step("echo", payload=2, pipe_as="payload")).send(producer)
Traceback (most recent call last):
  ...
shared.errors.InvalidParameter: steps: step 2 (echo) gets 'payload' both as pipe_as and as an argument
>>> pipeline(step("echo", payload=1), pipeline(step("echo", payload=2)))
Traceback (most recent call last):
  ...
shared.errors.InvalidParameter: steps: step 2 is a Pipeline; a workflow's steps are step(...)s ...
>>> group([step("echo", payload=1), step("echo", payload=2, pipe_as="payload")]).send(producer)
Traceback (most recent call last):
  ...
shared.errors.InvalidParameter: steps: step 2 (echo): a group member has no pipe_as
>>> producer.close()
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import dramatiq
from dramatiq.rate_limits import Barrier
from pydantic import ValidationError, create_model

from shared.errors import InvalidParameter, InvalidTaskArguments, PublishError
from shared.producer_checks import check_strict_json, check_unicode, timeout_seconds
from shared.service_refusals import outage_line
from shared.tasks import TaskArguments, TaskContract, get_task

if TYPE_CHECKING:
    from shared.cancellation import CancelReport
    from shared.producer import Producer

#: Message options of a workflow step (checked on arrival by :mod:`shared.runtime.option_checks`).
NEXT_OPTION = "greenroom_next"  # the next step of a pipeline: a whole message
PIPE_AS_OPTION = "greenroom_pipe_as"  # the argument the previous result (or results) arrive as
WORKFLOW_OPTION = "greenroom_workflow"  # {"id": ..., "kind": "pipeline" or "group", "step": n}
#: Dramatiq's GroupCallbacks options: the group's barrier key and its completion message.
GROUP_UUID_OPTION = "group_completion_uuid"
GROUP_CALLBACKS_OPTION = "group_completion_callbacks"

#: Prefix of a group's Redis keys: the barrier ``<prefix><id>`` (Dramatiq's, with its
#: ``@events`` list), ``<prefix><id>:members``, ``:done`` and ``:sent`` (shared.runtime.workflow_steps).
GROUP_KEY_PREFIX = "greenroom-group:"
#: The most steps a pipeline, and the most members a group, may have.
MAX_STEPS = 100

Kind = Literal["pipeline", "group"]


def group_key(workflow_id: str) -> str:
    """The barrier key of the group ``workflow_id`` (the prefix of its other keys).

    >>> group_key("5f0c")
    'greenroom-group:5f0c'
    """
    return f"{GROUP_KEY_PREFIX}{workflow_id}"


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a workflow: ``task`` with ``kwargs``, and ``pipe_as``, the argument the
    previous step's result (a completion step: every member's, in order) arrives as."""

    task: str
    kwargs: Mapping[str, Any]
    pipe_as: str | None = None


def step(task: str, /, *, pipe_as: str | None = None, **kwargs: Any) -> Step:
    """One step: ``task`` with ``kwargs`` (checked against its contract at send), and the
    previous result as the argument ``pipe_as``.

    >>> step("echo", pipe_as="payload")
    Step(task='echo', kwargs={}, pipe_as='payload')
    """
    if not isinstance(task, str):
        raise InvalidParameter("task", f"must be a task name, got {type(task).__name__}")
    if pipe_as is not None and not isinstance(pipe_as, str):
        raise InvalidParameter("pipe_as", f"must be an argument name, got {type(pipe_as).__name__}")
    return Step(task, kwargs, pipe_as)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Steps run one after the other (see :func:`pipeline`)."""

    steps: tuple[Step, ...]

    def send(self, producer: Producer | None = None) -> WorkflowHandle:
        """Check every step, then publish the first (carrying the others); see the module.
        For example::

            pipeline(step("echo", payload=1), step("echo", pipe_as="payload")).send().result()   # 1
        """
        producer = _producer(producer)
        contracts = _contracts(self.steps)
        if self.steps[0].pipe_as is not None:
            raise InvalidParameter("steps", "the first step of a pipeline has no result to receive (pipe_as)")
        _require_results(contracts[-1], "the last step")
        workflow_id = uuid.uuid4().hex
        messages: list[dramatiq.Message[Any]] = []
        following: dict[str, Any] | None = None
        for number in range(len(self.steps), 0, -1):  # the last step first: each carries the next
            options = _step_options(workflow_id, "pipeline", number, self.steps[number - 1])
            if following is not None:
                options[NEXT_OPTION] = following
            message = _message(contracts[number - 1], self.steps[number - 1], number, options, producer)
            messages.insert(0, message)
            following = message.asdict()
        producer.register_sent(messages)  # every step, in one command: the later ones are sent by workers
        producer.publish_batch(messages[:1], messages[0].queue_name, {}, register=False)
        return WorkflowHandle(workflow_id, "pipeline", _ids(messages), producer, all_results=False)


@dataclass(frozen=True, slots=True)
class Group:
    """Steps run side by side, and optionally a completion step (see :func:`group`)."""

    members: tuple[Step, ...]
    completion: Step | None = field(default=None)

    def then(self, completion: Step) -> Group:
        """The group followed by ``completion``: it runs once, when every member has succeeded,
        and receives their results in order as its ``pipe_as`` argument (if it has one).

        >>> group([step("echo", payload=1)]).then(step("echo", pipe_as="payload")).completion.task
        'echo'
        """
        if self.completion is not None:
            raise InvalidParameter("then", "a group has at most one completion step")
        _check_steps((completion,))
        return Group(self.members, completion)

    def send(self, producer: Producer | None = None) -> WorkflowHandle:
        """Check every step, then publish the members as one batch; see the module. For example::

        group([step("echo", payload=n) for n in range(3)]).send().result()   # [0, 1, 2]
        """
        producer = _producer(producer)
        contracts = _contracts(self.members)
        for number, (member, contract) in enumerate(zip(self.members, contracts, strict=True), 1):
            if member.pipe_as is not None:
                raise InvalidParameter(
                    "steps", f"step {number} ({member.task}): a group member has no pipe_as"
                )
            _require_results(contract, f"step {number}")
        workflow_id = uuid.uuid4().hex
        completion = self._completion_message(workflow_id, producer)
        shared_options: dict[str, Any] = {}
        if completion is not None:  # every member carries it, and the barrier's key
            shared_options = {
                GROUP_UUID_OPTION: group_key(workflow_id),
                GROUP_CALLBACKS_OPTION: [completion.asdict()],
            }
        members = [
            _message(
                contract,
                member,
                number,
                _step_options(workflow_id, "group", number, member, shared_options),
                producer,
            )
            for number, (member, contract) in enumerate(zip(self.members, contracts, strict=True), 1)
        ]
        producer.register_sent([*members, *([completion] if completion is not None else [])])
        if completion is not None:
            _create_barrier(producer, workflow_id, members, [*contracts, get_task(completion.actor_name)])
        producer.publish_batch(members, members[0].queue_name, {}, register=False)
        ids = _ids([*members, *([completion] if completion is not None else [])])
        return WorkflowHandle(workflow_id, "group", ids, producer, all_results=completion is None)

    def _completion_message(self, workflow_id: str, producer: Producer) -> dramatiq.Message[Any] | None:
        """The checked message of the completion step (the step after the last member), if any."""
        if self.completion is None:
            return None
        (contract,) = _contracts((self.completion,))
        _require_results(contract, "the completion step")
        number = len(self.members) + 1
        options = _step_options(workflow_id, "group", number, self.completion)
        return _message(contract, self.completion, number, options, producer)


def pipeline(*steps: Step) -> Pipeline:
    """Steps run one after the other, each receiving the previous result if it has a ``pipe_as``.

    >>> len(pipeline(step("echo", payload=1), step("echo", pipe_as="payload")).steps)
    2
    >>> pipeline()
    Traceback (most recent call last):
      ...
    shared.errors.InvalidParameter: steps: a workflow needs at least one step
    """
    return Pipeline(_check_steps(steps))


def group(steps: Iterable[Step]) -> Group:
    """Steps run side by side; ``.then(step(...))`` adds a completion step.

    >>> len(group(step("echo", payload=n) for n in range(3)).members)
    3
    """
    if isinstance(steps, Step) or not isinstance(steps, Iterable):
        raise InvalidParameter("steps", f"group takes an iterable of step(...)s, got {type(steps).__name__}")
    return Group(_check_steps(tuple(steps)))


@dataclass(frozen=True, slots=True)
class WorkflowHandle:
    """A sent workflow: its id, its messages' ids (in order: the steps; a group's members
    then its completion step) and ways to wait for its result or cancel it."""

    workflow_id: str
    kind: Kind
    steps: tuple[tuple[str, str], ...]  # (task, message id) of each step
    producer: Producer
    all_results: bool  # a group without a completion step: every member's result

    @property
    def message_ids(self) -> tuple[str, ...]:
        """The message id of every step, in order."""
        return tuple(message_id for _, message_id in self.steps)

    def result(self, timeout: float = 10.0) -> Any:
        """The last step's result (a group without a completion step: the list of every
        member's, in order, all within ``timeout``). Raises TaskFailed or TaskCancelled
        naming the step that failed or was cancelled, ResultTimeout when the result is not
        there in time. For example::

            handle.result(timeout=30)   # the last step's return value
        """
        seconds = timeout_seconds(timeout)
        if not self.all_results:
            task, message_id = self.steps[-1]
            return self.producer.result_of(task, message_id, timeout=seconds)
        deadline = time.monotonic() + seconds
        return [
            self.producer.result_of(task, message_id, timeout=deadline - time.monotonic())
            for task, message_id in self.steps
        ]

    def cancel(self) -> list[CancelReport]:
        """Cancel every step not yet run (a step already finished reports "finished").
        For example::

            [report.status for report in handle.cancel()]   # ['finished', 'cancelled', 'cancelled']
        """
        return self.producer.cancel(*self.message_ids)


def _producer(producer: Producer | None) -> Producer:
    from shared.producer import Producer, default_producer  # shared.producer imports this module

    if producer is None:
        return default_producer()
    if not isinstance(producer, Producer):
        raise InvalidParameter("producer", f"must be a Producer, got {type(producer).__name__}")
    return producer


def _check_steps(steps: Sequence[object]) -> tuple[Step, ...]:
    if not steps:
        raise InvalidParameter("steps", "a workflow needs at least one step")
    if len(steps) > MAX_STEPS:
        raise InvalidParameter("steps", f"a workflow has at most {MAX_STEPS} steps, got {len(steps)}")
    for number, item in enumerate(steps, 1):
        if not isinstance(item, Step):
            raise InvalidParameter(
                "steps",
                f"step {number} is a {type(item).__name__}; a workflow's steps are step(...)s "
                "(workflows do not nest)",
            )
    return tuple(steps)  # type: ignore[arg-type]  # every item is a Step


def _contracts(steps: Sequence[Step]) -> list[TaskContract]:
    return [get_task(s.task) for s in steps]


def _require_results(contract: TaskContract, which: str) -> None:
    if not contract.store_results:
        raise InvalidParameter(
            "steps",
            f"{which} ({contract.name}) stores no results; its result is read, so its contract "
            "needs store_results=True",
        )


def _step_options(
    workflow_id: str, kind: Kind, number: int, item: Step, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    options: dict[str, Any] = {
        WORKFLOW_OPTION: {"id": workflow_id, "kind": kind, "step": number},
        **(extra or {}),
    }
    if item.pipe_as is not None:
        options[PIPE_AS_OPTION] = item.pipe_as
    return options


def _message(
    contract: TaskContract, item: Step, number: int, options: dict[str, Any], producer: Producer
) -> dramatiq.Message[Any]:
    """The checked message of step ``number``: its arguments (all but the piped one) valid
    and strict JSON, the message within MAX_MESSAGE_BYTES."""
    if not isinstance(item.kwargs, Mapping):
        raise InvalidTaskArguments(contract.name, f"step {number}: kwargs must be a mapping of arguments")
    if item.pipe_as is not None:
        if item.pipe_as not in contract.arguments.model_fields:
            raise InvalidParameter(
                "steps",
                f"step {number} ({contract.name}): pipe_as {item.pipe_as!r} is not an argument of the task",
            )
        if item.pipe_as in item.kwargs:
            raise InvalidParameter(
                "steps",
                f"step {number} ({contract.name}) gets {item.pipe_as!r} both as pipe_as and as an argument",
            )
    try:
        check_unicode(contract, item.kwargs)
        arguments = _arguments(contract, item)
        check_strict_json(contract, arguments)
    except InvalidTaskArguments as error:  # which step, as every other check here says
        raise InvalidTaskArguments(contract.name, f"step {number}: {error.problems}") from None
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=contract.queue, actor_name=contract.name, args=(), kwargs=arguments, options=options
    )
    size = len(message.encode())
    if size > producer.settings.MAX_MESSAGE_BYTES:
        raise InvalidTaskArguments(
            contract.name,
            f"step {number}'s message (with the steps it carries) is {size} bytes, more than "
            f"MAX_MESSAGE_BYTES ({producer.settings.MAX_MESSAGE_BYTES})",
        )
    return message


def _arguments(contract: TaskContract, item: Step) -> dict[str, Any]:
    """``item``'s arguments validated by its contract, the piped one left out."""
    if item.pipe_as is None:
        return contract.validate(item.kwargs)
    model = _without_argument(contract.arguments, item.pipe_as)
    try:
        arguments = model.model_validate(dict(item.kwargs)).model_dump(mode="json")
    except ValidationError as error:
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
            for e in error.errors(include_url=False, include_input=False)
        )
        raise InvalidTaskArguments(contract.name, summary) from None
    arguments.pop(item.pipe_as, None)
    return arguments


@functools.lru_cache(maxsize=256)
def _without_argument(model: type[TaskArguments], name: str) -> type[TaskArguments]:
    """``model`` with the argument ``name`` optional and unchecked (it is piped in later)."""
    relaxed: type[TaskArguments] = create_model(  # type: ignore[call-overload]
        f"{model.__name__}Piped", __base__=model, **{name: (Any, None)}
    )
    return relaxed


def _create_barrier(
    producer: Producer,
    workflow_id: str,
    members: Sequence[dramatiq.Message[Any]],
    contracts: Sequence[TaskContract],
) -> None:
    """Create the group's barrier (Dramatiq's, ``len(members)`` parties) and record its members
    (for reading their results) and its done set, all expiring with the longest result TTL."""
    # Each step's result TTL: the contract's, else RESULT_TTL_SECONDS (as shared.task_policies says).
    ttl_ms = 1000 * max(c.result_ttl_seconds or producer.settings.RESULT_TTL_SECONDS for c in contracts)
    key = group_key(workflow_id)
    entries = json.dumps([[m.queue_name, m.actor_name, m.message_id] for m in members])
    # Imported here: a worker imports this module (its option names), and redis-py only at boot.
    import redis
    from dramatiq.rate_limits.backends import RedisBackend

    client = producer.backend.client
    try:
        Barrier(RedisBackend(client=client), key, ttl=ttl_ms).create(len(members))
        with client.pipeline() as pipe:
            pipe.set(f"{key}:members", entries, px=ttl_ms)
            pipe.sadd(f"{key}:done", "")  # a placeholder, so that the set has its TTL from the start
            pipe.pexpire(f"{key}:done", ttl_ms)
            pipe.execute()
    except redis.RedisError as error:
        raise PublishError(f"could not create the group's barrier in Redis: {outage_line(error)}") from None


def _ids(messages: Sequence[dramatiq.Message[Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((m.actor_name, m.message_id) for m in messages)
