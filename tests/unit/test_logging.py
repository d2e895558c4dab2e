"""JSON log lines: fields, exceptions in one object, secrets masked, stdout followed."""

from __future__ import annotations

import datetime
import io
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from pythonjsonlogger.json import JsonFormatter

from shared.log_handler import CurrentStreamHandler, formats_the_same_later
from shared.log_lines import MAX_LINE_BYTES, iso_utc
from shared.logging import build_formatter, configure_logging
from shared.secret_masking import mask_secrets


class Stdout:
    """What the test wrote to sys.stdout, read through capsys."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().out


@pytest.fixture
def stdout(capsys: pytest.CaptureFixture[str]) -> Iterator[Stdout]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook, sys.unraisablehook)
    configure_logging(level="INFO", fmt="json")
    yield Stdout(capsys)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    sys.excepthook, threading.excepthook, sys.unraisablehook = saved[2:]
    logging.captureWarnings(False)


def _lines(buffer: Stdout) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_line_has_timestamp_level_logger_message(stdout: Stdout) -> None:
    logging.getLogger("greenroom.test").info("hello %s", "world", extra={"queue": "default"})
    [line] = _lines(stdout)
    assert line["message"] == "hello world"
    assert line["level"] == "INFO"
    assert line["logger"] == "greenroom.test"
    assert line["queue"] == "default"
    assert str(line["timestamp"]).endswith("+00:00")
    assert set(line) == {"message", "level", "logger", "queue", "timestamp"}


def test_records_skip_what_no_line_shows(stdout: Stdout) -> None:
    """Caller, thread and process lookups cost about 5 us a line and appear in no line."""
    record = logging.getLogger("greenroom.test").makeRecord(
        "greenroom.test", logging.INFO, "f.py", 1, "m", (), None
    )
    assert (record.thread, record.threadName, record.process, record.processName) == (None, None, None, None)


def test_exception_is_a_field_of_the_same_object(stdout: Stdout) -> None:
    try:
        raise ValueError("nope")
    except ValueError:
        logging.getLogger("greenroom.test").exception("failed")
    [line] = _lines(stdout)
    assert "ValueError: nope" in str(line["exc_info"])


def test_passwords_in_urls_are_masked(stdout: Stdout) -> None:
    logging.getLogger("pika").warning("cannot reach amqp://app:hunter2@rabbit:5672/%2F")
    written = stdout.getvalue()
    assert "hunter2" not in written
    assert "amqp://app:***@rabbit:5672/%2F" in written


def test_handler_follows_sys_stdout_when_it_is_replaced(
    stdout: Stdout, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stdout", pipe)  # what Dramatiq does in worker children
    logging.getLogger("greenroom.test").info("to the pipe")
    assert "to the pipe" in pipe.getvalue()
    assert stdout.getvalue() == ""


def test_debug_is_filtered_at_info(stdout: Stdout) -> None:
    logging.getLogger("greenroom.test").debug("hidden")
    assert stdout.getvalue() == ""


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("no url here", "no url here"),
        ("amqps://u:p@h/v and redis://x:y@z", "amqps://u:***@h/v and redis://x:***@z"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


class CountingPipe(io.StringIO):
    """Stands in for Dramatiq's pipe to the master process: counts writes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def batching(stdout: Stdout, monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchingSetup]:
    [handler] = [h for h in logging.getLogger().handlers if isinstance(h, CurrentStreamHandler)]
    handler.start_batching(flush_interval=60)  # only size, level and stop write in these tests
    yield BatchingSetup(handler, monkeypatch)
    handler.stop_batching()


class BatchingSetup:
    def __init__(self, handler: CurrentStreamHandler, monkeypatch: pytest.MonkeyPatch) -> None:
        self.handler = handler
        self.monkeypatch = monkeypatch

    def pipe(self) -> CountingPipe:
        """Replace sys.stdout, as Dramatiq does in its children (inside the test: capsys resets it)."""
        pipe = CountingPipe()
        self.monkeypatch.setattr(sys, "stdout", pipe)
        return pipe


def test_batched_lines_wait_then_go_out_in_one_write(batching: BatchingSetup) -> None:
    pipe, handler = batching.pipe(), batching.handler
    for n in range(50):
        logging.getLogger("greenroom.task").info("task %d", n)
    assert pipe.getvalue() == ""
    handler.stop_batching()
    assert pipe.writes == 1
    assert [json.loads(line)["message"] for line in pipe.getvalue().splitlines()] == [
        f"task {n}" for n in range(50)
    ]


