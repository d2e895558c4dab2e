"""Task contracts: validation and lookup."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.errors import InvalidTaskArguments, UnknownTask
from shared.tasks import get_task


def test_echo_defaults_and_json_values() -> None:
    assert get_task("echo").validate({"payload": {"x": [1, 2]}}) == {"payload": {"x": [1, 2]}, "delay_ms": 0}


@pytest.mark.parametrize(
    ("task", "kwargs", "problem"),
    [
        ("echo", {}, "payload: Field required"),
        ("echo", {"payload": 1, "delay_ms": -5}, "delay_ms: Input should be greater than or equal to 0"),
        ("echo", {"payload": 1, "extra": True}, "extra: Extra inputs are not permitted"),
        ("echo", {"payload": object()}, "payload"),
        ("reports.build", {"report_id": "../etc"}, "report_id: String should match pattern"),
    ],
)
def test_invalid_arguments_name_the_field(task: str, kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidTaskArguments, match=f"invalid arguments for task '{task}'") as error:
        get_task(task).validate(kwargs)
    assert problem in str(error.value)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(UnknownTask, match="unknown task 'ecko'") as error:
        get_task("ecko")
    assert "echo" in str(error.value)


def test_every_production_contract_is_on_a_named_queue_and_the_bench_task_on_none() -> None:
    # Given a process that loads only production modules (this one may have loaded the bench's)
    table = "{contract.name: contract.queue for contract in shared.tasks.TASKS.values()}"
    code = f"import json, shared.tasks, workers; print(json.dumps({table}))"
    # When it lists its task table
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # Then every task is on default or reports, and the bench's task is not there
    assert json.loads(listed) == {
        "echo": "default",
        "echo_async": "default",
        "fail": "default",
        "reports.build": "reports",
        "reports.sync_inventory": "reports",
    }
