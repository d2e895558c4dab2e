"""A worker's part of workflows (:mod:`shared.workflows`): next steps, group completion, stop marks.

:class:`PipelineSteps`: after a step succeeds, its pipeline's next step (the message in
its ``greenroom_next`` option) is published, with the result as the argument its
``greenroom_pipe_as`` names; the consumer span is current, so the next step's spans
descend from this one. A next step that was cancelled is not published.

:class:`GroupCompletion` (Dramatiq's GroupCallbacks, on Dramatiq's Redis rate-limiter
backend): each member that succeeds adds its id to the group's done set and, the first
time only, waits at the group's barrier; the member that releases it reads every
member's result and publishes the completion step with them. The done set makes the
count idempotent (a redelivered member counts once) and also recovers a count a
crashed worker lost between the two; a ``:sent`` key taken with SET NX makes sure one
member publishes the completion step.

Either way, a step that finally fails or is cancelled leaves a mark
(:mod:`shared.result_marks`) under the result key of every step after it (and of a
group's completion step), so a producer waiting for the last result learns which step
stopped the workflow. Retries of a step do nothing here: later steps are sent once the
step succeeds, never twice for one success. A publish that fails after Dramatiq's
attempts fails the step's message (dead-lettered, ``greenroom dlq replay`` brings it back)
with one ERROR line, as :mod:`shared.runtime.retries` does for retries.

>>> later = {"queue_name": "default", "actor_name": "echo", "args": [], "kwargs": {},
...          "options": {"greenroom_next": {"queue_name": "default", "actor_name": "echo",
...          "args": [], "kwargs": {}, "options": {}, "message_id": "m-3"}}, "message_id": "m-2"}
>>> [m["message_id"] for m in chain_from(later)]
['m-2', 'm-3']
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis
from dramatiq.middleware import GroupCallbacks, Middleware
from dramatiq.rate_limits import Barrier
from dramatiq.results import Results

from observability.task_logging import was_cancelled
from shared.result_marks import cancelled_mark, stopped_mark
from shared.runtime.message_checks import MessageRejected, checked_message
from shared.service_refusals import outage_line
from shared.settings import Settings
from shared.task_policies import effective_policy
from shared.tasks import TASKS
from shared.workflows import (
    GROUP_CALLBACKS_OPTION,
    GROUP_UUID_OPTION,
    MAX_STEPS,
    NEXT_OPTION,
    PIPE_AS_OPTION,
    WORKFLOW_OPTION,
    group_key,
)

if TYPE_CHECKING:  # redis-py is imported when a group member first arrives
    from dramatiq.rate_limits.backends import RedisBackend

logger = logging.getLogger("greenroom.workflows")

#: The error type a mark names when a step succeeded but its next step could not be sent.
NOT_SENT = "NextStepNotSent"


def chain_from(first: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``first`` and every step it carries in its ``greenroom_next`` option (checked on arrival)."""
    chain: list[Mapping[str, Any]] = []
    current: Any = first
    while isinstance(current, Mapping) and len(chain) <= MAX_STEPS:
        chain.append(current)
        options = current.get("options")
        current = options.get(NEXT_OPTION) if isinstance(options, Mapping) else None
    return chain


def workflow_middleware(settings: Settings) -> list[Middleware]:
    """The worker middleware of workflows, in the order :func:`shared.broker.middleware_stack` lists them."""
    return [PipelineSteps(settings), GroupCompletion(settings)]


