"""Cancellation without services: the report lines, ``greenroom cancel``'s exit codes, and the
worker middleware's skip and interrupt (a real thread interrupted, as a time limit does)."""

from __future__ import annotations

import argparse
import json
import threading
import time

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from shared.cancellation import CancelledWhileRunning, CancelReport, SentRecord, report_for
from shared.cli import build_parser
from shared.cli import cancel as cancel_command
from shared.runtime.cancellation import Cancellation
from shared.settings import load_settings
from tests.e2e.cancel_tasks import CANCELLABLE, QUICK

ECHO = SentRecord("echo", "default", True)


def proxy(actor: str = QUICK.name, message_id: str = "m-1") -> MessageProxy:
    return MessageProxy(dramatiq.Message("cancels", actor, (), {}, {}, message_id=message_id))


def test_each_status_has_its_line_and_only_cancels_count_as_cancelled() -> None:
    reports = [
        report_for("m-1", ECHO, "cancelled"),
        report_for("m-2", ECHO, "already cancelled"),
        report_for("m-3", ECHO, "finished", "it failed: ValueError"),
        report_for("m-4", None, "unknown"),
    ]

    assert [report.line for report in reports] == [
        "message m-1 (task echo): cancelled"
        " (if it is running already, it finishes: the task is not cancellable)",
        "message m-2 (task echo): already cancelled",
        "message m-3 (task echo): finished, not cancelled (it failed: ValueError)",
        "message m-4: unknown (never sent by a greenroom producer, or its record expired)",
    ]
    assert [report.cancelled for report in reports] == [True, True, False, False]
    assert reports[3].task is None


def test_a_sent_record_survives_encoding_and_garbage_reads_as_none() -> None:
    assert SentRecord.decode(SentRecord("reports.build", "reports", False).encode()) == SentRecord(
        "reports.build", "reports", False
    )
    assert [SentRecord.decode(data) for data in (None, b"", b"{}", b'{"task": 1}', b"\xff")] == [None] * 5


def test_greenroom_cancel_exits_0_only_when_every_message_is_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cancelled = report_for("m-1", ECHO, "cancelled")

    assert cancel_command.report([cancelled, report_for("m-2", ECHO, "already cancelled")]) == 0
    assert cancel_command.report([cancelled, report_for("m-3", ECHO, "finished", "it succeeded")]) == 1
    assert cancel_command.report([report_for("m-4", None, "unknown")]) == 1
    assert capsys.readouterr().out.count("\n") == 5  # one line per id


def test_greenroom_cancel_without_ids_or_with_a_bad_id_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(["cancel"])
    assert usage.value.code == 2
    assert "the following arguments are required: MESSAGE_ID" in capsys.readouterr().err

    for bad in ("", "a\nb", "x" * 129, "../m-1"):
        args = argparse.Namespace(message_ids=["m-1", bad])
        assert cancel_command.run(args, load_settings(_env_file=None)) == 2
        [line] = capsys.readouterr().err.splitlines()  # one line, whatever the id holds
        assert line.startswith("greenroom: error: message_id: ") and "letters, digits and ._:-" in line


def test_greenroom_cancel_with_redis_away_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(_env_file=None, REDIS_URL="redis://127.0.0.1:1/0")

    assert cancel_command.run(argparse.Namespace(message_ids=["m-1"]), settings) == 1

    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("greenroom: could not cancel: Redis unavailable: "), line


def test_a_pending_cancellation_skips_the_message_and_notes_it() -> None:
    # Given: a worker process that knows m-1 is cancelled (no result backend: no mark to store)
    cancellation = Cancellation(load_settings(_env_file=None))
    cancellation._announced(json.dumps(["m-1"]))
    message = proxy()

    # When / Then: m-1 is skipped, noted cancelled, and Results will not store None over the mark
    with pytest.raises(SkipMessage):
        cancellation.before_process_message(dramatiq.get_broker(), message)
    assert message.options["greenroom_cancelled"] is True
    assert message.options["store_results"] is False
    assert cancellation.is_cancelled("m-1") and not cancellation.is_cancelled("m-2")
    # And: another message passes
    cancellation.before_process_message(dramatiq.get_broker(), proxy(message_id="m-2"))


def test_a_cancel_interrupts_a_running_cancellable_task_in_its_thread() -> None:
    # Given: a cancellable task running in a thread
    cancellation = Cancellation(load_settings(_env_file=None))
    cancellation._cancellable = frozenset({CANCELLABLE.name})
    message = proxy(CANCELLABLE.name)
    started, ended = threading.Event(), []

    def run() -> None:
        cancellation.before_process_message(dramatiq.get_broker(), message)
        started.set()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.01)
            ended.append("finished")
        except CancelledWhileRunning:
            ended.append("interrupted")

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(5)

    # When: its cancel is announced
    cancellation._announced(json.dumps(["m-1"]))

    # Then: the task is interrupted, noted cancelled
    thread.join(5)
    assert ended == ["interrupted"]
    assert message.options["greenroom_cancelled"] is True


def test_a_report_is_a_plain_value() -> None:
    assert CancelReport("m-1", "echo", "unknown", "x") == CancelReport("m-1", "echo", "unknown", "x")
