"""The delay ladder against the real RabbitMQ: declared once, delayed messages wait on it, arrive when due."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pika
import pika.exceptions
import pytest

from observability.queue_depth import QueueDepthReader
from shared import delays
from shared.connections import checking_parameters
from shared.producer import Producer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("empty_ladder")]

QUEUE = "default"


def _message(payload: Any, **options: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=QUEUE, actor_name="echo", args=(), kwargs={"payload": payload}, options=options
    )


@pytest.fixture
def channel(rabbitmq_url: str) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    yield connection.channel()
    connection.close()


def _on_ladder(channel: Any) -> int:
    return sum(
        channel.queue_declare(name, passive=True).method.message_count for name in delays.LADDER_QUEUES
    )


def _take_when_arrived(channel: Any, count: int, timeout: float) -> list[tuple[float, Any, bytes]]:
    """(arrival epoch ms, properties, body) of ``count`` messages taken from QUEUE as they arrive."""
    taken: list[tuple[float, Any, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(taken) < count and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(QUEUE, auto_ack=True)
        if method is None:
            time.sleep(0.005)
            continue
        taken.append((time.time() * 1000, properties, body))
    return taken


def test_the_ladder_has_a_level_per_bit_each_with_its_ttl_and_the_level_below(
    producer: Producer, channel: Any
) -> None:
    # When a queue is declared
    producer.broker.declare_queue(QUEUE, ensure=True)

    # Then every level exists with exactly these arguments (RabbitMQ refuses a declare with other ones)
    for level in range(delays.LEVELS):
        channel.queue_declare(
            delays.level_name(level), durable=True, arguments=delays.level_queue_arguments(level)
        )
    assert delays.level_queue_arguments(0)["x-dead-letter-exchange"] == delays.DELIVER_EXCHANGE
    assert delays.level_queue_arguments(29) == {
        "x-message-ttl": 2**29,
        "x-dead-letter-exchange": "greenroom.delay.28",
    }


def test_a_delayed_message_waits_on_the_ladder_and_reaches_its_queue_when_due(
    producer: Producer, channel: Any
) -> None:
    # Given a message enqueued with a delay, as Retries does, with a priority
    sent = producer.broker.enqueue(_message("later", broker_priority=3), delay=700)
    due_at = sent.options[delays.DUE_AT_OPTION]

    # Then it waits on the ladder, not in its queue, and carries its due time and no eta
    assert "eta" not in sent.options and sent.queue_name == QUEUE
    assert channel.queue_declare(QUEUE, passive=True).method.message_count == 0
    assert _on_ladder(channel) == 1

    # And it reaches its queue once due, not before, with its priority and body
    [(arrived, properties, body)] = _take_when_arrived(channel, 1, timeout=10)
    assert arrived >= due_at
    assert properties.priority == 3
    assert dramatiq.Message.decode(body).message_id == sent.message_id
    assert _on_ladder(channel) == 0


def test_a_batch_sends_due_messages_at_once_and_delayed_ones_on_the_ladder(
    producer: Producer, channel: Any
) -> None:
    # Given a batch (send_many, dlq replay) of three undelayed messages and three due in 0.5 s
    due_at = int(time.time() * 1000) + 500
    now = [_message(n) for n in range(3)]
    later = [_message(n, **{delays.DUE_AT_OPTION: due_at}) for n in range(3, 6)]

    # When it is published with confirms
    producer.publish_confirmed(now + later, "a test batch")

    # Then the undelayed ones are in the queue and the others on the ladder until due
    assert channel.queue_declare(QUEUE, passive=True).method.message_count == 3
    assert _on_ladder(channel) == 3
    taken = _take_when_arrived(channel, 6, timeout=10)
    ids = [dramatiq.Message.decode(body).message_id for _, _, body in taken]
    assert ids[:3] == [m.message_id for m in now]
    assert sorted(ids[3:]) == sorted(m.message_id for m in later)
    assert all(arrived >= due_at for arrived, _, _ in taken[3:])


def test_queue_depths_report_the_ladder_as_one_total(
    producer: Producer, channel: Any, rabbitmq_url: str
) -> None:
    # Given two messages waiting on the ladder
    for n in range(2):
        producer.broker.enqueue(_message(n), delay=400)
    reader = QueueDepthReader(
        lambda: checking_parameters(rabbitmq_url, 2.0),
        lambda: [QUEUE],
        totals={delays.LADDER_DEPTH_NAME: delays.LADDER_QUEUES},
    )

    # When a scrape reads the depths
    depths = reader.read()
    reader.close()

    # Then the ladder's total is its own series, the queue's own .DQ holds none
    assert depths == {
        QUEUE: {"ready": 0, "delayed": 0, "dead_letter": 0},
        "greenroom.delay": {"delayed": 2},
    }
    assert len(_take_when_arrived(channel, 2, timeout=10)) == 2


def test_a_ladder_deleted_under_a_running_broker_is_declared_again(producer: Producer, channel: Any) -> None:
    # Given a broker that declared the ladder, then someone deleted a level and the deliver exchange
    producer.broker.declare_queue(QUEUE, ensure=True)
    channel.exchange_delete(delays.level_name(9))
    channel.exchange_delete(delays.DELIVER_EXCHANGE)

    # When it enqueues a message delayed through that level
    sent = producer.broker.enqueue(_message("again"), delay=600)

    # Then it declared the ladder again and the message arrives
    [(arrived, _, body)] = _take_when_arrived(channel, 1, timeout=10)
    assert arrived >= sent.options[delays.DUE_AT_OPTION]
    assert dramatiq.Message.decode(body).message_id == sent.message_id