class _Marks:
    """Stores marks under the result keys of the steps a workflow will not run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def stop_after(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        later: Sequence[Mapping[str, Any]],
        exception: BaseException | None,
    ) -> None:
        """``message`` finally failed or was cancelled: mark every step in ``later``; a message
        that will retry (or was put back by a limit) marks nothing."""
        if was_cancelled(message):
            mark = cancelled_mark(message.actor_name, message.message_id)
        elif message.failed:
            error_type, error = (
                (type(exception).__name__, str(exception))
                if exception
                else ("SkipMessage", "skipped and dead-lettered")
            )
            mark = stopped_mark(message.actor_name, message.message_id, error_type=error_type, error=error)
        else:
            return
        self.store(broker, later, mark)
        logger.info(
            "Workflow %s stopped at message %s (task %s): %d later step(s) will not run",
            _workflow_id(message), message.message_id, message.actor_name, len(later),
        )  # fmt: skip

    def store(self, broker: dramatiq.Broker, steps: Sequence[Mapping[str, Any]], mark: Exception) -> None:
        backend = result_backend(broker)
        if backend is None:
            return
        for number, data in enumerate(steps):
            try:
                key_message = _key_message(data)
                backend.store_exception(key_message, mark, self._ttl_ms(key_message.actor_name))
            except Exception as error:  # a hook never raises into the worker
                logger.error(
                    "Could not store the workflow mark of message %s nor of the %d step(s) after it: %s",
                    data.get("message_id"), len(steps) - number - 1, outage_line(error),
                )  # fmt: skip
                return  # the backend rode out the outage as long as it may: the others would fail too

    def not_sent(
        self, broker: dramatiq.Broker, message: MessageProxy, later: Sequence[Mapping[str, Any]], why: str
    ) -> None:
        """``message`` succeeded but its next step cannot be sent: mark the steps after it."""
        logger.error(
            "Workflow %s stopped after message %s (task %s): the next step was not sent: %s",
            _workflow_id(message), message.message_id, message.actor_name, why,
        )  # fmt: skip
        self.store(
            broker,
            later,
            stopped_mark(message.actor_name, message.message_id, error_type=NOT_SENT, error=why),
        )

    def cancelled(
        self, broker: dramatiq.Broker, message: MessageProxy, later: Sequence[Mapping[str, Any]]
    ) -> None:
        """The next step (``later[0]``) was cancelled: not sent; it and the steps after it are marked."""
        first = later[0]
        logger.info(
            "Workflow %s: next step %s (task %s) was cancelled and is not sent",
            _workflow_id(message), first.get("message_id"), first.get("actor_name"),
        )  # fmt: skip
        self.store(broker, later, cancelled_mark(str(first.get("actor_name")), str(first.get("message_id"))))

    def _ttl_ms(self, actor_name: str) -> int:
        contract = TASKS.get(actor_name)
        if contract is None:
            return self.settings.RESULT_TTL_SECONDS * 1000
        return int(effective_policy(contract, self.settings)["result_ttl_seconds"].value * 1000)


class PipelineSteps(Middleware):
    """Publishes a pipeline step's next step when it succeeds; marks the later steps when it
    finally fails or is cancelled (see the module)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.marks = _Marks(settings)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        following = message.options.get(NEXT_OPTION)
        if following is None:
            return
        later = chain_from(following)
        if exception is not None or message.failed:
            self.marks.stop_after(broker, message, later, exception)
            return
        send_next(broker, message, later, result, self.marks, self.settings)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        following = message.options.get(NEXT_OPTION)
        if following is not None:
            self.marks.stop_after(broker, message, chain_from(following), None)


