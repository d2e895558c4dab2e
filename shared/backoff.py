"""The one retry loop with exponential backoff, bounded by a deadline.

``send`` riding out a RabbitMQ outage and a worker storing a result while Redis
restarts both call :func:`retry_with_backoff`: the delay doubles from
``first_delay`` up to ``max_delay``, and once the next wait would end past the
deadline the last error is raised (retrying never outlives the deadline).

>>> attempts = []
>>> def flaky() -> str:
...     attempts.append(len(attempts))
...     if len(attempts) < 3:
...         raise ConnectionError("not yet")
...     return "done"
>>> waits = []
>>> retry_with_backoff(flaky, retry_on=(ConnectionError,), timeout_seconds=10, sleep=waits.append,
...                    policy=Backoff(first_delay=0.1, max_delay=1.0))
'done'
>>> waits
[0.1, 0.2]
>>> from itertools import islice
>>> list(islice(Backoff(first_delay=0.1, max_delay=1.0).delays(), 6))
[0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

ResultT = TypeVar("ResultT")

#: Each wait is this many times the one before, up to ``Backoff.max_delay``.
GROWTH_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between attempts: ``first_delay``, doubling, never longer than ``max_delay`` (seconds)."""

    first_delay: float
    max_delay: float

    def __post_init__(self) -> None:
        if not 0 < self.first_delay <= self.max_delay:
            raise ValueError("Backoff needs 0 < first_delay <= max_delay")

    def delays(self) -> Iterator[float]:
        """The waits, one per failed attempt, forever (the deadline ends them)."""
        delay = self.first_delay
        while True:
            yield delay
            delay = min(delay * GROWTH_FACTOR, self.max_delay)


def retry_with_backoff(
    attempt: Callable[[], ResultT],
    *,
    retry_on: tuple[type[BaseException], ...],
    timeout_seconds: float,
    policy: Backoff,
    on_failure: Callable[[BaseException], None] | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> ResultT:
    """``attempt()``'s return value, calling it again after a wait while it raises one of ``retry_on``.

    ``on_failure(error)`` sees every such error first (it may raise another one, which ends the
    loop: an error retrying cannot help). When the next wait would end more than
    ``timeout_seconds`` after the first attempt began, the error propagates; otherwise
    ``on_retry(error, delay)`` is told (to log it) and the loop waits. Exceptions not in
    ``retry_on`` propagate at once.
    """
    deadline = clock() + timeout_seconds
    for delay in policy.delays():
        try:
            return attempt()
        except retry_on as error:
            if on_failure is not None:
                on_failure(error)
            if clock() + delay > deadline:
                raise
            if on_retry is not None:
                on_retry(error, delay)
            sleep(delay)
    raise AssertionError("unreachable: Backoff.delays() never ends")  # pragma: no cover
