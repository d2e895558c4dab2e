"""A send's options (delay, eta, priority) are checked before anything is published: one line each.

The producer here has no RabbitMQ behind it (an unused port): any option that passed its
checks would fail to publish with PublishError, so InvalidParameter proves nothing was sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.errors import InvalidParameter, InvalidTaskArguments
from shared.producer import Producer
from shared.producer_checks import due_at_ms, message_priority
from shared.settings import load_settings
from shared.tasks import TaskArguments, TaskContract, get_task
from tests.support import free_port


class NoArguments(TaskArguments):
    pass


#: A contract whose default priority its queue may not have.
PRIORITISED = TaskContract(
    name="tests.send_options.prioritised",
    queue="tests-prioritised",
    arguments=NoArguments,
    description="A task with a default priority.",
    priority=5,
)

NOW_MS = 1_800_000_000_000


@pytest.fixture
def producer() -> Iterator[Producer]:
    settings = load_settings(
        _env_file=None,
        RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        SEND_RETRY_TIMEOUT_SECONDS=0,
        QUEUE_MAX_PRIORITIES="default=9",
    )
    producer = Producer(settings, tracer_provider=TracerProvider())
    yield producer
    producer.close()


BAD_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"delay": -1}, "delay: must be a finite number of seconds, 0 or more, got -1"),
    ({"delay": math.nan}, "delay: must be a finite number of seconds, 0 or more, got nan"),
    ({"delay": math.inf}, "delay: must be a finite number of seconds, 0 or more, got inf"),
    ({"delay": True}, "delay: must be a number of seconds or a timedelta, got bool"),
    ({"delay": "30s"}, "delay: must be a number of seconds or a timedelta, got str"),
    ({"delay": 7 * 86400 + 1}, "delay: must be at most 604800 seconds (7 days), got 604801"),
    ({"delay": timedelta(days=8)}, "delay: must be at most 604800 seconds (7 days), got 691200"),
    ({"delay": timedelta(seconds=-1)}, "delay: must be a finite number of seconds, 0 or more"),
    ({"eta": datetime(2026, 12, 24, 18, 0)}, "eta: must be an aware datetime (with a time zone"),
    ({"eta": "2026-12-24T18:00:00Z"}, "eta: must be an aware datetime, got str"),
    ({"eta": datetime.now(UTC) + timedelta(days=8)}, "eta: must be at most 604800 seconds"),
    ({"delay": 1, "eta": datetime.now(UTC)}, "delay: give delay or eta, not both"),
    ({"priority": True}, "priority: must be a whole number from 0 to 255, got True"),
    ({"priority": "5"}, "priority: must be a whole number from 0 to 255, got '5'"),
    ({"priority": 2.0}, "priority: must be a whole number from 0 to 255, got 2.0"),
    ({"priority": -1}, "priority: must be from 0 to 255, got -1"),
    ({"priority": 256}, "priority: must be from 0 to 255, got 256"),
    ({"priority": 10}, "priority: queue 'default' of task 'echo' takes priorities 0 to 9"),
]


@pytest.mark.parametrize(("options", "expected"), BAD_OPTIONS, ids=[repr(o) for o, _ in BAD_OPTIONS])
def test_a_bad_option_is_refused_with_one_line_before_publishing(
    producer: Producer, options: dict[str, Any], expected: str
) -> None:
    for send in (
        lambda: producer.send_with_options("echo", {"payload": 1}, **options),
        lambda: producer.send_many("echo", [{"payload": 1}], **options),
    ):
        with pytest.raises(InvalidParameter) as refused:
            send()
        assert str(refused.value).startswith(expected), str(refused.value)
        assert "\n" not in str(refused.value)


def test_a_priority_for_a_queue_without_priorities_is_refused(producer: Producer) -> None:
    with pytest.raises(InvalidParameter) as refused:
        producer.send_with_options("reports.build", {"report_id": "q3"}, priority=1)
    assert str(refused.value) == (
        "priority: queue 'reports' of task 'reports.build' has no priorities: "
        "enable them with QUEUE_MAX_PRIORITIES (e.g. reports=9)"
    )


def test_a_contracts_default_priority_is_refused_on_a_queue_without_priorities(producer: Producer) -> None:
    # Every send of the task is refused, plain send included: the contract and the settings disagree
    for send in (
        lambda: producer.send(PRIORITISED.name),
        lambda: producer.send_with_options(PRIORITISED.name, {}),
        lambda: producer.send_many(PRIORITISED.name, [{}]),
    ):
        with pytest.raises(
            InvalidParameter, match=r"^priority 5 \(the contract's\): queue 'tests-prioritised'"
        ):
            send()


def test_kwargs_must_be_a_mapping(producer: Producer) -> None:
    with pytest.raises(InvalidTaskArguments, match="kwargs must be a mapping of keyword arguments, got list"):
        producer.send_with_options("echo", [("payload", 1)])  # type: ignore[arg-type]


def test_due_times() -> None:
    # A delay in seconds or as a timedelta, rounded up to the millisecond: never early
    assert due_at_ms(delay=1.5, eta=None, now_ms=NOW_MS) == NOW_MS + 1500
    assert due_at_ms(delay=0.0001, eta=None, now_ms=NOW_MS) == NOW_MS + 1
    assert due_at_ms(delay=timedelta(hours=2), eta=None, now_ms=NOW_MS) == NOW_MS + 7_200_000
    assert due_at_ms(delay=7 * 86400, eta=None, now_ms=NOW_MS) == NOW_MS + 604_800_000
    # Nothing to wait for: no option, a delay of 0, an ETA now or past
    assert due_at_ms(delay=None, eta=None, now_ms=NOW_MS) is None
    assert due_at_ms(delay=0, eta=None, now_ms=NOW_MS) is None
    eta = datetime.fromtimestamp(NOW_MS / 1000, UTC)
    assert due_at_ms(delay=None, eta=eta, now_ms=NOW_MS) is None
    assert due_at_ms(delay=None, eta=eta - timedelta(days=400), now_ms=NOW_MS) is None
    # An ETA in any time zone is the same instant
    plus_one = timezone(timedelta(hours=1))
    assert due_at_ms(delay=None, eta=(eta + timedelta(seconds=30)).astimezone(plus_one), now_ms=NOW_MS) == (
        NOW_MS + 30_000
    )


def test_the_priority_sent_is_the_sends_else_the_contracts() -> None:
    echo = get_task("echo")
    assert message_priority(echo, None, {}) is None  # no priority at all: nothing to check
    assert message_priority(echo, 0, {"default": 9}) == 0
    assert message_priority(echo, 9, {"default": 9}) == 9
    assert message_priority(PRIORITISED, None, {"tests-prioritised": 5}) == 5
    assert message_priority(PRIORITISED, 1, {"tests-prioritised": 5}) == 1
