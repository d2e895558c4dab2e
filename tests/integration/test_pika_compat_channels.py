"""shared.pika_compat's channel helpers against the installed pika and a real RabbitMQ: fail when pika
stops buffering frames on, or taking confirm callbacks from, the channel the adapter reaches."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.spec
import pytest

from observability.fallbacks import reported
from shared.pika_compat import buffering_channel, pipelined_confirms
from tests.support import delete_queues


@pytest.fixture
def queue(rabbitmq_url: str) -> Iterator[tuple[Any, str]]:
    """A blocking channel and a fresh queue on it."""
    name = f"greenroom-test-pika-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    channel.queue_declare(name)
    yield channel, name
    if connection.is_open:
        connection.close()
    delete_queues(rabbitmq_url, name)


def _count(rabbitmq_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def test_frames_on_the_buffering_channel_wait_for_the_connections_next_write(
    rabbitmq_url: str, queue: tuple[Any, str]
) -> None:
    # Given
    channel, name = queue
    buffering = buffering_channel(channel)
    assert buffering is not channel

    # When: two publishes buffered, then the connection processes its events
    for body in (b"1", b"2"):
        buffering.basic_publish(exchange="", routing_key=name, body=body)
    before = _count(rabbitmq_url, name)
    channel.connection.process_data_events(time_limit=0)

    # Then: nothing had left the process before, both arrive after
    assert before == 0
    deadline = time.monotonic() + 10
    while _count(rabbitmq_url, name) < 2:
        assert time.monotonic() < deadline, "the buffered frames never arrived"
    assert "pika frame buffering" not in reported()


def test_pipelined_confirms_call_back_per_ack_and_once_selected(queue: tuple[Any, str]) -> None:
    # Given
    channel, name = queue
    selected: list[Any] = []
    settled: list[Any] = []

    # When
    assert pipelined_confirms(channel, on_settled=settled.append, on_selected=selected.append)
    for body in (b"1", b"2", b"3"):
        buffering_channel(channel).basic_publish(exchange="", routing_key=name, body=body)
    deadline = time.monotonic() + 10
    while sum(_acked(frame) for frame in settled) < 3:
        assert time.monotonic() < deadline, f"confirms so far: {settled}"
        channel.connection.process_data_events(time_limit=0.1)

    # Then
    assert len(selected) == 1
    assert all(isinstance(frame.method, pika.spec.Basic.Ack) for frame in settled)
    assert "pika pipelined confirms" not in reported()


def _acked(frame: Any) -> int:
    """How many deliveries one ack frame settles (a ``multiple`` ack settles all up to its tag)."""
    return int(frame.method.delivery_tag) if frame.method.multiple else 1


def test_without_the_attribute_both_fall_back_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("observability.fallbacks._reported", {})

    class Channel:  # what a pika that moved ``_impl`` would hand back
        pass

    channel = Channel()
    assert buffering_channel(channel) is channel
    assert not pipelined_confirms(channel, on_settled=print, on_selected=print)
    assert set(reported()) == {"pika frame buffering", "pika pipelined confirms"}
