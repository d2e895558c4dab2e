"""greenroom's errors: a shallow tree under :class:`GreenroomError`.

Producers catch these; third-party exceptions (pydantic, Dramatiq, redis) are
wrapped at the boundary so callers need not know which library raised.
"""

from __future__ import annotations


class GreenroomError(Exception):
    """Base class for every error greenroom raises on purpose."""


class UnknownTask(GreenroomError, LookupError):
    """No task contract has this name; nothing was published."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown task {name!r} (known tasks: {', '.join(sorted(known))})")
        self.name = name


class InvalidTaskArguments(GreenroomError, ValueError):
    """Arguments break the task's contract; nothing was published (or, on a worker,
    the message was dead-lettered without a retry)."""

    def __init__(self, task: str, problems: str) -> None:
        super().__init__(f"invalid arguments for task {task!r}: {problems}")
        self.task = task
        self.problems = problems

    def __reduce__(self) -> tuple[type[InvalidTaskArguments], tuple[str, str]]:
        return type(self), (self.task, self.problems)


class TaskFailed(GreenroomError):
    """The task finally failed (retries exhausted or rejected); its message is dead-lettered."""

    def __init__(self, task: str, message_id: str, error_type: str, error: str) -> None:
        super().__init__(f"task {task!r} (message {message_id}) failed: {error_type}: {error}")
        self.task = task
        self.message_id = message_id
        self.error_type = error_type
        self.error = error


class ResultTimeout(GreenroomError, TimeoutError):
    """No result arrived within the timeout; the task may still be queued or running."""

    def __init__(self, task: str, message_id: str, timeout: float) -> None:
        super().__init__(f"no result for task {task!r} (message {message_id}) within {timeout:g}s")
        self.task = task
        self.message_id = message_id
        self.timeout = timeout


class ResultUnavailable(GreenroomError, ConnectionError):
    """Redis could not be read for a task's result (unreachable, or refusing REDIS_URL)."""

    def __init__(self, task: str, message_id: str, reason: str) -> None:
        super().__init__(f"could not read the result of task {task!r} (message {message_id}): {reason}")
        self.task = task
        self.message_id = message_id


class PublishError(GreenroomError, ConnectionError):
    """RabbitMQ did not confirm the message; it may not have been published."""
