"""Checks on what a producer is given, and the message built from it, before anything is published.

:func:`task_message` is a task's message: its arguments validated by the
contract and strict JSON (no NaN or Infinity, no lone surrogate, no integer
too long to encode), the whole no larger than MAX_MESSAGE_BYTES. ``send_many``
takes an iterable of mappings; a result's timeout is a finite number of
seconds and a message id a short Unicode string. A send's options
(:func:`due_at_ms`, :func:`message_priority`) are a delay or an ETA within
MAX_DELAY_SECONDS and a priority its queue has (QUEUE_MAX_PRIORITIES). Each
check raises InvalidTaskArguments or InvalidParameter with one line saying
what is wrong.

>>> from shared.tasks import get_task
>>> check_strict_json(get_task("echo"), {"payload": float("nan")})
Traceback (most recent call last):
  ...
shared.errors.InvalidTaskArguments: invalid arguments for task 'echo': NaN and Infinity are not JSON numbers
>>> timeout_seconds(2)
2.0
>>> timeout_seconds("5")
Traceback (most recent call last):
  ...
shared.errors.InvalidParameter: ...timeout... must be a number of seconds, got str
>>> due_at_ms(delay=1.5, eta=None, now_ms=1_000_000)
1001500
>>> due_at_ms(delay=None, eta=datetime(2026, 12, 24, 18, 0), now_ms=0)
Traceback (most recent call last):
  ...
shared.errors.InvalidParameter: eta: must be an aware datetime (with a time zone, e.g. ...), got a naive one
"""

from __future__ import annotations

import json
import math
import numbers
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import dramatiq

from shared.delays import DUE_AT_OPTION, MAX_DELAY_SECONDS
from shared.errors import InvalidParameter, InvalidTaskArguments, excerpt
from shared.tasks import MAX_PRIORITY, TaskContract

#: Longest message id ``result_of`` and ``cancel`` accept, and its characters: those a worker
#: accepts on arrival (shared.runtime.message_checks; Dramatiq's ids are 36-character UUIDs).
MAX_MESSAGE_ID_CHARS = 128
_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def task_message(
    contract: TaskContract,
    kwargs: Mapping[str, Any],
    *,
    max_bytes: int,
    options: Mapping[str, Any] | None = None,
) -> dramatiq.Message[Any]:
    """A validated message of ``contract`` with ``options``; arguments that break it or are not
    strict JSON, or a message over ``max_bytes`` (MAX_MESSAGE_BYTES), raise InvalidTaskArguments.

    >>> from shared.tasks import get_task
    >>> task_message(get_task("echo"), {"payload": 1}, max_bytes=1024).kwargs
    {'payload': 1, 'delay_ms': 0}
    """
    check_unicode(contract, kwargs)  # before validation, which replaces a lone surrogate in a key
    arguments = contract.validate(kwargs)
    check_strict_json(contract, arguments)
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=contract.queue,
        actor_name=contract.name,
        args=(),
        kwargs=arguments,
        options=dict(options or {}),
    )
    size = len(message.encode())
    if size > max_bytes:
        raise InvalidTaskArguments(
            contract.name, f"message is {size} bytes, more than MAX_MESSAGE_BYTES ({max_bytes})"
        )
    return message


def keyword_batch(contract: TaskContract, many_kwargs: object) -> Iterable[Mapping[str, Any]]:
    """``many_kwargs`` item by item, each checked to be a mapping of keyword arguments."""
    if isinstance(many_kwargs, (str, bytes, Mapping)) or not isinstance(many_kwargs, Iterable):
        raise InvalidTaskArguments(
            contract.name,
            f"send_many takes an iterable of mappings (a list of dicts), got {type(many_kwargs).__name__}",
        )
    for number, kwargs in enumerate(many_kwargs):
        if not isinstance(kwargs, Mapping):
            raise InvalidTaskArguments(
                contract.name,
                f"item {number}: expected a mapping of keyword arguments, got {type(kwargs).__name__}",
            )
        yield kwargs


