"""``greenroom tasks`` lists every contract: queue, arguments and effective policies, as text and JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from shared.settings import Settings
from shared.task_policies import POLICY_FIELDS
from tests.support import run_cli

BUILT_IN = ["echo", "echo_async", "fail", "reports.build", "reports.sync_inventory"]


def _env(**settings: str) -> dict[str, str]:
    """This environment without greenroom settings, plus ``settings``."""
    env = {key: value for key, value in os.environ.items() if key not in Settings.model_fields}
    return {**env, **settings}


def test_the_text_listing_shows_each_contract_within_80_columns(tmp_path: Path) -> None:
    done = run_cli(["tasks"], _env(TASK_MAX_RETRIES="7"), tmp_path)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    headers = [line.split()[0] for line in lines if line and not line.startswith(" ")]
    assert headers[: len(BUILT_IN)] == BUILT_IN
    blocks = {block.split()[0]: block for block in done.stdout.split("\n\n")}
    # A contract's value says "contract"; a setting's says which, with this process's value
    sync = [line.split() for line in blocks["reports.sync_inventory"].splitlines()]
    assert ["max_retries", "5", "contract"] in sync
    assert ["retry_on", "ConnectionError,", "TimeoutError", "contract"] in sync
    assert ["max_age_seconds", "3600", "s", "contract"] in sync
    assert ["time_limit_seconds", "300", "s", "TASK_TIME_LIMIT_SECONDS"] in sync
    echo = [line.split() for line in blocks["echo"].splitlines()]
    assert ["max_retries", "7", "TASK_MAX_RETRIES"] in echo
    assert ["concurrency_limit", "no", "limit", "default"] in echo
    assert ["delay_ms", "integer,", "default", "0,", ">=", "0,", "<=", "600000"] in echo
    assert ["payload", "JsonValue,", "required"] in echo


def test_the_json_listing_has_every_argument_and_policy_with_its_source(tmp_path: Path) -> None:
    done = run_cli(["tasks", "--json"], _env(RESULT_TTL_SECONDS="60"), tmp_path)

    assert done.returncode == 0, done.stderr
    listed = {task["name"]: task for task in json.loads(done.stdout)}
    assert list(listed)[: len(BUILT_IN)] == BUILT_IN
    build = listed["reports.build"]
    assert build["queue"] == "reports"
    assert build["arguments"][0] == {
        "name": "report_id",
        "type": "string",
        "required": True,
        "bounds": {"minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]+$"},
    }
    assert build["arguments"][1]["default"] == 50_000
    assert list(build["policies"]) == list(POLICY_FIELDS)
    assert build["policies"]["time_limit_seconds"] == {"value": 120, "source": "contract"}
    assert build["policies"]["result_ttl_seconds"] == {"value": 60, "source": "RESULT_TTL_SECONDS"}
    assert build["policies"]["rate_limit"] == {"value": None, "source": "default"}
    sync = listed["reports.sync_inventory"]["policies"]
    assert sync["retry_on"] == {"value": ["ConnectionError", "TimeoutError"], "source": "contract"}


def test_one_task_by_name_and_an_unknown_one_refused_in_one_line(tmp_path: Path) -> None:
    one = run_cli(["tasks", "--json", "fail"], _env(), tmp_path)
    assert one.returncode == 0, one.stderr
    assert [task["name"] for task in json.loads(one.stdout)] == ["fail"]

    unknown = run_cli(["tasks", "nope"], _env(), tmp_path)
    assert unknown.returncode == 2
    assert unknown.stdout == ""
    [line] = unknown.stderr.splitlines()
    assert line.startswith("greenroom: error: unknown task 'nope' (tasks: echo, ")