class GroupCompletion(GroupCallbacks):
    """Dramatiq's GroupCallbacks, counting each member once and publishing the completion
    step once, with every member's result (see the module)."""

    def __init__(self, settings: Settings) -> None:
        # GroupCallbacks.__init__ is not called: it reads an environment variable (only
        # shared.settings does here) and takes a backend this class builds lazily.
        self.settings = settings
        self.marks = _Marks(settings)
        # Dramatiq's group.run reads it; greenroom's groups keep the TTL their producer gave.
        self.barrier_ttl = settings.RESULT_TTL_SECONDS * 1000
        self._limiter: RedisBackend | None = None
        self._building = threading.Lock()

    @property  # GroupCallbacks sets it in its __init__, which is not called here
    def rate_limiter_backend(self) -> RedisBackend:  # type: ignore[override]
        """Dramatiq's Redis rate-limiter backend at REDIS_URL, built at first use (a worker
        without groups never connects)."""
        with self._building:
            if self._limiter is None:
                import redis
                from dramatiq.rate_limits.backends import RedisBackend

                from shared.results import SOCKET_TIMEOUT_SECONDS

                client = redis.Redis.from_url(
                    self.settings.redis_url,
                    socket_timeout=SOCKET_TIMEOUT_SECONDS,
                    socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
                )
                self._limiter = RedisBackend(client=client)
            return self._limiter

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        key = message.options.get(GROUP_UUID_OPTION)
        if key is None:
            return
        completion = _completion_of(message)
        if completion is None:
            return
        if exception is not None or message.failed:
            self.marks.stop_after(broker, message, [completion], exception)
            return
        import redis  # loaded by the rate-limiter backend, which _arrive builds

        try:
            self._arrive(broker, message, key, completion)
        except redis.RedisError as error:
            message.fail()
            logger.error(
                "Could not count group member %s at its barrier (Redis: %s); it is dead-lettered instead "
                "(greenroom dlq replay brings it back)",
                message.message_id, outage_line(error),
            )  # fmt: skip

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        completion = _completion_of(message) if message.options.get(GROUP_UUID_OPTION) else None
        if completion is not None:
            self.marks.stop_after(broker, message, [completion], None)

    def _arrive(
        self, broker: dramatiq.Broker, message: MessageProxy, key: str, completion: Mapping[str, Any]
    ) -> None:
        """Count ``message`` in (once), and publish the completion step if it completes the group."""
        client = self.rate_limiter_backend.client
        with client.pipeline(transaction=False) as pipe:
            pipe.pttl(key)
            pipe.get(f"{key}:members")
            ttl_ms, members_data = pipe.execute()
        members = _members(members_data)
        if members is None or ttl_ms <= 0:
            self.marks.not_sent(
                broker, message, [completion], "the group's barrier expired or was never created"
            )
            return
        if message.message_id not in {member_id for _queue, _actor, member_id in members}:
            logger.error(  # a forged or stray message must not count in another group
                "Message %s is not a member of group %s; it is not counted", message.message_id, key
            )
            return
        with client.pipeline() as pipe:  # MULTI: the count seen is this member's own
            pipe.sadd(f"{key}:done", message.message_id)
            pipe.pexpire(f"{key}:done", ttl_ms)  # never a key without an expiry
            pipe.scard(f"{key}:done")
            added, _expiring, count = pipe.execute()
        released = count - 1 >= len(members)  # the done set holds a placeholder
        if added:
            barrier = Barrier(self.rate_limiter_backend, key, ttl=ttl_ms)
            released = bool(barrier.wait(block=False)) or released
        if not released or not client.set(f"{key}:sent", message.message_id, nx=True, px=ttl_ms):
            return  # not the last member, or another one sends the completion step
        sent = False
        try:
            results = self._results(broker, members)
            if isinstance(results, str):
                self.marks.not_sent(broker, message, [completion], results)
                sent = True
            else:
                sent = send_next(broker, message, [completion], results, self.marks, self.settings)
        finally:
            if not sent:  # this member is dead-lettered: its replay may send the completion step
                client.delete(f"{key}:sent")

    @staticmethod
    def _results(broker: dramatiq.Broker, members: Sequence[Sequence[str]]) -> list[Any] | str:
        """Every member's stored result, in order (one pipelined read), or why not."""
        backend = result_backend(broker)
        if backend is None:
            return "no result backend"
        keys = [
            backend.build_message_key(_key_message({"queue_name": q, "actor_name": a, "message_id": i}))
            for q, a, i in members
        ]
        with backend.client.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.lindex(k, 0)
            stored = pipe.execute()
        results = []
        for number, data in enumerate(stored, 1):
            if data is None:
                return f"the result of group step {number} is gone (expired)"
            try:
                results.append(backend.unwrap_result(backend.encoder.decode(data)))
            except Exception as error:
                return f"the result of group step {number} cannot be read ({type(error).__name__})"
        return results


def send_next(
    broker: dramatiq.Broker,
    message: MessageProxy,
    later: Sequence[Mapping[str, Any]],
    result: Any,
    marks: _Marks,
    settings: Settings,
) -> bool:
    """Publish the next step (``later[0]``, the rest are the steps it carries) with ``result``
    as its piped argument, unless it was cancelled or cannot be built (then ``later`` is
    marked); False when its publish failed (``message`` is then failed: dead-lettered)."""
    try:
        next_message = _next_message(broker, later[0], result, settings.MAX_MESSAGE_BYTES)
    except _NotSendable as why:
        marks.not_sent(broker, message, later, str(why))
        return True
    cancellation = _cancellation(broker)
    if cancellation is not None and cancellation.is_cancelled(next_message.message_id):
        marks.cancelled(broker, message, later)
        return True
    try:
        broker.enqueue(next_message)
    except Exception as error:
        message.fail()
        logger.error(
            "Could not publish the next step %s of message %s (%s); message %s is dead-lettered "
            "instead (greenroom dlq replay brings it back)",
            next_message.message_id, message.message_id, outage_line(error), message.message_id,
        )  # fmt: skip
        return False
    return True


