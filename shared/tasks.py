"""Task contracts: what producers may send and what workers accept.

A contract names a task, the queue it travels on, a pydantic model for its
keyword arguments and its options. Producers validate against it before
publishing; workers validate again before running (a message may come from
anywhere). Nothing here imports worker code.

Declaring a :class:`TaskContract` registers it in :data:`TASKS`, the task table;
a second contract with the same name is an error at once. The first time the
table is read it imports :mod:`shared.contracts`, which imports every module
in it, so a contract declared there is known to every process.

>>> get_task("echo").validate({"payload": {"x": 1}})
{'payload': {'x': 1}, 'delay_ms': 0}
>>> get_task("echo").validate({"delay_ms": -1})
Traceback (most recent call last):
  ...
shared.errors.InvalidTaskArguments: invalid arguments for task 'echo': payload: Field required; ...
>>> [contract.name for contract in all_tasks() if contract.queue == "reports"]
['reports.build', 'reports.sync_inventory']
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import InvalidTaskArguments, UnknownTask

#: The package of built-in contracts, imported when the task table is first read.
CONTRACTS_PACKAGE = "shared.contracts"


class Named(Protocol):
    @property
    def name(self) -> str: ...


DeclaredT = TypeVar("DeclaredT", bound=Named)


class TaskArguments(BaseModel):
    """Base for argument models: unknown keywords are an error, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DuplicateTask(ValueError):
    """A contract is declared with a name another contract already has."""


#: The longest time limit, backoff, age limit and rate-limit period a contract may set (a week).
MAX_POLICY_SECONDS = 7 * 86400
#: The highest message priority RabbitMQ supports.
MAX_PRIORITY = 255


class InvalidContract(ValueError):
    """A contract's policy is out of range; raised where it is declared."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` starts of a task per ``per_seconds``, across every worker.

    >>> RateLimit(10, per_seconds=1.0)
    RateLimit(count=10, per_seconds=1.0)
    """

    count: int
    per_seconds: float


