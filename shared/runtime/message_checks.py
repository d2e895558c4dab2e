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
naming the field and why (:mod:`shared.runtime.rejections`); the consumer then
dead-letters it. The options' checks are in :mod:`shared.runtime.option_checks`.

>>> body = b'{"queue_name": "default", "actor_name": "echo", "args": [], "kwargs": {}, "options": {},'
>>> body += b' "message_id": "m-1", "message_timestamp": 1764590400000}'
>>> queues = {"echo": "default"}.get
>>> checked_message(body, "default", queues, max_bytes=1024, now_ms=1764590400000).actor_name
'echo'
>>> checked_message(body, "reports", queues, max_bytes=1024, now_ms=1764590400000)
Traceback (most recent call last):
  ...
shared.runtime.rejections.MessageRejected: queue_name: 'default' is not the queue that delivered it ...
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import dramatiq
from dramatiq.common import q_name

from shared.runtime.option_checks import (
    MAX_CLOCK_SKEW_MS,
    MAX_MESSAGE_AGE_MS,
    QueueOfActor,
    check_options,
)
from shared.runtime.rejections import EXCERPT_CHARS, MessageRejected, check_whole_number, excerpt, kind

__all__ = [
    "EXCERPT_CHARS",
    "MessageRejected",
    "check_fields",
    "checked_message",
    "excerpt",
]

#: The longest message id accepted; it becomes part of Redis keys and every log line.
MAX_MESSAGE_ID_CHARS = 128
_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")

_FIELDS = frozenset(
    {"queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp"}
)
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


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
        raise MessageRejected("body", f"must be a JSON object, not {kind(fields)}")
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
        raise MessageRejected("options", f"must be an object, not {kind(options)}")
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
        raise MessageRejected("actor_name", f"must be a string, not {kind(actor_name)}")
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
        raise MessageRejected("message_id", f"must be a string, not {kind(message_id)}")
    if len(message_id) > MAX_MESSAGE_ID_CHARS or not _MESSAGE_ID.fullmatch(message_id):
        raise MessageRejected(
            "message_id",
            f"{excerpt(message_id)} is not 1-{MAX_MESSAGE_ID_CHARS} letters, digits and ._:-"
            " (starting with a letter or digit)",
        )
    check_whole_number(
        "message_timestamp",
        fields["message_timestamp"],
        now_ms - MAX_MESSAGE_AGE_MS,
        now_ms + MAX_CLOCK_SKEW_MS,
    )


def _check_arguments(fields: Mapping[str, Any]) -> None:
    args = fields["args"]
    if not isinstance(args, list):
        raise MessageRejected("args", f"must be a list, not {kind(args)}")
    if args:
        raise MessageRejected("args", "positional arguments are not accepted (tasks take keyword arguments)")
    if not isinstance(fields["kwargs"], dict):
        raise MessageRejected("kwargs", f"must be an object, not {kind(fields['kwargs'])}")


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:EXCERPT_CHARS] if str(error) else type(error).__name__