_LONE_SURROGATE = "a string is not Unicode text (it holds a lone surrogate)"


def check_strict_json(contract: TaskContract, arguments: Mapping[str, Any]) -> None:
    """Refuse what json.dumps would write but a strict JSON reader refuses (NaN,
    Infinity, lone surrogates), and what it cannot write (over-long integers)."""
    try:
        json.dumps(arguments, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTaskArguments(contract.name, _LONE_SURROGATE) from None
    except ValueError as error:
        raise InvalidTaskArguments(contract.name, _json_problem(error)) from None
    except RecursionError:
        raise InvalidTaskArguments(contract.name, "nested too deeply") from None


def check_unicode(contract: TaskContract, kwargs: Mapping[str, Any]) -> None:
    """Refuse a lone surrogate anywhere in ``kwargs``, keys included; other problems are the
    contract's to report."""
    try:
        json.dumps(kwargs, ensure_ascii=False, default=repr).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTaskArguments(contract.name, _LONE_SURROGATE) from None
    except (TypeError, ValueError, RecursionError):
        pass


def _json_problem(error: ValueError) -> str:
    text = str(error)
    if "JSON compliant" in text:
        return "NaN and Infinity are not JSON numbers"
    if "integer string conversion" in text:
        return f"an integer is too long to encode (more than {sys.get_int_max_str_digits()} digits)"
    return text.split(";")[0]


def timeout_seconds(timeout: object) -> float:
    """``timeout`` as float seconds; a bool, a string, NaN or an infinity raises InvalidParameter."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise InvalidParameter("timeout", f"must be a number of seconds, got {type(timeout).__name__}")
    try:
        seconds = float(timeout)
    except (OverflowError, ValueError):
        raise InvalidParameter("timeout", "must be a finite number of seconds, got one too large") from None
    if not math.isfinite(seconds):
        raise InvalidParameter("timeout", f"must be a finite number of seconds, got {seconds}")
    return seconds


def check_message_id(message_id: object) -> None:
    """InvalidParameter unless ``message_id`` could be a message's id as a worker accepts one: 1
    to 128 letters, digits and ``._:-``, beginning with a letter or digit (Dramatiq's are UUIDs).

    >>> check_message_id("../m-1")
    Traceback (most recent call last):
      ...
    shared.errors.InvalidParameter: message_id: '../m-1' is not 1 to 128 letters, digits and ._:- ...
    """
    if not isinstance(message_id, str):
        raise InvalidParameter("message_id", f"must be a string, got {type(message_id).__name__}")
    if len(message_id) > MAX_MESSAGE_ID_CHARS or not _MESSAGE_ID.fullmatch(message_id):
        raise InvalidParameter(
            "message_id",
            f"{excerpt(repr(message_id), 80)} is not 1 to {MAX_MESSAGE_ID_CHARS} letters, digits and ._:- "
            "(beginning with a letter or digit), as every message id is",
        )


def due_at_ms(*, delay: object, eta: object, now_ms: int) -> int | None:
    """When a message sent at ``now_ms`` with ``delay`` or ``eta`` is due, in epoch
    milliseconds; None when it is due at once (no delay, a delay of 0, an ETA passed).

    ``delay`` is a finite number of seconds or a timedelta, from 0 to MAX_DELAY_SECONDS;
    ``eta`` an aware datetime no further ahead than that. Both at once, a naive
    datetime or anything else raise InvalidParameter.

    >>> from datetime import timezone
    >>> due_at_ms(delay=timedelta(minutes=1), eta=None, now_ms=0)
    60000
    >>> due_at_ms(delay=None, eta=datetime(2000, 1, 1, tzinfo=timezone.utc), now_ms=10**12) is None  # past
    True
    >>> due_at_ms(delay=8 * 86400, eta=None, now_ms=0)
    Traceback (most recent call last):
      ...
    shared.errors.InvalidParameter: delay: must be at most 604800 seconds (7 days), got 691200
    """
    if delay is not None and eta is not None:
        raise InvalidParameter("delay", "give delay or eta, not both")
    if eta is not None:
        delay_ms = _eta_ms(eta) - now_ms
        if delay_ms > MAX_DELAY_SECONDS * 1000:
            raise InvalidParameter(
                "eta",
                f"must be at most {MAX_DELAY_SECONDS} seconds (7 days) ahead, got {delay_ms // 1000} s ahead",
            )
    elif delay is not None:
        delay_ms = math.ceil(_delay_seconds(delay) * 1000)
    else:
        return None
    return now_ms + delay_ms if delay_ms > 0 else None


def _delay_seconds(delay: object) -> float:
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, bool) or not isinstance(delay, numbers.Real):
        raise InvalidParameter(
            "delay", f"must be a number of seconds or a timedelta, got {type(delay).__name__}"
        )
    else:
        try:
            seconds = float(delay)
        except (OverflowError, ValueError):
            seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidParameter("delay", f"must be a finite number of seconds, 0 or more, got {seconds:.12g}")
    if seconds > MAX_DELAY_SECONDS:
        raise InvalidParameter(
            "delay", f"must be at most {MAX_DELAY_SECONDS} seconds (7 days), got {seconds:.12g}"
        )
    return seconds


def _eta_ms(eta: object) -> int:
    if not isinstance(eta, datetime):
        raise InvalidParameter("eta", f"must be an aware datetime, got {type(eta).__name__}")
    if eta.utcoffset() is None:
        raise InvalidParameter(
            "eta", "must be an aware datetime (with a time zone, e.g. tzinfo=timezone.utc), got a naive one"
        )
    return math.ceil(eta.timestamp() * 1000)


def message_priority(
    contract: TaskContract, priority: object, max_priorities: Mapping[str, int]
) -> int | None:
    """The priority a message of ``contract`` is sent with: ``priority``, else the
    contract's, else None (RabbitMQ's 0). InvalidParameter when it is not a whole number
    from 0 to 255, or when the task's queue has no priorities or a lower maximum
    (``max_priorities``: QUEUE_MAX_PRIORITIES).

    >>> from shared.tasks import get_task
    >>> message_priority(get_task("echo"), 5, {"default": 9})
    5
    >>> message_priority(get_task("echo"), 5, {})
    Traceback (most recent call last):
      ...
    shared.errors.InvalidParameter: priority: queue 'default' of task 'echo' has no priorities: ...
    """
    where = "priority"
    if priority is None:
        priority, where = contract.priority, f"priority {contract.priority} (the contract's)"
        if priority is None:
            return None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidParameter(
            "priority", f"must be a whole number from 0 to {MAX_PRIORITY}, got {priority!r:.40}"
        )
    if not 0 <= priority <= MAX_PRIORITY:
        shown = priority if priority.bit_length() <= 64 else f"an integer of {priority.bit_length()} bits"
        raise InvalidParameter("priority", f"must be from 0 to {MAX_PRIORITY}, got {shown}")
    maximum = max_priorities.get(contract.queue)
    if maximum is None:
        raise InvalidParameter(
            where,
            f"queue {contract.queue!r} of task {contract.name!r} has no priorities: "
            f"enable them with QUEUE_MAX_PRIORITIES (e.g. {contract.queue}={max(9, priority)})",
        )
    if priority > maximum:
        raise InvalidParameter(
            where,
            f"queue {contract.queue!r} of task {contract.name!r} takes priorities 0 to {maximum} "
            f"(QUEUE_MAX_PRIORITIES), got {priority}",
        )
    return priority


def send_options(*, due_at: int | None, priority: int | None) -> dict[str, Any]:
    """The message options of a send: when it is due (epoch ms) and its broker priority.

    >>> send_options(due_at=1_000, priority=None)
    {'greenroom_due_at': 1000}
    """
    options: dict[str, Any] = {}
    if due_at is not None:
        options[DUE_AT_OPTION] = due_at
    if priority is not None:
        options["broker_priority"] = priority
    return options
