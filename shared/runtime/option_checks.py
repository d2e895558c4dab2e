"""Checks on the options of a message: each one a middleware of greenroom's stack reads.

Options that are a task's policy (retries, backoff, time limit, age limit,
result TTL, callbacks) are the contract's to set, never a message's; the
others must have the type and range their middleware expects, and a
``pipe_target`` is a whole message, checked as one.

>>> check_options({"retries": 2, "eta": 1764590400000}, {}.get, now_ms=1764590400000)
>>> check_options({"max_retries": 100}, {}.get, now_ms=1764590400000)
Traceback (most recent call last):
  ...
shared.runtime.rejections.MessageRejected: options.max_retries: is the task's policy ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from shared.runtime.rejections import MessageRejected, check_whole_number, excerpt, kind

#: Millisecond bounds for durations and times carried in options.
DAY_MS = 86_400_000
#: How far in the future a message's ``eta`` may lie (Dramatiq's longest backoff).
MAX_ETA_AHEAD_MS = 7 * DAY_MS
#: How far a message's timestamps may lie from this worker's clock: ahead (clock skew) and behind.
MAX_CLOCK_SKEW_MS = 3_600_000
MAX_MESSAGE_AGE_MS = 366 * DAY_MS
#: The most steps a pipeline (``pipe_target`` within ``pipe_target`` ...) may have.
MAX_PIPELINE_STEPS = 100
#: The most completion messages a group member carries, and the highest step number of a workflow.
MAX_COMPLETION_CALLBACKS = 1
MAX_WORKFLOW_STEPS = 100_000
#: Longest identifier (a workflow or group id, the argument a step's result is piped as).
MAX_KEY_CHARS = 100

#: The trace-context carrier (W3C traceparent, tracestate, baggage): its size per entry and in all.
MAX_CARRIER_ENTRIES = 8
MAX_CARRIER_KEY_CHARS = 64
MAX_CARRIER_VALUE_CHARS = 8192
TRACE_CONTEXT_OPTION = "greenroom_trace_context"

#: A schedule's name, as ``shared.schedules`` declares them.
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

QueueOfActor = Callable[[str], "str | None"]


OptionCheck = Callable[[str, Any, QueueOfActor, int], None]


def _integer(low: int, high: int) -> OptionCheck:
    def check(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
        check_whole_number(name, value, low, high, where="options.")

    return check


def _octet(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    """An AMQP octet (a message priority): an integer from 0 to 255, not a float (pika packs it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        what = excerpt(value) if isinstance(value, float) else kind(value)
        raise MessageRejected(f"options.{name}", f"must be an integer from 0 to 255, not {what}")
    check_whole_number(name, value, 0, 255, where="options.")


def _boolean(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    if not isinstance(value, bool):
        raise MessageRejected(f"options.{name}", f"must be true or false, not {kind(value)}")


def _text(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    if not isinstance(value, str):
        raise MessageRejected(f"options.{name}", f"must be a string, not {kind(value)}")


def _eta(name: str, value: Any, _queue_of_actor: QueueOfActor, now_ms: int) -> None:
    check_whole_number(name, value, 0, now_ms + MAX_ETA_AHEAD_MS, where="options.")


def _recent(name: str, value: Any, _queue_of_actor: QueueOfActor, now_ms: int) -> None:
    """A time this message was (re)queued or became due: within a year behind and an eta ahead."""
    low, high = now_ms - MAX_MESSAGE_AGE_MS, now_ms + MAX_ETA_AHEAD_MS + MAX_CLOCK_SKEW_MS
    check_whole_number(name, value, low, high, where="options.")


def _pipe_target(name: str, value: Any, queue_of_actor: QueueOfActor, now_ms: int) -> None:
    """The next message of a pipeline (Dramatiq's ``pipe_target``, greenroom's ``greenroom_next``):
    a whole message, sent on to its own actor's queue."""
    if not isinstance(value, dict):
        raise MessageRejected(f"options.{name}", f"must be a message object, not {kind(value)}")
    if _pipeline_steps(value, name) > MAX_PIPELINE_STEPS:
        raise MessageRejected(f"options.{name}", f"a pipeline of more than {MAX_PIPELINE_STEPS} steps")
    _check_message(f"options.{name}", value, queue_of_actor, now_ms, chained_by=name)


def _check_message(
    field: str, value: Any, queue_of_actor: QueueOfActor, now_ms: int, *, chained_by: str | None = None
) -> None:
    """``value`` is a whole message (one a middleware will publish), sent to its actor's queue."""
    if not isinstance(value, dict):
        raise MessageRejected(field, f"must be a message object, not {kind(value)}")
    target_queue = value.get("queue_name")
    if not isinstance(target_queue, str):
        raise MessageRejected(f"{field}.queue_name", "must be a string")
    try:
        from shared.runtime.message_checks import check_fields  # a message within a message

        check_fields(value, target_queue, queue_of_actor, now_ms)
    except MessageRejected as inner:
        chain = f"options.{chained_by}"
        nested = chain if chained_by and inner.field.startswith(chain) else inner.field
        raise MessageRejected(f"{field}.{nested}", inner.reason) from None


def _pipeline_steps(target: Any, chained_by: str) -> int:
    """How many messages are chained from ``target`` on (counted without recursion)."""
    steps = 0
    while isinstance(target, dict) and steps <= MAX_PIPELINE_STEPS:
        steps += 1
        options = target.get("options")
        target = options.get(chained_by) if isinstance(options, dict) else None
    return steps


def _completion_callbacks(name: str, value: Any, queue_of_actor: QueueOfActor, now_ms: int) -> None:
    """Dramatiq's ``group_completion_callbacks``: the messages a group's last member sends."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_COMPLETION_CALLBACKS:
        raise MessageRejected(
            f"options.{name}", f"must be a list of 1 to {MAX_COMPLETION_CALLBACKS} messages"
        )
    for index, callback in enumerate(value):
        _check_message(f"options.{name}[{index}]", callback, queue_of_actor, now_ms)


def _key(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    """An identifier that becomes part of a Redis key or an argument name: a short string."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_CHARS:
        raise MessageRejected(f"options.{name}", f"must be a string of 1 to {MAX_KEY_CHARS} chars")


def _workflow(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    """A workflow step's place: ``{"id": str, "kind": "pipeline" or "group", "step": int}``."""
    field = f"options.{name}"
    if not isinstance(value, dict) or set(value) != {"id", "kind", "step"}:
        raise MessageRejected(field, 'must be an object with "id", "kind" and "step"')
    if not isinstance(value["id"], str) or not 1 <= len(value["id"]) <= MAX_KEY_CHARS:
        raise MessageRejected(f"{field}.id", f"must be a string of 1 to {MAX_KEY_CHARS} chars")
    if value["kind"] not in ("pipeline", "group"):
        raise MessageRejected(f"{field}.kind", 'must be "pipeline" or "group"')
    check_whole_number(f"{name}.step", value["step"], 0, MAX_WORKFLOW_STEPS, where="options.")


def _schedule(name: str, value: Any, _queue_of_actor: QueueOfActor, now_ms: int) -> None:
    """A beat tick's origin: ``{"name": schedule, "at": scheduled epoch ms}``."""
    field = f"options.{name}"
    if not isinstance(value, dict) or set(value) != {"name", "at"}:
        raise MessageRejected(field, 'must be an object with "name" and "at"')
    if not isinstance(value["name"], str) or not SCHEDULE_NAME.fullmatch(value["name"]):
        raise MessageRejected(f"{field}.name", "must be a schedule name (1 to 64 of A-Z a-z 0-9 _ . -)")
    _recent(f"{name}.at", value["at"], _queue_of_actor, now_ms)


def _trace_context(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    field = f"options.{name}"
    if not isinstance(value, dict):
        raise MessageRejected(field, f"must be an object of strings, not {kind(value)}")
    if len(value) > MAX_CARRIER_ENTRIES:
        raise MessageRejected(field, f"{len(value)} entries, over {MAX_CARRIER_ENTRIES}")
    for key, entry in value.items():
        if len(key) > MAX_CARRIER_KEY_CHARS:
            raise MessageRejected(field, f"key {excerpt(key)} longer than {MAX_CARRIER_KEY_CHARS} chars")
        if not isinstance(entry, str):
            raise MessageRejected(field, f"{key!r} must be a string, not {kind(entry)}")
        if len(entry) > MAX_CARRIER_VALUE_CHARS:
            raise MessageRejected(field, f"{key!r} is {len(entry)} chars, over {MAX_CARRIER_VALUE_CHARS}")


def _forbidden(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    raise MessageRejected(f"options.{name}", "may only be set on the actor, not in a message")


def _policy(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    raise MessageRejected(
        f"options.{name}", "is the task's policy (its contract and the TASK_* settings), not a message's"
    )


#: Every option a middleware of greenroom's stack reads from a message, and its check.
#: Options no middleware reads are left alone (the body's size bounds them).
OPTION_CHECKS: dict[str, OptionCheck] = {
    # Set by Dramatiq on the way (delays, retries) and by greenroom's middleware.
    "eta": _eta,
    "retries": _integer(0, 10_000),
    "traceback": _text,
    "requeue_timestamp": _recent,
    "greenroom_ready_at": _recent,
    "greenroom_due_at": _recent,
    "broker_priority": _octet,
    "delay": _integer(0, MAX_ETA_AHEAD_MS),
    "pipe_target": _pipe_target,
    "pipe_ignore": _boolean,
    "greenroom_throttles": _integer(0, 1_000_000),  # times a limit put it back (task_limits)
    # Workflows (shared.workflows, shared.runtime.workflow_steps).
    "greenroom_next": _pipe_target,
    "greenroom_pipe_as": _key,
    "greenroom_workflow": _workflow,
    "group_completion_uuid": _key,
    "group_completion_callbacks": _completion_callbacks,
    TRACE_CONTEXT_OPTION: _trace_context,
    "greenroom_schedule": _schedule,  # a beat tick (shared.schedules)
    # A task's policy: a message may not raise its retries, limits or TTL, or add callbacks
    # that publish to other queues (producers never set these).
    "max_retries": _policy,
    "min_backoff": _policy,
    "max_backoff": _policy,
    "time_limit": _policy,
    "max_age": _policy,
    "result_ttl": _policy,
    "store_results": _policy,
    "notify_shutdown": _policy,
    "on_success": _policy,
    "on_failure": _policy,
    "on_retry_exhausted": _policy,
    "throws": _forbidden,
    "retry_when": _forbidden,
    "greenroom_throttled": _forbidden,  # the worker's note on a message it throttles, never sent
    "greenroom_cancelled": _forbidden,  # the worker's note on a message it cancels, never sent
}


def check_options(options: Mapping[str, Any], queue_of_actor: QueueOfActor, now_ms: int) -> None:
    """Check each option of :data:`OPTION_CHECKS` that ``options`` holds."""
    for name, value in options.items():
        check = OPTION_CHECKS.get(name)
        if check is not None:
            check(name, value, queue_of_actor, now_ms)