def test_a_warning_is_written_at_once_after_the_lines_before_it(batching: BatchingSetup) -> None:
    pipe = batching.pipe()
    logging.getLogger("greenroom.task").info("first")
    logging.getLogger("greenroom.task").warning("second")
    assert [json.loads(line)["message"] for line in pipe.getvalue().splitlines()] == ["first", "second"]


def test_a_full_batch_is_written_without_waiting(batching: BatchingSetup) -> None:
    pipe = batching.pipe()
    line = "x" * 1000
    for _ in range(CurrentStreamHandler.BATCH_BYTES // 1000 + 1):
        logging.getLogger("greenroom.task").info(line)
    assert pipe.writes == 1
    assert len(pipe.getvalue()) >= CurrentStreamHandler.BATCH_BYTES


def test_the_flusher_writes_waiting_lines_within_the_interval(
    stdout: Stdout, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = CountingPipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    [handler] = [h for h in logging.getLogger().handlers if isinstance(h, CurrentStreamHandler)]
    handler.start_batching(flush_interval=0.05)
    try:
        logging.getLogger("greenroom.task").info("soon")
        deadline = time.monotonic() + 2
        while "soon" not in pipe.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "soon" in pipe.getvalue()
    finally:
        handler.stop_batching()


def test_a_waiting_line_shows_mutable_arguments_and_fields_as_they_were_when_logged(
    batching: BatchingSetup,
) -> None:
    pipe, handler = batching.pipe(), batching.handler
    rows, fields = [1, 2], {"state": "before"}
    logging.getLogger("greenroom.task").info("rows %s", rows)
    logging.getLogger("greenroom.task").info("fields", extra={"fields": fields, "count": 1})
    logging.getLogger("greenroom.task").info("scalars %s %d", "only", 3, extra={"event": "succeeded"})
    rows.append(3)
    fields["state"] = "after"
    handler.stop_batching()

    lines = [json.loads(line) for line in pipe.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["rows [1, 2]", "fields", "scalars only 3"]
    assert lines[1]["fields"] == {"state": "before"}
    assert lines[2]["event"] == "succeeded"


def test_only_records_of_immutable_scalars_wait_unformatted() -> None:
    def record(**attributes: object) -> logging.LogRecord:
        return logging.makeLogRecord({"msg": "task %s", "args": ("succeeded",), **attributes})

    assert formats_the_same_later(record(event="succeeded", retries=0, duration_seconds=0.1, trace_id=None))
    assert not formats_the_same_later(record(args=(["a"],)))
    assert not formats_the_same_later(record(payload={"x": 1}))
    assert not formats_the_same_later(record(msg=object()))
    assert not formats_the_same_later(record(stack_info="Stack (most recent call last): ..."))
    try:
        raise ValueError("boom")
    except ValueError:
        assert not formats_the_same_later(record(exc_info=sys.exc_info()))


def test_threads_logging_at_once_lose_and_mangle_nothing(batching: BatchingSetup) -> None:
    pipe, handler = batching.pipe(), batching.handler

    def log(thread: int) -> None:
        for n in range(300):
            logging.getLogger("greenroom.task").info("line", extra={"writer": thread, "n": n})

    threads = [threading.Thread(target=log, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.stop_batching()

    lines = [json.loads(line) for line in pipe.getvalue().splitlines()]
    assert len(lines) == 8 * 300
    for t in range(8):
        assert [line["n"] for line in lines if line["writer"] == t] == list(range(300))


def _record(msg: object, args: tuple[object, ...] = (), **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("greenroom.test")
    return logger.makeRecord("greenroom.test", logging.INFO, "f.py", 1, msg, args, None, extra=extra)


@pytest.mark.parametrize(
    "record",
    [
        _record("task %s", ("succeeded",), event="succeeded", duration_seconds=0.000123, retries=0),
        _record("plain"),
        _record(
            "größe ✓ %d", (3,), nested={"a": [1, None, True]}, when=datetime.datetime(2026, 11, 23, 1, 2)
        ),
        _record("to amqp://app:pw@rabbit:5672/%2F", url="redis://:hunter2@cache:6379/0"),
        _record("%s %s", ("a", "b"), _private="hidden", queue="default"),
        _record("scalars", nan=float("nan"), inf=float("-inf"), big=2**70, yes=True, none=None, s='q"\\n'),
    ],
    ids=["task line", "plain", "unicode and odd values", "secrets", "private field", "odd scalars"],
)
def test_fast_lines_are_the_librarys_lines(record: logging.LogRecord) -> None:
    formatter = build_formatter("json")
    library = mask_secrets(JsonFormatter.format(formatter, record))
    assert formatter.format(record) == library
    assert "hunter2" not in library and "pw@" not in library


def test_lines_with_exceptions_stacks_or_dicts_are_the_librarys_own() -> None:
    formatter = build_formatter("json")
    try:
        raise ValueError("nope")
    except ValueError:
        failed = logging.getLogger("t").makeRecord("t", logging.ERROR, "f", 1, "failed", (), sys.exc_info())
    stacked = _record("here")
    stacked.stack_info = "Stack (most recent call last): ..."
    for record in (failed, stacked, _record({"event": "dict message"})):
        line = formatter.format(record)
        assert line == mask_secrets(JsonFormatter.format(formatter, record))
        assert {"exc_info", "stack_info", "event"} & set(json.loads(line))


def test_timestamps_are_datetimes_isoformat() -> None:
    rng = random.Random(3)
    now = 1_795_000_000.0
    created = [now, now + 0.5, now + 0.9999995, now + 0.0000005, now + 0.0000015, now - 1e-7, 0.0, 12.3456785]
    created += [now + rng.random() * 86_400 for _ in range(20_000)]
    created += [float(second) + rng.randrange(1_000_000) / 1e6 for second in range(int(now), int(now) + 50)]
    for value in created:
        assert iso_utc(value) == datetime.datetime.fromtimestamp(value, tz=datetime.UTC).isoformat(), value


def _raw_lines(buffer: Stdout) -> list[str]:
    lines = buffer.getvalue().splitlines()
    for line in lines:
        assert len(line.encode()) <= MAX_LINE_BYTES
        assert isinstance(json.loads(line), dict)
    return lines


def test_a_huge_message_and_traceback_are_cut_to_one_bounded_line(stdout: Stdout) -> None:
    try:
        raise ValueError("é" * 100_000)
    except ValueError:
        logging.getLogger("greenroom.test").exception(
            "body %s", "x" * 200_000, extra={"rows": list(range(50_000))}
        )
    [raw] = _raw_lines(stdout)
    line = json.loads(raw)
    assert str(line["message"]).startswith("body xxx")
    assert "[cut: 200005 characters in all]" in str(line["message"])
    assert "characters in all] ..." in str(line["exc_info"])
    assert str(line["exc_info"]).rstrip().endswith("é")  # the exception line, at the end, is kept
    assert "[cut:" in str(line["rows"])


def test_many_large_fields_still_fit(stdout: Stdout) -> None:
    extra = {f"field_{n}": "\x00" * 5_000 for n in range(100)}  # each escapes to 6 bytes a character
    logging.getLogger("greenroom.test").warning("m", extra=extra)
    [raw] = _raw_lines(stdout)
    assert json.loads(raw)["level"] == "WARNING"


def _bad_record() -> logging.LogRecord:
    """A record whose message cannot be formatted (wrong argument count).

    Handed to greenroom's handler directly: pytest's own capturing handler would raise.
    """
    return logging.getLogger("greenroom.test").makeRecord(
        "greenroom.test", logging.INFO, "f.py", 1, "two %s %s", ("one",), None
    )


def _handler() -> CurrentStreamHandler:
    [handler] = [h for h in logging.getLogger().handlers if isinstance(h, CurrentStreamHandler)]
    return handler


def test_an_error_of_logging_itself_is_one_json_line(stdout: Stdout) -> None:
    _handler().handle(_bad_record())
    [raw] = _raw_lines(stdout)
    line = json.loads(raw)
    assert line["logger"] == "greenroom.logging"
    assert "TypeError: not enough arguments for format string" in str(line["message"])
    assert line["record_message"] == "two %s %s"


def test_an_error_of_logging_while_batching_is_one_json_line(stdout: Stdout) -> None:
    handler = _handler()
    handler.start_batching()
    try:
        handler.handle(_bad_record())
        logging.getLogger("greenroom.test").info("fine")
    finally:
        handler.stop_batching()
    lines = [json.loads(raw) for raw in _raw_lines(stdout)]
    assert [line["logger"] for line in lines] == ["greenroom.logging", "greenroom.test"]


def test_uncaught_exceptions_in_threads_and_ignored_ones_are_json_lines(stdout: Stdout) -> None:
    def fail() -> None:
        raise RuntimeError("in a thread")

    thread = threading.Thread(target=fail, name="doomed")
    thread.start()
    thread.join()

    class Finalizer:
        def __del__(self) -> None:
            raise RuntimeError("in __del__")

    Finalizer()
    lines = [json.loads(raw) for raw in _raw_lines(stdout)]
    assert lines[0]["message"] == "Uncaught exception in thread doomed"
    assert "RuntimeError: in __del__" in str(lines[1]["exc_info"])