class _NotSendable(Exception):
    """The next step cannot be built from what the message carries and the result."""


def _next_message(broker: dramatiq.Broker, data: Any, result: Any, max_bytes: int) -> dramatiq.Message[Any]:
    """The next step built from ``data`` with ``result`` piped in, checked as a worker checks a
    message on arrival (what it would dead-letter there is never sent: the workflow stops here)."""
    try:
        next_message: dramatiq.Message[Any] = dramatiq.Message(**data)
        pipe_as = next_message.options.get(PIPE_AS_OPTION)
        kwargs = dict(next_message.kwargs)
        if isinstance(pipe_as, str):
            kwargs[pipe_as] = result
        next_message = next_message.copy(kwargs=kwargs, message_timestamp=current_millis())
        json.dumps(kwargs, allow_nan=False)
        body = next_message.encode()
    except (TypeError, ValueError, RecursionError) as error:
        raise _NotSendable(f"the result cannot be piped as JSON ({type(error).__name__})") from None
    if len(body) > max_bytes:
        raise _NotSendable(
            f"result too large to pipe: the next step would be {len(body)} bytes, "
            f"more than MAX_MESSAGE_BYTES ({max_bytes})"
        )

    def queue_of_actor(name: str) -> str | None:  # an actor another process type declares: its queue
        actor = broker.actors.get(name)
        return actor.queue_name if actor is not None else next_message.queue_name

    try:
        queue, now_ms = next_message.queue_name, current_millis()
        checked_message(body, queue, queue_of_actor, max_bytes=max_bytes, now_ms=now_ms)
    except MessageRejected as rejected:
        raise _NotSendable(f"the next step would be refused on arrival: {rejected}") from None
    return next_message


def _completion_of(message: MessageProxy) -> Mapping[str, Any] | None:
    """The completion message of a group member whose barrier key is its own group's (checked:
    a body's key must not point elsewhere in Redis)."""
    callbacks = message.options.get(GROUP_CALLBACKS_OPTION)
    workflow = message.options.get(WORKFLOW_OPTION)
    key = message.options.get(GROUP_UUID_OPTION)
    if not isinstance(workflow, Mapping) or key != group_key(str(workflow.get("id"))) or not callbacks:
        logger.error(
            "Message %s names a group barrier that is not its group's; no completion step", message.message_id
        )
        return None
    completion: Mapping[str, Any] = callbacks[0]
    return completion


def _members(data: bytes | None) -> list[list[str]] | None:
    try:
        members = json.loads(data) if data is not None else None
    except ValueError:
        return None
    if not isinstance(members, list) or not all(isinstance(m, list) and len(m) == 3 for m in members):
        return None
    return members


def _key_message(data: Mapping[str, Any]) -> dramatiq.Message[Any]:
    """A message with ``data``'s queue, actor and id: enough to build its result key."""
    return dramatiq.Message(
        queue_name=str(data["queue_name"]),
        actor_name=str(data["actor_name"]),
        args=(),
        kwargs={},
        options={},
        message_id=str(data["message_id"]),
    )


def _workflow_id(message: MessageProxy) -> str:
    workflow = message.options.get(WORKFLOW_OPTION)
    return str(workflow.get("id")) if isinstance(workflow, Mapping) else "?"


def result_backend(broker: dramatiq.Broker) -> Any:
    """The worker's result backend (its Results middleware's), or None."""
    return next((m.backend for m in broker.middleware if isinstance(m, Results)), None)


def _cancellation(broker: dramatiq.Broker) -> Any:
    from shared.runtime.cancellation import Cancellation

    return next((m for m in broker.middleware if isinstance(m, Cancellation)), None)
