"""Checks on what a producer is given, and the message built from it, before anything is published.

:func:`task_message` is a task's message: its arguments validated by the
contract and strict JSON (no NaN or Infinity, no lone surrogate, no integer
too long to encode), the whole no larger than MAX_MESSAGE_BYTES. ``send_many``
takes an iterable of mappings; a result's timeout is a finite number of
seconds and a message id a short Unicode string. Each check raises
InvalidTaskArguments or InvalidParameter with one line saying what is wrong.

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
"""

from __future__ import annotations

import json
import math
import numbers
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import dramatiq

from shared.errors import InvalidParameter, InvalidTaskArguments
from shared.tasks import TaskContract

#: Longest message id ``result_of`` accepts (Dramatiq's are 36-character UUIDs).
MAX_MESSAGE_ID_CHARS = 255


def task_message(
    contract: TaskContract, kwargs: Mapping[str, Any], *, max_bytes: int
) -> dramatiq.Message[Any]:
    """A validated message of ``contract``; arguments that break it or are not strict JSON, or a
    message over ``max_bytes`` (MAX_MESSAGE_BYTES), raise InvalidTaskArguments.

    >>> from shared.tasks import get_task
    >>> task_message(get_task("echo"), {"payload": 1}, max_bytes=1024).kwargs
    {'payload': 1, 'delay_ms': 0}
    """
    check_unicode(contract, kwargs)  # before validation, which replaces a lone surrogate in a key
    arguments = contract.validate(kwargs)
    check_strict_json(contract, arguments)
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=contract.queue, actor_name=contract.name, args=(), kwargs=arguments, options={}
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
    if not isinstance(message_id, str):
        raise InvalidParameter("message_id", f"must be a string, got {type(message_id).__name__}")
    if not 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS:
        raise InvalidParameter("message_id", f"must be 1 to {MAX_MESSAGE_ID_CHARS} characters long")
    try:
        message_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameter("message_id", "is not Unicode text (it holds a lone surrogate)") from None
