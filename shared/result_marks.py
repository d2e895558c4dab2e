"""Marks stored in place of a result: a task cancelled, or a workflow stopped before a step.

A worker stores a mark under a message's result key (with the backend's
``store_exception``) when that message will never have a result of its own: it was
cancelled, or it is a later step of a workflow whose earlier step failed or was
cancelled (that step is named in the mark). A producer waiting for the result reads
the mark back as Dramatiq's ResultFailure; :func:`raise_for_failure` turns any
ResultFailure into :class:`~shared.errors.TaskCancelled` or
:class:`~shared.errors.TaskFailed`, naming the task that failed or was cancelled.

The marks' exception type names hold a dot, which no Python class a task raises has,
so a task's own exception is never read as a mark.

>>> from dramatiq.results import ResultFailure
>>> mark = stopped_mark("reports.build", "m-2", error_type="ValueError", error="no rows")
>>> failure = ResultFailure("", type(mark).__name__, str(mark))   # what reading it back gives
>>> raise_for_failure("reports.publish", "m-3", failure)
Traceback (most recent call last):
  ...
shared.errors.TaskFailed: task 'reports.build' (message m-2) failed: ValueError: no rows
>>> cancelled = cancelled_mark("echo", "m-1")
>>> raise_for_failure("echo", "m-1", ResultFailure("", type(cancelled).__name__, str(cancelled)))
Traceback (most recent call last):
  ...
shared.errors.TaskCancelled: task 'echo' (message m-1) was cancelled
"""

from __future__ import annotations

import json
from typing import NoReturn

from dramatiq.results import ResultFailure

from shared.errors import TaskCancelled, TaskFailed

#: Exception type name of the mark of a cancelled task (or of a step after a cancelled one).
CANCELLED_TYPE = "greenroom.cancelled"
#: Exception type name of the mark of a step after a failed one.
STOPPED_TYPE = "greenroom.stopped"

#: Characters of the failed step's error a mark keeps.
MAX_ERROR_CHARS = 1000


def _mark_class(type_name: str) -> type[Exception]:
    return type(type_name, (Exception,), {"__module__": __name__})


_Cancelled = _mark_class(CANCELLED_TYPE)
_Stopped = _mark_class(STOPPED_TYPE)


def cancelled_mark(task: str, message_id: str) -> Exception:
    """The mark of ``task``'s message ``message_id`` having been cancelled (stored for it and,
    in a workflow, for every step after it)."""
    return _Cancelled(json.dumps({"task": task, "message_id": message_id}))


def stopped_mark(task: str, message_id: str, *, error_type: str, error: str) -> Exception:
    """The mark stored for each step after ``task``'s message ``message_id``, which failed."""
    detail = {"task": task, "message_id": message_id, "type": error_type, "error": error[:MAX_ERROR_CHARS]}
    return _Stopped(json.dumps(detail))


def raise_for_failure(task: str, message_id: str, failure: ResultFailure) -> NoReturn:
    """Raise what ``failure``, read for ``task``'s message ``message_id``, means: TaskCancelled
    or TaskFailed, naming the step a mark names (a mark that cannot be read names this task)."""
    if failure.orig_exc_type in (CANCELLED_TYPE, STOPPED_TYPE):
        detail = _detail(failure.orig_exc_msg)
        named_task = str(detail.get("task") or task)
        named_id = str(detail.get("message_id") or message_id)
        if failure.orig_exc_type == CANCELLED_TYPE:
            raise TaskCancelled(named_task, named_id) from None
        raise TaskFailed(
            named_task, named_id, str(detail.get("type", "Exception")), str(detail.get("error", ""))
        ) from None
    raise TaskFailed(task, message_id, failure.orig_exc_type, failure.orig_exc_msg) from None


def _detail(text: object) -> dict[str, object]:
    try:
        detail = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}
