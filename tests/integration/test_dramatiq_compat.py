"""shared.dramatiq_compat against the installed Dramatiq and a real RabbitMQ: fails when Dramatiq
stops declaring dead-letter queues through the method the adapter overrides."""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from observability.fallbacks import reported
from shared import dramatiq_compat
from shared.dramatiq_compat import DECLARE_XQ_METHOD, DeadLetterArgumentsBroker
from tests.support import delete_queues

TTL_MS = 123_000


class Broker(DeadLetterArgumentsBroker):
    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        return {"x-message-ttl": TTL_MS}


@pytest.fixture
def queue(rabbitmq_url: str) -> Iterator[str]:
    name = f"greenroom-test-compat-{uuid.uuid4().hex[:8]}"
    yield name
    delete_queues(rabbitmq_url, name)


def _declare_xq(rabbitmq_url: str, queue: str, ttl_ms: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().queue_declare(f"{queue}.XQ", durable=True, arguments={"x-message-ttl": ttl_ms})
    finally:
        if connection.is_open:
            connection.close()


def test_dramatiq_still_has_the_method_the_adapter_overrides() -> None:
    method = getattr(RabbitmqBroker, DECLARE_XQ_METHOD)
    assert list(inspect.signature(method).parameters) == ["self", "queue_name"]
    assert DECLARE_XQ_METHOD in inspect.getsource(RabbitmqBroker._ensure_queue)


def test_declaring_a_queue_gives_its_xq_the_brokers_arguments(rabbitmq_url: str, queue: str) -> None:
    # Given
    broker = Broker(url=rabbitmq_url, middleware=[])
    try:
        # When: Dramatiq declares the queue, its .DQ and its .XQ
        broker.declare_queue(queue, ensure=True)
        counts = broker.get_queue_message_counts(queue)  # declares the .XQ again, the same way
    finally:
        broker.close()

    # Then: RabbitMQ holds the .XQ with our TTL (a declaration with it is accepted, another refused)
    assert counts == (0, 0, 0)
    _declare_xq(rabbitmq_url, queue, TTL_MS)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        _declare_xq(rabbitmq_url, queue, TTL_MS + 1)
    assert refused.value.reply_code == 406
    assert "dead-letter queue arguments" not in reported()


def test_a_dramatiq_without_the_method_is_reported_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given: a Dramatiq whose RabbitmqBroker no longer has the method
    monkeypatch.setattr(dramatiq_compat, "DECLARE_XQ_METHOD", "_declare_xq_queue_renamed")
    monkeypatch.setattr("observability.fallbacks._reported", {})

    # When
    with caplog.at_level(logging.ERROR, "greenroom.degraded"):
        Broker(url="amqp://guest:guest@127.0.0.1:5672/%2F", middleware=[]).close()

    # Then: one ERROR line and the degraded gauge
    [line] = caplog.messages
    assert line.startswith("dead-letter queue arguments: fast path unavailable")
    assert "has no RabbitmqBroker._declare_xq_queue_renamed" in line
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("greenroom_degraded", {"component": "dead-letter queue arguments"}) == 1
