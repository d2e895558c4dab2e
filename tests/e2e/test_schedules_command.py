"""``greenroom schedules`` lists the schedules with their next three fire times (text and JSON);
it and ``greenroom beat`` refuse a bad schedule, or a module that cannot be imported, with one
line on stderr and exit code 2.

The modules these commands import are written to the test's directory (put on PYTHONPATH), not
kept under tests/: pytest imports every module there for its doctests, and a bad schedule raises
where it is declared."""

from __future__ import annotations

import itertools
import json
import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.support import free_port, run_cli

GOOD = textwrap.dedent(
    """
    from datetime import timedelta

    from shared.schedules import Schedule

    NIGHTLY = Schedule(
        name="tests.nightly",
        task="reports.build",
        kwargs={"report_id": "nightly"},
        cron="30 2 * * *",
        timezone="Europe/Berlin",
        description="The nightly report.",
    )
    QUARTER = Schedule(name="tests.quarter", task="echo", kwargs={"payload": 1}, every=timedelta(minutes=15))
    """
)

#: Modules with one bad schedule each, and the line that refuses it.
BAD_MODULES = {
    "bad_cron": (
        'Schedule(name="tests.bad-cron", task="echo", kwargs={"payload": 1}, cron="61 * * * *")',
        "greenroom: error: schedule 'tests.bad-cron': cron '61 * * * *': Bad minute",
    ),
    "bad_zone": (
        'Schedule(name="tests.bad-zone", task="echo", kwargs={"payload": 1}, cron="0 3 * * *",'
        ' timezone="Mars/Base")',
        "greenroom: error: schedule 'tests.bad-zone': timezone 'Mars/Base' is not an IANA time zone "
        "(e.g. Europe/Berlin)",
    ),
    "bad_arguments": (
        'Schedule(name="tests.bad-arguments", task="reports.build", kwargs={"rows": 5}, every=60)',
        "greenroom: error: schedule 'tests.bad-arguments': invalid arguments for task 'reports.build': "
        "report_id: Field required",
    ),
    "unknown_task": (
        'Schedule(name="tests.unknown-task", task="reports.nope", every=60)',
        "greenroom: error: schedule 'tests.unknown-task': unknown task 'reports.nope' (known tasks: echo, "
        "echo_async, fail, reports.build, reports.sync_inventory)",
    ),
    "heartbeat_clash": (
        'Schedule(name="heartbeat", task="echo", kwargs={"payload": 1}, every=60)',
        "greenroom: error: schedule 'heartbeat': the name is taken by the heartbeat (BEAT_HEARTBEAT_SECONDS)",
    ),
    "raises_at_import": (
        'raise RuntimeError("no config\\nfor you")',
        "greenroom: error: cannot import module 'raises_at_import': RuntimeError: no config for you",
    ),
    "exits_at_import": (
        "import sys\nsys.exit(3)",
        "greenroom: error: cannot import module 'exits_at_import': SystemExit: 3",
    ),
    "declared_twice": (
        'Schedule(name="tests.twice", task="echo", kwargs={"payload": 1}, every=60)\n'
        'Schedule(name="tests.twice", task="fail", every=60)',
        "greenroom: error: schedule 'tests.twice': declared twice (task 'echo' and task 'fail')",
    ),
}


def write_modules(directory: Path) -> None:
    (directory / "good_schedules.py").write_text(GOOD)
    for name, (declaration, _line) in BAD_MODULES.items():
        (directory / f"{name}.py").write_text(f"from shared.schedules import Schedule\n\n{declaration}\n")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """This environment without greenroom settings, the test's modules importable, and services
    no test here should reach (a beat that started by mistake would fail, not touch a platform)."""
    write_modules(tmp_path)
    plain = {key: value for key, value in os.environ.items() if key not in Settings.model_fields}
    return {
        **plain,
        "PYTHONPATH": str(tmp_path),
        "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "METRICS_PORT": str(free_port()),
    }


