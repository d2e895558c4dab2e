"""QUEUE_MAX_PRIORITIES: how it is read, how a bad value is refused (exit 2, one line), the queue
arguments it gives, and the line for a queue RabbitMQ keeps with other priorities."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.broker import build_broker
from shared.queue_arguments import explain_refusal
from shared.runtime.service_checks import check_services
from shared.settings import Settings, load_settings
from shared.tasks import TaskArguments, TaskContract
from tests.support import free_port, run_cli


class NoArguments(TaskArguments):
    pass


#: A contract whose priority (above the usual 9) its queue must take.
HIGH = TaskContract(
    name="tests.priorities.high",
    queue="tests-priorities-high",
    arguments=NoArguments,
    description="A task whose contract gives it priority 12.",
    priority=12,
)


def test_priorities_are_read_as_queue_maximum_pairs() -> None:
    assert load_settings(_env_file=None).QUEUE_MAX_PRIORITIES == {}
    settings = load_settings(_env_file=None, QUEUE_MAX_PRIORITIES="default=9, reports=3")
    assert settings.QUEUE_MAX_PRIORITIES == {"default": 9, "reports": 3}
    assert load_settings(_env_file=None, QUEUE_MAX_PRIORITIES="default=255 bench=1").QUEUE_MAX_PRIORITIES == {
        "default": 255,
        "bench": 1,
    }


def test_each_queue_and_its_dq_is_declared_with_its_own_maximum() -> None:
    broker = build_broker(load_settings(_env_file=None, QUEUE_MAX_PRIORITIES="default=9"), "producer")
    try:
        assert (
            broker._build_queue_arguments("default")["x-max-priority"] == 9
        )  # also what .DQ is declared with
        assert "x-max-priority" not in broker._build_queue_arguments("reports")
    finally:
        broker.close()


BAD_VALUES = [
    ("default", "'default' is not queue=maximum (e.g. default=9,reports=3)"),
    ("default=", "'default=' is not queue=maximum"),
    ("default=high", "'default=high' is not queue=maximum"),
    ("default=-1", "'default=-1' is not queue=maximum"),
    ("default=0", "default: the maximum priority must be from 1 to 255"),
    ("default=256", "default: the maximum priority must be from 1 to 255"),
    ("default=" + "9" * 5000, "default: the maximum priority must be from 1 to 255"),
    ("default=9,default=3", "queue 'default' is given twice"),
    ("default.DQ=3", "'default.DQ' is not a valid queue name"),
    ("1st=3", "'1st' is not a valid queue name"),
]


@pytest.mark.parametrize(("value", "expected"), BAD_VALUES, ids=[v[:40] for v, _ in BAD_VALUES])
def test_a_bad_value_exits_2_with_one_line(tmp_path: Path, value: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    for command in (["config"], ["send", "echo", "--kwargs", '{"payload": 1}']):
        completed = run_cli(command, {**env, "QUEUE_MAX_PRIORITIES": value}, tmp_path)
        assert completed.returncode == 2, completed
        [line] = completed.stderr.splitlines()
        assert line.startswith("greenroom: error: invalid setting QUEUE_MAX_PRIORITIES="), line
        assert expected in line, line
        assert completed.stdout == ""


def _refusal(queue: str, received: str, current: str) -> str:
    return (
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue '{queue}' in vhost 'prod': "
        f"received {received} but current is {current}"
    )


def test_a_queue_kept_with_other_priorities_gets_one_line_saying_what_to_do() -> None:
    # RabbitMQ words its refusal three ways: a value on one side only, or on both
    added = explain_refusal(
        _refusal("default", "the value '9' of type 'signedint'", "none"), 0, {"default": 9}
    )
    changed = explain_refusal(_refusal("default.DQ", "'3'", "'9'"), 0, {"default": 3})
    removed = explain_refusal(_refusal("default", "none", "the value '9' of type 'signedint'"), 0, {})

    assert added.startswith(
        "QUEUE_MAX_PRIORITIES gives queue 'default' x-max-priority 9 (default=9), but RabbitMQ keeps it "
        "without priorities and cannot change that: remove default=9 from it; or, to change it, "
    )
    assert changed.startswith(
        "QUEUE_MAX_PRIORITIES gives queue 'default' x-max-priority 3 (default=3), but RabbitMQ keeps it "
        "with x-max-priority 9 and cannot change that: set default=9 in it again; "
    )
    assert removed.startswith(
        "QUEUE_MAX_PRIORITIES gives queue 'default' no priorities, but RabbitMQ keeps it "
        "with x-max-priority 9"
    )
    for line in (added, changed, removed):
        assert "\n" not in line
        assert line.endswith(
            "delete both (rabbitmqctl delete_queue -p prod default; rabbitmqctl delete_queue -p prod "
            "default.DQ) and start again with the new one"
        )


def test_other_refusals_keep_their_lines() -> None:
    dead_letters = (
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'default.XQ' in vhost '/': "
        "received '86400000' but current is '604800000'"
    )
    assert explain_refusal(dead_letters, 86400, {"default": 9}).startswith("DEAD_LETTER_TTL_SECONDS=86400")
    other = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'default' in vhost '/'"
    assert explain_refusal(other, 86400, {}) == (
        f"RabbitMQ holds a queue with other arguments than greenroom declares: {other}"
    )


def test_a_worker_refuses_a_contract_priority_its_queue_does_not_take() -> None:
    # Given: no RabbitMQ there (an outage passes the check: only the contract can refuse)
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"

    def refusal(priorities: str) -> str | None:
        settings = load_settings(_env_file=None, RABBITMQ_URL=nowhere, QUEUE_MAX_PRIORITIES=priorities)
        return check_services(settings, [HIGH.queue], stores_results=False)

    # Then
    assert refusal("") == (
        "priority 12 (the contract's): queue 'tests-priorities-high' of task 'tests.priorities.high' has no "
        "priorities: enable them with QUEUE_MAX_PRIORITIES (e.g. tests-priorities-high=12)"
    )
    assert refusal("tests-priorities-high=9") == (
        "priority 12 (the contract's): queue 'tests-priorities-high' of task 'tests.priorities.high' takes "
        "priorities 0 to 9 (QUEUE_MAX_PRIORITIES), got 12"
    )
    assert refusal("tests-priorities-high=12") is None
    assert (
        check_services(load_settings(_env_file=None, RABBITMQ_URL=nowhere), ["default"], stores_results=False)
        is None
    )
