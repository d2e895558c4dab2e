"""Sending with a delay or an ETA, through the producer API and ``greenroom send``, with a real worker:
a delayed task runs no earlier than due; an ETA passed runs now; bad options publish nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.producer import Producer, TaskHandle
from tests.e2e.conftest import StartWorker
from tests.support import Worker, run_cli


def _started_at(worker: Worker, handle: TaskHandle) -> float:
    """When the worker started the task (its task line's time, less the task's duration)."""
    [event] = [e for e in worker.task_events() if e["message_id"] == handle.message_id]
    assert event["event"] == "succeeded", event
    return datetime.fromisoformat(event["timestamp"]).timestamp() - float(event["duration_seconds"])


def test_delayed_tasks_run_no_earlier_than_due_and_a_past_eta_runs_now(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given
    worker = start_worker(processes=1, threads=4)

    # When: a delay in seconds, one as a timedelta, an ETA, a batch with a delay, and an ETA passed
    sent = time.time()
    delayed = producer.send_with_options("echo", {"payload": "delayed"}, delay=1.5)
    as_timedelta = producer.send_with_options("echo", {"payload": "timedelta"}, delay=timedelta(seconds=1))
    eta = datetime.now(UTC) + timedelta(seconds=2)
    at_eta = producer.send_with_options("echo", {"payload": "eta"}, eta=eta)
    batch = producer.send_many("echo", [{"payload": n} for n in range(5)], delay=1)
    past = producer.send_with_options("echo", {"payload": "now"}, eta=datetime(2020, 1, 1, tzinfo=UTC))

    # Then: each returns its payload, none started before it was due, the passed ETA at once
    assert past.result(timeout=10) == "now"
    assert delayed.result(timeout=30) == "delayed"
    assert as_timedelta.result(timeout=30) == "timedelta"
    assert at_eta.result(timeout=30) == "eta"
    assert [handle.result(timeout=30) for handle in batch] == list(range(5))
    worker.wait_for_task_events(9)
    assert _started_at(worker, delayed) >= sent + 1.5
    assert _started_at(worker, as_timedelta) >= sent + 1
    assert _started_at(worker, at_eta) >= eta.timestamp()
    assert all(_started_at(worker, handle) >= sent + 1 for handle in batch)
    assert _started_at(worker, past) < _started_at(worker, as_timedelta)


def test_greenroom_send_with_a_delay_or_an_eta(
    start_worker: StartWorker, service_env: dict[str, str], workdir: Path
) -> None:
    # Given
    start_worker(processes=1, threads=2)

    # When / Then: each waits for its result, which comes no earlier than due
    for flag, value in (("--delay", "2s"), ("--delay", "1.5"), ("--eta", None)):
        sent = time.time()
        options = [flag, value or _iso_z(datetime.now(UTC) + timedelta(seconds=2))]
        completed = run_cli(
            ["send", "echo", "--kwargs", '{"payload": 7}', *options, "--wait", "--timeout", "30"],
            service_env,
            workdir,
        )
        assert (completed.returncode, completed.stdout, completed.stderr) == (0, "7\n", ""), options
        assert time.time() - sent >= 1.5, options

    # And an ETA passed (in another time zone) runs now
    completed = run_cli(
        ["send", "echo", "--kwargs", '{"payload": 8}', "--eta", "2020-01-01T01:00:00+01:00", "--wait"],
        service_env,
        workdir,
    )
    assert (completed.returncode, completed.stdout) == (0, "8\n")


BAD_USAGE = [
    (["--delay", "5x"], "argument --delay: must be seconds or a number with s, m, h or d"),
    (["--delay", "-1"], "argument --delay: must be seconds or a number with s, m, h or d"),
    (["--delay", "8d"], "delay: must be at most 604800 seconds (7 days), got 691200"),
    (["--delay", "1" + "0" * 400], "delay: must be a finite number of seconds, 0 or more, got inf"),
    (["--eta", "2026-12-24T18:00:00"], "argument --eta: needs a time zone, Z or an offset"),
    (["--eta", "tomorrow"], "argument --eta: must be an ISO 8601 date and time"),
    (
        ["--delay", "30s", "--eta", "2026-12-24T18:00:00Z"],
        "argument --eta: not allowed with argument --delay",
    ),
    (["--priority", "256"], "argument --priority: must be a whole number from 0 to 255, got '256'"),
    (["--priority", "high"], "argument --priority: must be a whole number from 0 to 255, got 'high'"),
    (["--priority", "3"], "priority: queue 'default' of task 'echo' has no priorities: enable them with"),
]


@pytest.mark.parametrize(("options", "expected"), BAD_USAGE, ids=[" ".join(o) for o, _ in BAD_USAGE])
def test_bad_send_options_exit_2_with_one_line_and_publish_nothing(
    producer: Producer, service_env: dict[str, str], workdir: Path, options: list[str], expected: Any
) -> None:
    # When
    completed = run_cli(["send", "echo", "--kwargs", '{"payload": 1}', *options], service_env, workdir)

    # Then
    assert completed.returncode == 2, completed
    [line] = completed.stderr.splitlines()
    assert line.startswith("greenroom: error: ") and expected in line, line
    assert completed.stdout == ""
    assert producer.broker.get_queue_message_counts("default")[:2] == (0, 0)


def _iso_z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
