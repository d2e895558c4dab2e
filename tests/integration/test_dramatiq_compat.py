"""shared.dramatiq_compat against the installed Dramatiq and a real RabbitMQ: fails when Dramatiq
stops declaring dead-letter queues, or building queue arguments, through the methods the adapter
overrides."""

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
from prometheus_client import REGISTRY  # imported first: fallbacks set the gauge once it is loaded

from observability.fallbacks import reported
from shared import dramatiq_compat
from shared.dramatiq_compat import BUILD_ARGUMENTS_METHOD, DECLARE_XQ_METHOD, DeadLetterArgumentsBroker
from shared.queue_arguments import queue_arguments
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
    assert REGISTRY.get_sample_value("greenroom_degraded", {"component": "dead-letter queue arguments"}) == 1


def _declare(rabbitmq_url: str, name: str, arguments: dict[str, Any]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().queue_declare(name, durable=True, arguments=arguments)
    finally:
        if connection.is_open:
            connection.close()


def test_dramatiq_still_builds_queue_arguments_through_the_method_the_adapter_overrides() -> None:
    # Given: Dramatiq's own arguments, which queue_arguments() repeats for the start-up checks
    method = getattr(RabbitmqBroker, BUILD_ARGUMENTS_METHOD)
    assert list(inspect.signature(method).parameters) == ["self", "queue_name"]
    assert BUILD_ARGUMENTS_METHOD in inspect.getsource(RabbitmqBroker._declare_queue)
    assert BUILD_ARGUMENTS_METHOD in inspect.getsource(RabbitmqBroker._declare_dq_queue)
    plain = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:5672/%2F", middleware=[])
    prioritised = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:5672/%2F", middleware=[], max_priority=7)
    try:
        # Then
        assert plain._build_queue_arguments("q") == queue_arguments("q", None)
        assert prioritised._build_queue_arguments("q") == queue_arguments("q", 7)
    finally:
        plain.close()
        prioritised.close()


def test_declaring_a_queue_gives_it_and_its_dq_their_own_max_priority(rabbitmq_url: str, queue: str) -> None:
    # Given: priorities for this queue only
    broker = Broker(url=rabbitmq_url, middleware=[], queue_max_priorities={queue: 4})
    try:
        # When
        broker.declare_queue(queue, ensure=True)
        broker.declare_queue(f"{queue}-plain", ensure=True)
    finally:
        broker.close()

    # Then: RabbitMQ holds the queue and its .DQ with x-max-priority 4, the other queue without
    try:
        for name in (queue, f"{queue}.DQ"):
            _declare(rabbitmq_url, name, queue_arguments(queue, 4))
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                _declare(rabbitmq_url, name, queue_arguments(queue, 5))
            assert refused.value.reply_code == 406
        _declare(rabbitmq_url, f"{queue}-plain", queue_arguments(f"{queue}-plain", None))
    finally:
        delete_queues(rabbitmq_url, f"{queue}-plain")
    assert "queue priorities" not in reported()


def test_a_dramatiq_without_the_arguments_method_is_reported_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given: a Dramatiq whose RabbitmqBroker no longer builds queue arguments in that method
    monkeypatch.setattr(dramatiq_compat, "BUILD_ARGUMENTS_METHOD", "_build_queue_arguments_renamed")
    monkeypatch.setattr("observability.fallbacks._reported", {})

    # When: priorities are asked for (without them, nothing is lost and nothing is said)
    with caplog.at_level(logging.ERROR, "greenroom.degraded"):
        Broker(url="amqp://guest:guest@127.0.0.1:5672/%2F", middleware=[]).close()
        Broker(
            url="amqp://guest:guest@127.0.0.1:5672/%2F", middleware=[], queue_max_priorities={"q": 3}
        ).close()

    # Then: one ERROR line and the degraded gauge
    [line] = caplog.messages
    assert line.startswith("queue priorities: fast path unavailable")
    assert "has no RabbitmqBroker._build_queue_arguments_renamed" in line
    assert REGISTRY.get_sample_value("greenroom_degraded", {"component": "queue priorities"}) == 1
