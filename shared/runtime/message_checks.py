"""Checks on a message body from RabbitMQ before a worker acts on any of it.

Anyone who may publish to a queue can put anything in a body, so the worker
treats it as untrusted input: :func:`checked_message` decodes a body delivered
from a queue and checks every field of the Dramatiq message, and every option
that Dramatiq's or greenroom's middleware reads, for type and range. The
delivering queue is the truth: the body must name it, and its actor must be
one that lives on it. Options that are a task's policy (retries, backoff, time
limit, age limit, result TTL, callbacks) are the contract's to set, never a
message's, and a message's timestamps must lie within a year behind and an eta
ahead of this worker's clock. A body that fails raises :class:`MessageRejected`,
naming the field and why; the consumer then dead-letters it.

>>> body = b'{"queue_name": "default", "actor_name": "echo", "args": [], "kwargs": {}, "options": {},'
>>> body += b' "message_id": "m-1", "message_timestamp": 1764590400000}'
>>> queues = {"echo": "default"}.get
>>> checked_message(body, "default", queues, max_bytes=1024, now_ms=1764590400000).actor_name
'echo'
>>> checked_message(body, "reports", queues, max_bytes=1024, now_ms=1764590400000)
Traceback (most recent call last):
  ...
shared.runtime.message_checks.MessageRejected: queue_name: 'default' is not the queue that delivered it ...
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import dramatiq
from dramatiq.common import q_name

#: How much of anything a message contains a log line may quote.
EXCERPT_CHARS = 200

#: The longest message id accepted; it becomes part of Redis keys and every log line.
MAX_MESSAGE_ID_CHARS = 128
_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_ACTOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,254}")

#: Millisecond bounds for durations and times carried in options.
DAY_MS = 86_400_000
MAX_DURATION_MS = 365 * DAY_MS
MAX_TIMESTAMP_MS = 32_503_680_000_000  # year 3000
#: How far in the future a message's ``eta`` may lie (Dramatiq's longest backoff).
MAX_ETA_AHEAD_MS = 7 * DAY_MS
#: How far a message's timestamps may lie from this worker's clock: ahead (clock skew) and behind.
MAX_CLOCK_SKEW_MS = 3_600_000
MAX_MESSAGE_AGE_MS = 366 * DAY_MS
#: The most steps a pipeline (``pipe_target`` within ``pipe_target`` ...) may have.
MAX_PIPELINE_STEPS = 100

#: The trace-context carrier (W3C traceparent, tracestate, baggage): its size per entry and in all.
MAX_CARRIER_ENTRIES = 8
MAX_CARRIER_KEY_CHARS = 64
MAX_CARRIER_VALUE_CHARS = 8192
TRACE_CONTEXT_OPTION = "greenroom_trace_context"

_FIELDS = frozenset(
    {"queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp"}
)
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

QueueOfActor = Callable[[str], "str | None"]


class MessageRejected(Exception):
    """A body that must not be processed: ``field`` names what is wrong, ``reason`` says why.

    ``field`` is one of a fixed set of names (``body``, a message field, ``options.<name>``
    of :data:`OPTION_CHECKS`, ``options.pipe_target.<field>``); what a sender chose only
    appears, as an excerpt, in ``reason``.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def excerpt(value: object) -> str:
    """``repr(value)`` cut to :data:`EXCERPT_CHARS`, for quoting message content in logs.

    >>> excerpt("x" * 500)[-20:]
    'xxxxx... (502 chars)'
    """
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else repr(value)
    if len(text) <= EXCERPT_CHARS:
        return text
    return f"{text[:EXCERPT_CHARS]}... ({len(text)} chars)"


def checked_message(
    body: bytes, delivering_queue: str, queue_of_actor: QueueOfActor, *, max_bytes: int, now_ms: int
) -> dramatiq.Message[Any]:
    """The Dramatiq message in ``body``, delivered from ``delivering_queue``, once every check passed.

    ``queue_of_actor(name)`` gives the queue of a declared actor, ``None`` for an unknown
    one. Raises :class:`MessageRejected` on the first check that fails.
    """
    if len(body) > max_bytes:
        raise MessageRejected("body", f"{len(body)} bytes, over MAX_MESSAGE_BYTES ({max_bytes})")
    fields = _decode(body)
    check_fields(fields, delivering_queue, queue_of_actor, now_ms)
    return dramatiq.Message(
        queue_name=fields["queue_name"],
        actor_name=fields["actor_name"],
        args=(),
        kwargs=fields["kwargs"],
        options=fields["options"],
        message_id=fields["message_id"],
        message_timestamp=fields["message_timestamp"],
    )


