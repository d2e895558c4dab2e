"""Declaring a task contract registers it; the contracts package loads every module in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.contracts.diagnostics import ECHO, EchoArguments
from shared.tasks import DuplicateTask, TaskContract, get_task
from tests.support import REPO

GREET_CONTRACT = textwrap.dedent(
    """
    from shared.tasks import TaskArguments, TaskContract

    class GreetArguments(TaskArguments):
        name: str

    GREET = TaskContract(name="greet", queue="greetings", arguments=GreetArguments, description="Say hello.")
    """
)


def run_python(code: str, pythonpath: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=pythonpath, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_built_in_contracts_are_in_the_table_without_a_hand_edited_list() -> None:
    # Given a fresh process (this one may have loaded other modules declaring contracts, the bench's)
    code = (
        "import json, shared.tasks as tasks; "
        "print(json.dumps([[c.name for c in tasks.all_tasks()], sorted(tasks.TASKS), len(tasks.TASKS)]))"
    )
    # When it reads the task table
    declared, names, count = json.loads(run_python(code, REPO))
    # Then it holds the contracts of shared/contracts, in the order they were declared
    assert declared == ["echo", "echo_async", "fail", "reports.build", "reports.sync_inventory"]
    assert names == sorted(declared)
    assert count == 5
    assert get_task("echo") is ECHO


def test_a_second_contract_with_a_taken_name_is_refused_at_declaration() -> None:
    with pytest.raises(DuplicateTask, match="task 'echo' is declared twice"):
        TaskContract(name="echo", queue="elsewhere", arguments=EchoArguments, description="a copy")
    assert get_task("echo") is ECHO


def test_a_new_module_in_the_contracts_package_is_enough(tmp_path: Path) -> None:
    # Given a copy of the project with one more contracts module
    shutil.copytree(REPO / "shared", tmp_path / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "shared" / "contracts" / "greetings.py").write_text(GREET_CONTRACT)

    # When a process reads the task table
    code = (
        "import json, shared.tasks as tasks; "
        "print(json.dumps([tasks.get_task('greet').queue, sorted(tasks.TASKS), tasks.__file__]))"
    )
    queue, names, loaded_from = json.loads(run_python(code, tmp_path))

    # Then the new task is known, beside the built-in ones
    assert queue == "greetings"
    assert names == ["echo", "echo_async", "fail", "greet", "reports.build", "reports.sync_inventory"]
    assert Path(loaded_from).is_relative_to(tmp_path)


def test_a_contract_declared_in_any_module_is_known(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.py").write_text(GREET_CONTRACT)
    code = "import elsewhere, shared.tasks as tasks; print(tasks.get_task('greet').description)"
    assert run_python(code, tmp_path).strip() == "Say hello."
