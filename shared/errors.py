"""greenroom's errors: a shallow tree under :class:`GreenroomError`.

Producers catch these; third-party exceptions (pydantic, Dramatiq, pika, redis)
are wrapped at the boundary so callers need not know which library raised.
Every message is one line, with any quoted input cut to a short excerpt.

    GreenroomError
    ├── UnknownTask            (LookupError)  no such task; nothing published
    ├── InvalidTaskArguments   (ValueError)   arguments break the contract; nothing published
    ├── InvalidParameter       (ValueError)   another parameter is unusable (a timeout, an id)
    ├── InvalidSettings        (ValueError)   the environment holds a bad setting
    ├── InvalidSchedule        (ValueError)   a schedule cannot run (its cron, task, arguments)
    ├── TaskFailed                            the task finally failed (or a workflow step did)
    ├── TaskCancelled                         the task was cancelled (or a workflow step was)
    ├── ResultTimeout          (TimeoutError) no result in time
    ├── ResultUnavailable      (ConnectionError) Redis could not be read
    ├── PublishError           (ConnectionError) RabbitMQ did not confirm
    ├── BrokerUnavailable      (ConnectionError) RabbitMQ could not be used (dead letters)
    ├── CancelUnavailable      (ConnectionError) Redis could not be used for a cancel
    ├── DeadLetterNotFound     (LookupError)  no dead letter has this id
    └── ServiceRefused                        mixed into the three above: RabbitMQ or Redis
                                              refuses the settings, so retrying cannot help
"""

from __future__ import annotations

#: Characters of a quoted value or problem list an error message keeps at most.
EXCERPT_CHARS = 300


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters (with "..." when cut)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class GreenroomError(Exception):
    """Base class for every error greenroom raises on purpose."""


class ServiceRefused(GreenroomError):
    """RabbitMQ or Redis refuses greenroom's settings (a login, a vhost, a permission,
    a queue's arguments, a database): waiting cannot help. The CLI exits 2 on it."""


class UnknownTask(GreenroomError, LookupError):
    """No task contract has this name; nothing was published."""

    def __init__(self, name: object, known: list[str]) -> None:
        known_tasks = excerpt(", ".join(sorted(known)))  # a long table is cut: the line stays short
        super().__init__(f"unknown task {excerpt(repr(name), 80)} (known tasks: {known_tasks})")
        self.name = name


class InvalidTaskArguments(GreenroomError, ValueError):
    """Arguments break the task's contract; nothing was published (or, on a worker,
    the message was dead-lettered without a retry)."""

    def __init__(self, task: str, problems: str) -> None:
        super().__init__(f"invalid arguments for task {task!r}: {excerpt(problems)}")
        self.task = task
        self.problems = problems

    def __reduce__(self) -> tuple[type[InvalidTaskArguments], tuple[str, str]]:
        return type(self), (self.task, self.problems)


class InvalidParameter(GreenroomError, ValueError):
    """A parameter other than the task's arguments cannot be used (a timeout that is
    not a finite number, a message id that is not a string); nothing was done."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {excerpt(problem)}")
        self.name = name
        self.problem = problem


class InvalidSettings(GreenroomError, ValueError):
    """The environment holds a setting greenroom cannot run with (the line names it)."""


class InvalidSchedule(GreenroomError, ValueError):
    """A schedule cannot run: its name, cron expression, interval, time zone, task or
    arguments (the line names the schedule). ``greenroom beat`` exits 2 on it."""

    def __init__(self, schedule: object, problem: str) -> None:
        super().__init__(f"schedule {excerpt(repr(schedule), 80)}: {excerpt(problem)}")
        self.schedule = schedule
        self.problem = problem

    def __reduce__(self) -> tuple[type[InvalidSchedule], tuple[object, str]]:
        return type(self), (self.schedule, self.problem)


class TaskFailed(GreenroomError):
    """The task finally failed (retries exhausted or rejected); its message is dead-lettered."""

    def __init__(self, task: str, message_id: str, error_type: str, error: str) -> None:
        super().__init__(
            f"task {task!r} (message {message_id}) failed: {excerpt(str(error_type), 80)}: "
            f"{excerpt(str(error))}"
        )
        self.task = task
        self.message_id = message_id
        self.error_type = error_type
        self.error = error


class TaskCancelled(GreenroomError):
    """The task was cancelled before it finished (skipped before it started, or interrupted
    because its contract is ``cancellable``); in a workflow, the step named was, so the
    steps after it never ran."""

    def __init__(self, task: str, message_id: str) -> None:
        super().__init__(f"task {task!r} (message {message_id}) was cancelled")
        self.task = task
        self.message_id = message_id


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


class ResultRefused(ResultUnavailable, ServiceRefused):
    """Redis refuses REDIS_URL (its login or database) for a task's result."""


class PublishError(GreenroomError, ConnectionError):
    """RabbitMQ did not confirm the message; it may not have been published."""


class PublishRefused(PublishError, ServiceRefused):
    """RabbitMQ refuses the settings (RABBITMQ_URL, DEAD_LETTER_TTL_SECONDS); nothing was published."""


class BrokerUnavailable(GreenroomError, ConnectionError):
    """RabbitMQ could not be reached for an operation other than publishing (reading dead letters)."""


class BrokerRefused(BrokerUnavailable, ServiceRefused):
    """RabbitMQ refuses RABBITMQ_URL (a login, a vhost, a permission) for reading dead letters."""


class CancelUnavailable(GreenroomError, ConnectionError):
    """Redis could not be reached (or refused its settings) for a cancel: nothing was cancelled."""


class CancelRefused(CancelUnavailable, ServiceRefused):
    """Redis refuses REDIS_URL (its login or database) for a cancel."""


class DeadLetterNotFound(GreenroomError, LookupError):
    """A message id (or id prefix) given for a dead letter matches none, or more than one."""
