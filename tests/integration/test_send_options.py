"""What a send's options put on the wire (real RabbitMQ, no worker): the AMQP priority and
``broker_priority``, ``greenroom_due_at`` (the message waits on the delay ladder, not on its queue),
and the producer span's attributes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pika
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability.messaging_spans import DELAY_ATTRIBUTE, PRIORITY_ATTRIBUTE
from shared.producer import Producer
from shared.settings import load_settings
from shared.tasks import TaskArguments, TaskContract


class NoArguments(TaskArguments):
    pass


#: A contract with a default priority, on a queue of its own.
URGENT = TaskContract(
    name="tests.send_options.urgent",
    queue="tests-urgent",
    arguments=NoArguments,
    description="A task whose contract gives it a priority.",
    priority=4,
)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def producer(vhost_url: str, redis_url: str, spans: InMemorySpanExporter) -> Iterator[Producer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = load_settings(
        _env_file=None,
        RABBITMQ_URL=vhost_url,
        REDIS_URL=redis_url,
        QUEUE_MAX_PRIORITIES="default=9,tests-urgent=5",
    )
    producer = Producer(settings, tracer_provider=provider)
    yield producer
    producer.close()
    provider.shutdown()


def _take(url: str, queue: str) -> list[tuple[int | None, dict[str, Any]]]:
    """Each message on ``queue``: its AMQP priority and its options (removed from the queue)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    taken: list[tuple[int | None, dict[str, Any]]] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((properties.priority, json.loads(body)["options"]))
    finally:
        connection.close()


def test_a_priority_travels_as_the_amqp_priority(
    producer: Producer, vhost_url: str, spans: InMemorySpanExporter
) -> None:
    # When
    producer.send_with_options("echo", {"payload": 1}, priority=7)
    producer.send_many("echo", [{"payload": 2}, {"payload": 3}], priority=2)
    producer.send("echo", payload=4)

    # Then: RabbitMQ delivers by priority; the default has none
    taken = _take(vhost_url, "default")
    assert [(priority, options.get("broker_priority")) for priority, options in taken] == [
        (7, 7),
        (2, 2),
        (2, 2),
        (None, None),
    ]
    assert [dict(span.attributes or {}).get(PRIORITY_ATTRIBUTE) for span in spans.get_finished_spans()] == [
        7,
        2,
        None,
    ]


def test_a_delayed_message_waits_on_the_ladder_with_its_due_time(
    producer: Producer, vhost_url: str, spans: InMemorySpanExporter
) -> None:
    # When
    before = int(time.time() * 1000)
    producer.send_with_options("echo", {"payload": 1}, delay=timedelta(seconds=1), priority=3)
    producer.send_many("echo", [{"payload": 2}], delay=1)
    after = int(time.time() * 1000)

    # Then: nothing on the queue before it is due; each carries greenroom_due_at and no eta
    assert _take(vhost_url, "default") == []
    for span in spans.get_finished_spans():  # what was left of the delay when it was published
        delay: Any = dict(span.attributes or {})[DELAY_ATTRIBUTE]
        assert 0 < delay <= 1000
    time.sleep(1.5)  # the ladder delivers once due: nothing here to wait on but the clock
    taken = _take(vhost_url, "default")
    assert len(taken) == 2, taken
    for _priority, options in taken:
        assert before + 1000 <= options["greenroom_due_at"] <= after + 1000
        assert "eta" not in options
    assert taken[0][0] == 3


def test_a_contracts_priority_applies_to_every_send_unless_the_send_gives_one(
    producer: Producer, vhost_url: str
) -> None:
    # When
    producer.send(URGENT.name)
    producer.send_with_options(URGENT.name, {}, priority=1)
    producer.send_many(URGENT.name, [{}])

    # Then
    assert [priority for priority, _options in _take(vhost_url, URGENT.queue)] == [4, 4, 1]