def test_the_listing_shows_the_heartbeat_with_its_next_three_minutes(
    tmp_path: Path, env: dict[str, str]
) -> None:
    before = datetime.now(UTC)

    done = run_cli(["schedules"], env, tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    header, description, upcoming = done.stdout.splitlines()
    assert header.split() == ["heartbeat", "echo", "every", "60s"]
    assert description.strip() == "Diagnostic: echo the tick's scheduled time (BEAT_HEARTBEAT_SECONDS)."
    assert upcoming.startswith("  next: ")
    times = [datetime.fromisoformat(text) for text in upcoming.removeprefix("  next: ").split(", ")]
    assert len(times) == 3
    assert all(moment.second == 0 and moment.utcoffset() == timedelta(0) for moment in times)
    assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(minutes=1)] * 2
    assert before < times[0] <= before + timedelta(minutes=1, seconds=1)


def test_the_json_listing_parses_and_has_each_schedule_in_its_own_time_zone(
    tmp_path: Path, env: dict[str, str]
) -> None:
    done = run_cli(
        ["schedules", "good_schedules", "--json"], {**env, "BEAT_HEARTBEAT_SECONDS": "30"}, tmp_path
    )

    assert done.returncode == 0, done.stderr
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    assert list(listed) == ["heartbeat", "tests.nightly", "tests.quarter"]
    assert listed["heartbeat"]["every_seconds"] == 30
    nightly = listed["tests.nightly"]
    assert {key: nightly[key] for key in ("task", "when", "cron", "every_seconds", "timezone", "kwargs")} == {
        "task": "reports.build",
        "when": "cron 30 2 * * * Europe/Berlin",
        "cron": "30 2 * * *",
        "every_seconds": None,
        "timezone": "Europe/Berlin",
        "kwargs": {"report_id": "nightly"},
    }
    assert nightly["description"] == "The nightly report."
    # Berlin times, 02:30 local (+01:00 or +02:00; 03:00 on a spring-forward night), a day apart
    assert len(nightly["next"]) == 3
    for text in nightly["next"]:
        moment = datetime.fromisoformat(text)
        assert moment.utcoffset() in (timedelta(hours=1), timedelta(hours=2)), text
        assert (moment.hour, moment.minute) in ((2, 30), (3, 0)), text
    quarter = listed["tests.quarter"]
    assert (quarter["when"], quarter["every_seconds"], quarter["timezone"]) == ("every 900s", 900, "UTC")
    assert all(datetime.fromisoformat(t).minute % 15 == 0 for t in quarter["next"])


def test_beat_heartbeat_seconds_0_leaves_the_heartbeat_out(tmp_path: Path, env: dict[str, str]) -> None:
    done = run_cli(["schedules", "--json"], {**env, "BEAT_HEARTBEAT_SECONDS": "0"}, tmp_path)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize("module", list(BAD_MODULES))
def test_a_bad_schedule_stops_both_commands_with_one_line_and_exit_2(
    module: str, tmp_path: Path, env: dict[str, str]
) -> None:
    expected = BAD_MODULES[module][1]
    for command in (["schedules", module], ["schedules", module, "--json"], ["beat", module]):
        done = run_cli(command, env, tmp_path, timeout=30)

        assert done.returncode == 2, (command, done)
        assert done.stderr.splitlines() == [expected], command
        # stdout carries nothing but JSON log lines (a refusal, like a worker's, writes none)
        assert all(json.loads(line) for line in done.stdout.splitlines()), done.stdout
        assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("command", ["schedules", "beat"])
def test_a_module_that_does_not_exist_exits_2_with_one_line(
    command: str, tmp_path: Path, env: dict[str, str]
) -> None:
    done = run_cli([command, "tests_no_such_module"], env, tmp_path, timeout=30)

    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "greenroom: error: cannot import module 'tests_no_such_module': "
        "ModuleNotFoundError: No module named 'tests_no_such_module'"
    ]
    assert done.stdout == ""


def test_a_bad_beat_setting_is_refused_with_one_line_naming_it(tmp_path: Path, env: dict[str, str]) -> None:
    for command in (["schedules"], ["beat"]):
        done = run_cli(command, {**env, "BEAT_HEARTBEAT_SECONDS": "-1"}, tmp_path, timeout=30)

        assert done.returncode == 2, (command, done)
        [line] = done.stderr.splitlines()
        assert line.startswith("greenroom: error: invalid setting BEAT_HEARTBEAT_SECONDS="), line
        assert done.stdout == ""
