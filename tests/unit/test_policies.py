"""actor_options maps every policy field of a contract to Dramatiq's actor options."""

from __future__ import annotations

import uuid

from shared.errors import InvalidTaskArguments
from shared.settings import load_settings
from shared.tasks import TASKS, RateLimit, TaskArguments, TaskContract
from workers.actor import NotAwaited, RetryOn, actor_options


class NoArguments(TaskArguments):
    pass


def _contract(**policy: object) -> TaskContract:
    name = f"policies-unit-{uuid.uuid4().hex[:8]}"
    contract = TaskContract(name=name, queue="q", arguments=NoArguments, description="test", **policy)  # type: ignore[arg-type]
    TASKS.forget(name)  # declared for this test only
    return contract


def test_every_policy_field_becomes_its_actor_option_in_milliseconds() -> None:
    contract = _contract(
        max_retries=4,
        min_backoff_seconds=0.5,
        max_backoff_seconds=8,
        retry_on=(ConnectionError,),
        time_limit_seconds=2.5,
        max_age_seconds=60,
        result_ttl_seconds=30,
        store_results=False,
        priority=3,
        concurrency_limit=2,
        rate_limit=RateLimit(5, 1.0),
    )

    options = actor_options(contract, load_settings(_env_file=None))

    retry_when = options.pop("retry_when")
    assert options == {
        "max_retries": 4,
        "min_backoff": 500,
        "max_backoff": 8000,
        "time_limit": 2500,
        "max_age": 60_000,
        "result_ttl": 30_000,
        "store_results": False,
        "throws": (InvalidTaskArguments, NotAwaited),
    }  # priority travels on messages, limits are TaskLimits': neither is an actor option
    assert isinstance(retry_when, RetryOn)
    assert [retry_when(n, ConnectionResetError()) for n in range(5)] == [True, True, True, True, False]
    assert retry_when(0, ValueError()) is False


def test_fields_left_none_fall_back_to_the_settings() -> None:
    settings = load_settings(
        _env_file=None,
        TASK_MAX_RETRIES=7,
        TASK_MIN_BACKOFF_SECONDS=0.25,
        TASK_MAX_BACKOFF_SECONDS=9,
        TASK_TIME_LIMIT_SECONDS=12,
        RESULT_TTL_SECONDS=99,
    )

    options = actor_options(_contract(), settings)

    assert options["max_retries"] == 7
    assert (options["min_backoff"], options["max_backoff"]) == (250, 9000)
    assert options["time_limit"] == 12_000
    assert options["result_ttl"] == 99_000
    assert "max_age" not in options and "retry_when" not in options  # none: no age limit, every error retries


def test_zero_retries_in_the_contract_is_not_the_setting() -> None:
    options = actor_options(_contract(max_retries=0), load_settings(_env_file=None, TASK_MAX_RETRIES=5))
    assert options["max_retries"] == 0