def _decode(body: bytes) -> dict[str, Any]:
    try:
        fields = _STRICT_JSON.decode(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise MessageRejected("body", f"not UTF-8 ({error.reason} at byte {error.start})") from None
    except (ValueError, RecursionError) as error:
        raise MessageRejected("body", f"not JSON ({_first_line(error)})") from None
    if _LONE_SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(fields, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MessageRejected("body", "holds a lone UTF-16 surrogate escape") from None
    if not isinstance(fields, dict):
        raise MessageRejected("body", f"must be a JSON object, not {_kind(fields)}")
    return fields


def check_fields(
    fields: Mapping[str, Any], delivering_queue: str, queue_of_actor: QueueOfActor, now_ms: int
) -> None:
    """Check the decoded fields of a message delivered from ``delivering_queue``."""
    if fields.keys() != _FIELDS:
        missing = sorted(_FIELDS - fields.keys())
        if missing:
            raise MessageRejected(missing[0], "missing")
        unknown = sorted(fields.keys() - _FIELDS)
        raise MessageRejected("body", f"{excerpt(unknown[0])} is not a field of a Dramatiq message")
    _check_routing(fields, delivering_queue, queue_of_actor)
    _check_identity(fields, now_ms)
    _check_arguments(fields)
    options = fields["options"]
    if not isinstance(options, dict):
        raise MessageRejected("options", f"must be an object, not {_kind(options)}")
    check_options(options, queue_of_actor, now_ms)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return number


#: JSON as RFC 8259 has it: NaN, Infinity and numbers beyond a float's range (1e400) are refused.
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _check_routing(fields: Mapping[str, Any], delivering_queue: str, queue_of_actor: QueueOfActor) -> None:
    queue_name = fields["queue_name"]
    if queue_name != delivering_queue:
        raise MessageRejected(
            "queue_name", f"{excerpt(queue_name)} is not the queue that delivered it ({delivering_queue!r})"
        )
    actor_name = fields["actor_name"]
    if not isinstance(actor_name, str):
        raise MessageRejected("actor_name", f"must be a string, not {_kind(actor_name)}")
    home = queue_of_actor(actor_name)
    if home is None:
        raise MessageRejected("actor_name", f"no actor {excerpt(actor_name)} on this worker")
    if home != q_name(delivering_queue):
        raise MessageRejected(
            "actor_name", f"actor {actor_name!r} lives on queue {home!r}, not {q_name(delivering_queue)!r}"
        )


def _check_identity(fields: Mapping[str, Any], now_ms: int) -> None:
    message_id = fields["message_id"]
    if not isinstance(message_id, str):
        raise MessageRejected("message_id", f"must be a string, not {_kind(message_id)}")
    if len(message_id) > MAX_MESSAGE_ID_CHARS or not _MESSAGE_ID.fullmatch(message_id):
        raise MessageRejected(
            "message_id",
            f"{excerpt(message_id)} is not 1-{MAX_MESSAGE_ID_CHARS} letters, digits and ._:-"
            " (starting with a letter or digit)",
        )
    _check_int(
        "message_timestamp",
        fields["message_timestamp"],
        now_ms - MAX_MESSAGE_AGE_MS,
        now_ms + MAX_CLOCK_SKEW_MS,
    )


def _check_arguments(fields: Mapping[str, Any]) -> None:
    args = fields["args"]
    if not isinstance(args, list):
        raise MessageRejected("args", f"must be a list, not {_kind(args)}")
    if args:
        raise MessageRejected("args", "positional arguments are not accepted (tasks take keyword arguments)")
    if not isinstance(fields["kwargs"], dict):
        raise MessageRejected("kwargs", f"must be an object, not {_kind(fields['kwargs'])}")


# Options: each one a middleware reads, with the check its value must pass --------------------

OptionCheck = Callable[[str, Any, QueueOfActor, int], None]


def _integer(low: int, high: int) -> OptionCheck:
    def check(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
        _check_int(name, value, low, high, where="options.")

    return check


def _boolean(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    if not isinstance(value, bool):
        raise MessageRejected(f"options.{name}", f"must be true or false, not {_kind(value)}")


def _text(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    if not isinstance(value, str):
        raise MessageRejected(f"options.{name}", f"must be a string, not {_kind(value)}")


def _eta(name: str, value: Any, _queue_of_actor: QueueOfActor, now_ms: int) -> None:
    _check_int(name, value, 0, now_ms + MAX_ETA_AHEAD_MS, where="options.")


def _recent(name: str, value: Any, _queue_of_actor: QueueOfActor, now_ms: int) -> None:
    """A time this message was (re)queued or became due: within a year behind and an eta ahead."""
    low, high = now_ms - MAX_MESSAGE_AGE_MS, now_ms + MAX_ETA_AHEAD_MS + MAX_CLOCK_SKEW_MS
    _check_int(name, value, low, high, where="options.")


def _pipe_target(name: str, value: Any, queue_of_actor: QueueOfActor, now_ms: int) -> None:
    """The next message of a pipeline: a whole message, sent on to its own actor's queue."""
    if not isinstance(value, dict):
        raise MessageRejected(f"options.{name}", f"must be a message object, not {_kind(value)}")
    if _pipeline_steps(value) > MAX_PIPELINE_STEPS:
        raise MessageRejected(f"options.{name}", f"a pipeline of more than {MAX_PIPELINE_STEPS} steps")
    target_queue = value.get("queue_name")
    if not isinstance(target_queue, str):
        raise MessageRejected(f"options.{name}.queue_name", "must be a string")
    try:
        check_fields(value, target_queue, queue_of_actor, now_ms)
    except MessageRejected as inner:
        nested = "options.pipe_target" if inner.field.startswith("options.pipe_target") else inner.field
        raise MessageRejected(f"options.{name}.{nested}", inner.reason) from None


def _pipeline_steps(target: Any) -> int:
    """How many messages are chained from ``target`` on (counted without recursion)."""
    steps = 0
    while isinstance(target, dict) and steps <= MAX_PIPELINE_STEPS:
        steps += 1
        options = target.get("options")
        target = options.get("pipe_target") if isinstance(options, dict) else None
    return steps


def _trace_context(name: str, value: Any, _queue_of_actor: QueueOfActor, _now_ms: int) -> None:
    field = f"options.{name}"
    if not isinstance(value, dict):
        raise MessageRejected(field, f"must be an object of strings, not {_kind(value)}")
    if len(value) > MAX_CARRIER_ENTRIES:
        raise MessageRejected(field, f"{len(value)} entries, over {MAX_CARRIER_ENTRIES}")
    for key, entry in value.items():
        if len(key) > MAX_CARRIER_KEY_CHARS:
            raise MessageRejected(field, f"key {excerpt(key)} longer than {MAX_CARRIER_KEY_CHARS} chars")
        if not isinstance(entry, str):
            raise MessageRejected(field, f"{key!r} must be a string, not {_kind(entry)}")
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
    "broker_priority": _integer(0, 255),
    "delay": _integer(0, MAX_ETA_AHEAD_MS),
    "pipe_target": _pipe_target,
    "pipe_ignore": _boolean,
    TRACE_CONTEXT_OPTION: _trace_context,
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
}


def check_options(options: Mapping[str, Any], queue_of_actor: QueueOfActor, now_ms: int) -> None:
    """Check each option of :data:`OPTION_CHECKS` that ``options`` holds."""
    for name, value in options.items():
        check = OPTION_CHECKS.get(name)
        if check is not None:
            check(name, value, queue_of_actor, now_ms)


def _check_int(name: str, value: Any, low: int, high: int, *, where: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageRejected(where + name, f"must be a whole number, not {_kind(value)}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise MessageRejected(where + name, f"must be a whole number, not {excerpt(value)}")
    if not low <= value <= high:
        raise MessageRejected(where + name, f"{excerpt(value)} is outside {low}..{high}")


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:EXCERPT_CHARS] if str(error) else type(error).__name__
