"""The order GreenroomConsumer settles in, with the connection and channel replaced by recorders.

The broker-backed tests (tests/integration/test_consumer.py) show the rules hold on RabbitMQ; this one
pins races they cannot provoke on demand: a settlement already scheduled when a message is rejected
must still reject that message before acknowledging past it, and a message delivered on a connection
that has since been replaced is never settled on its successor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pika.exceptions
import pytest

from shared.runtime.consumer import GreenroomConsumer


class RecordingConnection:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[], Any]] = []

    def add_callback_threadsafe(self, callback: Callable[[], Any]) -> None:
        self.callbacks.append(callback)

    def run_callbacks(self) -> None:
        while self.callbacks:
            self.callbacks.pop(0)()


class RecordingChannel:
    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.frames.append(("ack", tag, multiple))

    def basic_nack(self, tag: int, requeue: bool = True) -> None:
        assert requeue is False
        self.frames.append(("nack", tag, False))


def _consumer(unsettled: set[int]) -> tuple[GreenroomConsumer, RecordingConnection, RecordingChannel]:
    consumer = GreenroomConsumer.__new__(GreenroomConsumer)  # no broker: only the settling state
    connection, channel = RecordingConnection(), RecordingChannel()
    consumer.connection, consumer.channel = connection, channel
    consumer.unsettled = set(unsettled)
    consumer._settling, consumer._finished, consumer._flush_scheduled = threading.Lock(), [], False
    consumer._loss_reported = False
    consumer.queue_name = "default"
    return consumer, connection, channel


class Finished:
    def __init__(self, consumer: GreenroomConsumer, tag: int) -> None:
        self.delivered_by = consumer
        self.delivery_tag = tag


def test_an_undecodable_message_is_rejected_before_a_settlement_scheduled_earlier_acks_past_it() -> None:
    consumer, connection, channel = _consumer(unsettled={1, 3})
    consumer.ack(Finished(consumer, 1))  # schedules a settlement
    consumer._finish(2, acked=False, known=False)  # tag 2 failed its checks
    consumer.ack(Finished(consumer, 3))  # finishes before the settlement runs
    connection.run_callbacks()

    assert channel.frames == [("nack", 2, False), ("ack", 3, True)]  # one ack frame covers 1 and 3


def test_one_settlement_per_wake_up_and_single_acks_above_an_unfinished_message() -> None:
    consumer, connection, channel = _consumer(unsettled={1, 2, 3, 4})
    for tag in (1, 3, 4):
        consumer.ack(Finished(consumer, tag))
    assert len(connection.callbacks) == 1
    connection.run_callbacks()

    assert channel.frames == [("ack", 1, True), ("ack", 3, False), ("ack", 4, False)]
    assert consumer.unsettled == {2}


class ClosedConnection(RecordingConnection):
    def add_callback_threadsafe(self, callback: Callable[[], Any]) -> None:
        raise pika.exceptions.ConnectionWrongStateError("Connection is closed.")


def test_finishing_on_a_lost_connection_says_what_will_be_redelivered_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer, _, _ = _consumer(unsettled={1, 2, 3})
    consumer.connection = ClosedConnection()
    with caplog.at_level(logging.WARNING, "greenroom.consumer"):
        consumer.ack(Finished(consumer, 1))  # raised into Dramatiq's "found a bug" handler before
        consumer.nack(Finished(consumer, 2))

    [line] = caplog.messages
    assert "Lost the connection to RabbitMQ while consuming 'default'" in line
    assert "3 unsettled message(s)" in line


class Delivery:
    delivery_tag = 7
    redelivered = False


class FakeBroker:
    actors: dict[str, Any] = {}  # noqa: RUF012
    max_message_bytes = 1024

    def emit_after(self, signal: str, *args: Any) -> None:
        self.emitted = (signal, args)


def test_a_check_that_breaks_dead_letters_the_message_instead_of_stalling_the_queue(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    consumer, connection, channel = _consumer(unsettled=set())
    consumer.broker = FakeBroker()
    consumer.iterator = iter([(Delivery(), None, b"{}")])

    def broken_check(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("a bug in a check")

    monkeypatch.setattr("shared.runtime.consumer.checked_message", broken_check)
    with caplog.at_level(logging.WARNING, "greenroom.consumer"):
        assert next(consumer) is None
    connection.run_callbacks()

    assert channel.frames == [("nack", 7, False)]
    assert caplog.records[-1].field == "body"  # type: ignore[attr-defined]
    assert "could not be checked (RecursionError)" in caplog.messages[-1]
