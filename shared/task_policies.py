"""A contract's effective policy: each field's value and where it comes from.

A policy field a contract leaves ``None`` falls back to a setting (retries,
backoff, time limit, result TTL) or to nothing at all (no age limit, no
priority, no limit). The worker's actor options (:func:`workers.actor.actor_options`)
and ``greenroom tasks`` both read the policy from here.

>>> from shared.settings import load_settings
>>> from shared.contracts.diagnostics import ECHO
>>> policy = effective_policy(ECHO, load_settings(_env_file=None))
>>> policy["max_retries"]
Policy(value=3, source='TASK_MAX_RETRIES')
>>> policy["rate_limit"]
Policy(value=None, source='default')
"""

from __future__ import annotations

from typing import Any, NamedTuple

from shared.settings import Settings
from shared.tasks import RateLimit, TaskContract

#: Where a value comes from when the contract sets it, and when nothing sets it.
CONTRACT, DEFAULT = "contract", "default"

#: The policy fields with a setting to fall back to.
SETTING_OF = {
    "max_retries": "TASK_MAX_RETRIES",
    "min_backoff_seconds": "TASK_MIN_BACKOFF_SECONDS",
    "max_backoff_seconds": "TASK_MAX_BACKOFF_SECONDS",
    "time_limit_seconds": "TASK_TIME_LIMIT_SECONDS",
    "result_ttl_seconds": "RESULT_TTL_SECONDS",
}

#: Every policy field of a contract, in the order they are listed.
POLICY_FIELDS = (
    "max_retries",
    "min_backoff_seconds",
    "max_backoff_seconds",
    "retry_on",
    "time_limit_seconds",
    "max_age_seconds",
    "result_ttl_seconds",
    "store_results",
    "priority",
    "concurrency_limit",
    "rate_limit",
    "cancellable",
)

#: What ``None`` means for the fields without a setting.
NONE_MEANS = {
    "retry_on": "every exception retries",
    "max_age_seconds": "no age limit",
    "priority": "none (0)",
    "concurrency_limit": "no limit",
    "rate_limit": "no limit",
}


class Policy(NamedTuple):
    """One effective policy value, and its source: ``contract``, a setting's name or ``default``."""

    value: Any
    source: str


def effective_policy(contract: TaskContract, settings: Settings) -> dict[str, Policy]:
    """Every policy field of ``contract`` (:data:`POLICY_FIELDS`) with its effective value.

    ``max_backoff_seconds`` is at least ``min_backoff_seconds`` (a contract may
    raise its minimum above the setting's maximum).
    """
    policy: dict[str, Policy] = {}
    for field in POLICY_FIELDS:
        value = getattr(contract, field)
        if value is not None:
            policy[field] = Policy(value, CONTRACT)
        elif field in SETTING_OF:
            policy[field] = Policy(getattr(settings, SETTING_OF[field]), SETTING_OF[field])
        else:
            policy[field] = Policy(None, DEFAULT)
    low, high = policy["min_backoff_seconds"], policy["max_backoff_seconds"]
    if high.value < low.value:
        policy["max_backoff_seconds"] = Policy(low.value, high.source)
    return policy


def describe(field: str, value: Any) -> str:
    """``value`` of ``field`` as ``greenroom tasks`` shows it.

    >>> describe("time_limit_seconds", 300.0), describe("retry_on", (ConnectionError,))
    ('300 s', 'ConnectionError')
    >>> describe("rate_limit", RateLimit(10, 1.0)), describe("concurrency_limit", None)
    ('10 per 1 s', 'no limit')
    """
    if value is None:
        return NONE_MEANS.get(field, "none")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, RateLimit):
        return f"{value.count} per {value.per_seconds:g} s"
    if isinstance(value, tuple):
        return ", ".join(exception_name(kind) for kind in value)
    if field.endswith("_seconds"):
        return f"{value:g} s"
    return str(value)


def as_json(value: Any) -> Any:
    """``value`` as ``greenroom tasks --json`` shows it (exception types by name)."""
    if isinstance(value, RateLimit):
        return {"count": value.count, "per_seconds": value.per_seconds}
    if isinstance(value, tuple):
        return [exception_name(kind) for kind in value]
    return value


def exception_name(kind: type[BaseException]) -> str:
    """A built-in exception's name, any other's module and name.

    >>> from shared.tasks import InvalidContract
    >>> exception_name(ConnectionError), exception_name(InvalidContract)
    ('ConnectionError', 'shared.tasks.InvalidContract')
    """
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
