"""GreenroomBroker calls only the hooks middleware define, in Dramatiq's order, with its error handling."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import Middleware, SkipMessage

from shared.broker import GreenroomBroker

calls: list[str] = []


class Recorder(Middleware):
    def __init__(self, name: str) -> None:
        self.name = name

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        calls.append(f"before {self.name}")

    def after_process_message(self, broker: dramatiq.Broker, message: Any, **kwargs: Any) -> None:
        calls.append(f"after {self.name}")


class Failing(Middleware):
    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        raise RuntimeError("hook broke")


class Skipping(Middleware):
    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        raise SkipMessage()


@pytest.fixture(autouse=True)
def clear_calls() -> None:
    calls.clear()


def broker(*middleware: Middleware) -> GreenroomBroker:
    return GreenroomBroker(
        url="amqp://127.0.0.1:1",
        middleware=list(middleware),
        dead_letter_ttl_ms=1000,
        max_message_bytes=1_048_576,
    )


def test_before_in_list_order_after_in_reverse() -> None:
    subject = broker(Recorder("a"), Middleware(), Recorder("b"))
    subject.emit_before("process_message", None)
    subject.emit_after("process_message", None, result=None)
    assert calls == ["before a", "before b", "after b", "after a"]


def test_no_op_hooks_are_not_called_and_signals_without_hooks_do_nothing() -> None:
    subject = broker(Recorder("a"), Middleware())
    assert [type(hook.__self__).__name__ for hook in subject._hooks_for("before_process_message")] == [
        "Recorder"
    ]
    subject.emit_before("ack", None)
    assert calls == []


def test_middleware_added_later_takes_part() -> None:
    subject = broker(Recorder("a"))
    subject.emit_before("process_message", None)
    subject.add_middleware(Recorder("b"))
    subject.middleware.insert(0, Recorder("first"))
    subject.emit_before("process_message", None)
    assert calls == ["before a", "before first", "before a", "before b"]


def test_a_failing_hook_is_logged_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    subject = broker(Failing(), Recorder("a"))
    with caplog.at_level(logging.CRITICAL):
        subject.emit_before("process_message", None)
    assert calls == ["before a"]
    assert "Unexpected failure in before_process_message of" in caplog.text
    assert "hook broke" in caplog.text


def test_skip_message_reaches_the_worker() -> None:
    subject = broker(Skipping(), Recorder("a"))
    with pytest.raises(SkipMessage):
        subject.emit_before("process_message", None)
    assert calls == []
