"""Turn a function into the Dramatiq actor that implements a task contract.

The actor takes its name, queue and options from the contract (falling back to
the TASK_* settings), re-validates every message's arguments, and rejects a
message that breaks the contract without retrying it: it goes straight to the
dead-letter queue with a log line saying why.

>>> from dramatiq.brokers.stub import StubBroker
>>> from dramatiq.results import Results
>>> from dramatiq.results.backends import StubBackend
>>> from shared.contracts.diagnostics import ECHO, EchoArguments
>>> previous, stub = dramatiq.get_broker(), StubBroker()
>>> stub.add_middleware(Results(backend=StubBackend()))
>>> dramatiq.set_broker(stub)
>>> @implements(ECHO)
... def echo(arguments: EchoArguments) -> object:
...     return arguments.payload
>>> echo.actor_name, echo.queue_name
('echo', 'default')
>>> echo(payload=[1, 2])  # called directly: validated, then run
[1, 2]
>>> echo(payload=1, delay_ms=-1)
Traceback (most recent call last):
  ...
shared.errors.InvalidTaskArguments: invalid arguments for task 'echo': delay_ms: ...
>>> dramatiq.set_broker(previous)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import dramatiq

from shared.errors import InvalidTaskArguments
from shared.settings import Settings, get_settings
from shared.task_policies import effective_policy
from shared.tasks import TaskArguments, TaskContract

ArgumentsT = TypeVar("ArgumentsT", bound=TaskArguments)


def actor_options(contract: TaskContract, settings: Settings) -> dict[str, Any]:
    """Dramatiq actor options for ``contract`` (durations in milliseconds).

    Each policy field is the contract's, else its setting's (TASK_MAX_RETRIES,
    TASK_MIN_BACKOFF_SECONDS, TASK_MAX_BACKOFF_SECONDS, TASK_TIME_LIMIT_SECONDS,
    RESULT_TTL_SECONDS: :func:`shared.task_policies.effective_policy`, which
    ``greenroom tasks`` shows); ``max_age`` only when the contract sets one. With
    ``retry_on``, Dramatiq's ``retry_when`` retries only those exception types
    (and :class:`dramatiq.Retry`), within ``max_retries``. Priority travels on the
    message (the producer sets it); concurrency and rate limits are
    :mod:`shared.runtime.task_limits`' (they are read from the contract).

    >>> from shared.settings import load_settings
    >>> from shared.contracts.diagnostics import ECHO
    >>> options = actor_options(ECHO, load_settings(_env_file=None))
    >>> options["max_retries"], options["time_limit"], "max_age" in options
    (3, 300000, False)
    """

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    policy = {field: value for field, (value, _source) in effective_policy(contract, settings).items()}
    options: dict[str, Any] = {
        "max_retries": policy["max_retries"],
        "time_limit": ms(policy["time_limit_seconds"]),
        "min_backoff": ms(policy["min_backoff_seconds"]),
        "max_backoff": ms(policy["max_backoff_seconds"]),
        "store_results": policy["store_results"],
        "result_ttl": ms(policy["result_ttl_seconds"]),
        "throws": (InvalidTaskArguments, NotAwaited),  # dead-lettered at once: retrying cannot help
    }
    if policy["max_age_seconds"] is not None:
        options["max_age"] = ms(policy["max_age_seconds"])
    if policy["retry_on"] is not None:
        options["retry_when"] = RetryOn(policy["retry_on"], policy["max_retries"])
    return options


class RetryOn:
    """Dramatiq's ``retry_when`` predicate: retry ``kinds`` (and ``dramatiq.Retry``), ``max_retries`` times.

    ``retries`` is how many times the message has been retried before this failure.

    >>> retry = RetryOn((ConnectionError,), max_retries=2)
    >>> retry(0, ConnectionResetError()), retry(2, ConnectionError()), retry(0, ValueError())
    (True, False, False)
    """

    def __init__(self, kinds: tuple[type[BaseException], ...], max_retries: int) -> None:
        self.kinds = (*kinds, dramatiq.Retry)
        self.max_retries = max_retries

    def __call__(self, retries: int, exception: BaseException) -> bool:
        return retries < self.max_retries and isinstance(exception, self.kinds)

    def __repr__(self) -> str:
        return f"RetryOn({', '.join(kind.__name__ for kind in self.kinds)}; max {self.max_retries})"


def implements(
    contract: TaskContract, *, settings: Settings | None = None
) -> Callable[[Callable[[ArgumentsT], Any]], dramatiq.Actor[..., Any]]:
    """Declare the actor for ``contract`` on the current global broker.

    The function takes the parsed arguments. An ``async def`` function makes an
    async actor: Dramatiq's AsyncIO middleware (in a worker's stack) runs it on
    the worker process's event loop thread, validated the same way first. A plain
    function that returns an awaitable fails the task at once, without retries
    (NotAwaited, a TypeError), instead of succeeding with a coroutine nobody awaits.
    """
    options = actor_options(contract, settings or get_settings())

    def parsed(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskArguments:
        if args:
            raise InvalidTaskArguments(contract.name, "positional arguments are not accepted")
        return contract.parse(kwargs)

    def decorate(function: Callable[[ArgumentsT], Any]) -> dramatiq.Actor[..., Any]:
        run: Callable[..., Any]
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_validated_async(*args: Any, **kwargs: Any) -> Any:
                return await function(parsed(args, kwargs))  # type: ignore[arg-type]

            run = run_validated_async
        else:

            @functools.wraps(function)
            def run_validated(*args: Any, **kwargs: Any) -> Any:
                result = function(parsed(args, kwargs))  # type: ignore[arg-type]
                if inspect.isawaitable(result):
                    raise _not_awaited(contract, result)
                return result

            run = run_validated
        declare = dramatiq.actor(actor_name=contract.name, queue_name=contract.queue, **options)
        return declare(run)

    return decorate


class NotAwaited(TypeError):
    """A plain function implementing a task returned an awaitable (``async def`` was forgotten)."""


def _not_awaited(contract: TaskContract, awaitable: Awaitable[Any]) -> NotAwaited:
    """The error for a plain function that returned ``awaitable``, which is closed unrun."""
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # a coroutine: no "never awaited" warning, nothing of it runs
    return NotAwaited(
        f"task {contract.name!r}: its implementation returned {type(awaitable).__name__} "
        "without awaiting it: declare it with async def"
    )