@dataclass(frozen=True, slots=True)
class TaskContract:
    """A task as both sides know it: its name, queue, arguments and policy.

    The policy fields left ``None`` fall back to the TASK_* settings (retries,
    backoff, time limit), to RESULT_TTL_SECONDS, or to no limit at all (age,
    priority, concurrency, rate). ``retry_on`` names the exception types that
    retry; any other exception dead-letters the message at once (``None``:
    every exception retries). ``cancellable``: a cancel interrupts the task while it
    runs, as a time limit does (otherwise a running task finishes; one not started is
    skipped either way). Declaring one registers it in :data:`TASKS`.
    """

    name: str
    queue: str
    arguments: type[TaskArguments]
    description: str
    max_retries: int | None = None
    min_backoff_seconds: float | None = None
    max_backoff_seconds: float | None = None
    retry_on: tuple[type[BaseException], ...] | None = None
    time_limit_seconds: float | None = None
    max_age_seconds: float | None = None
    result_ttl_seconds: int | None = None
    store_results: bool = True
    priority: int | None = None
    concurrency_limit: int | None = None
    rate_limit: RateLimit | None = None
    cancellable: bool = False

    def __post_init__(self) -> None:
        _check_policy(self)
        TASKS.register(self)

    def validate(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``kwargs`` against the contract; return them as JSON-ready values."""
        return self.parse(kwargs).model_dump(mode="json")

    def parse(self, kwargs: Mapping[str, Any]) -> TaskArguments:
        """Check ``kwargs`` against the contract; return the argument model."""
        try:
            return self.arguments.model_validate(dict(kwargs))
        except ValidationError as error:
            raise InvalidTaskArguments(self.name, _summarise(error)) from None


def _check_policy(contract: TaskContract) -> None:
    """InvalidContract naming the first policy field of ``contract`` out of range."""

    def refuse(field: str, problem: str) -> None:
        raise InvalidContract(f"task {contract.name!r}: {field} {problem}")

    for field in ("max_retries", "result_ttl_seconds", "priority", "concurrency_limit"):
        value = getattr(contract, field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            refuse(field, f"must be a whole number, not {value!r}")
    for field in ("min_backoff_seconds", "max_backoff_seconds", "time_limit_seconds", "max_age_seconds"):
        value = getattr(contract, field)
        if value is not None and not (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and 0 < value <= MAX_POLICY_SECONDS
        ):
            refuse(
                field, f"must be a number of seconds above 0 and at most {MAX_POLICY_SECONDS}, not {value!r}"
            )
    if not isinstance(contract.cancellable, bool):
        refuse("cancellable", f"must be True or False, not {contract.cancellable!r}")
    if contract.max_retries is not None and not 0 <= contract.max_retries <= 100:
        refuse("max_retries", "must be between 0 and 100")
    if contract.result_ttl_seconds is not None and contract.result_ttl_seconds <= 0:
        refuse("result_ttl_seconds", "must be above 0")
    if contract.priority is not None and not 0 <= contract.priority <= MAX_PRIORITY:
        refuse("priority", f"must be between 0 and {MAX_PRIORITY}")
    if contract.concurrency_limit is not None and contract.concurrency_limit < 1:
        refuse("concurrency_limit", "must be at least 1")
    if (
        contract.min_backoff_seconds is not None
        and contract.max_backoff_seconds is not None
        and contract.min_backoff_seconds > contract.max_backoff_seconds
    ):
        refuse("min_backoff_seconds", "must not exceed max_backoff_seconds")
    if contract.retry_on is not None and not (
        isinstance(contract.retry_on, tuple)
        and all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in contract.retry_on)
    ):
        refuse("retry_on", "must be a tuple of exception types")
    limit = contract.rate_limit
    if limit is not None and not (
        isinstance(limit, RateLimit)
        and isinstance(limit.count, int)
        and not isinstance(limit.count, bool)
        and limit.count >= 1
        and isinstance(limit.per_seconds, (int, float))
        and 0 < limit.per_seconds <= MAX_POLICY_SECONDS
    ):
        refuse("rate_limit", f"must be a RateLimit of at least 1 per 0 to {MAX_POLICY_SECONDS} seconds")


def _summarise(error: ValidationError) -> str:
    # Input values are left out on purpose: they may be large or secret.
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
        for e in error.errors(include_url=False, include_input=False)
    )


class DeclarationTable(Mapping[str, DeclaredT]):
    """Every declaration of one kind by name (contracts, schedules): the built-in ones and any
    other module's.

    Reading it (a lookup, iterating, ``len``) first imports ``package``, whose
    modules declare the built-in ones. Thread-safe.
    """

    def __init__(self, package: str) -> None:
        self._package = package
        self._declarations: dict[str, DeclaredT] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def register(self, declaration: DeclaredT) -> None:
        """Add ``declaration``; the error of :meth:`duplicate` if its name is taken."""
        with self._lock:
            name = declaration.name
            if name in self._declarations:
                raise self.duplicate(self._declarations[name], declaration)
            self._declarations[name] = declaration

    def forget(self, name: str) -> None:
        """Remove the declaration called ``name``, if there is one (a test's own, once it ran)."""
        with self._lock:
            self._declarations.pop(name, None)

    def duplicate(self, existing: DeclaredT, new: DeclaredT) -> Exception:
        """The error for declaring ``new`` with the name ``existing`` has."""
        return ValueError(f"{new.name!r} is declared twice")

    def __getitem__(self, name: str) -> DeclaredT:
        return self._declared()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._declared()))

    def __len__(self) -> int:
        return len(self._declared())

    def _declared(self) -> dict[str, DeclaredT]:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    importlib.import_module(self._package)  # its modules register their declarations
                    self._loaded = True
        return self._declarations


class TaskTable(DeclarationTable[TaskContract]):
    """Every declared contract by name (see :class:`DeclarationTable`)."""

    def duplicate(self, existing: TaskContract, new: TaskContract) -> Exception:
        return DuplicateTask(
            f"task {new.name!r} is declared twice (queue {existing.queue!r} and queue {new.queue!r})"
        )


#: The task table of this process.
TASKS = TaskTable(CONTRACTS_PACKAGE)


def get_task(name: str) -> TaskContract:
    """The contract called ``name``, or UnknownTask."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTask(name, list(TASKS)) from None


def all_tasks() -> list[TaskContract]:
    """Every declared contract, in the order they were declared."""
    return list(TASKS.values())
