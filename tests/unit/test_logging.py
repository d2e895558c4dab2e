"""JSON log lines: fields, exceptions in one object, secrets masked, stdout followed."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from shared.logging import configure_logging, mask_secrets


class Stdout:
    """What the test wrote to sys.stdout, read through capsys."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().out


@pytest.fixture
def stdout(capsys: pytest.CaptureFixture[str]) -> Iterator[Stdout]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook)
    configure_logging(level="INFO", fmt="json")
    yield Stdout(capsys)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    sys.excepthook = saved[2]
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
