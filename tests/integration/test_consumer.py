"""The worker's consumer against the real RabbitMQ: only finished messages are acked, failed ones
dead-lettered; messages come with their fields as plain attributes.

After each scenario the consumer is closed without settling the rest, so
RabbitMQ puts every message it still holds unacked back in the queue: what is
left there is exactly what was never acked.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import Retries

from shared.broker import GreenroomBroker
from shared.runtime.consumer import GreenroomConsumer, settlement_frames
from tests.support import delete_queues, take_all

QUEUE = "greenroom-test-acks"


@pytest.fixture
def broker(rabbitmq_url: str) -> Iterator[GreenroomBroker]:
    broker = GreenroomBroker(
        url=rabbitmq_url, dead_letter_ttl_ms=60_000, max_message_bytes=1_048_576, middleware=[]
    )
    dramatiq.actor(actor_name="echo", queue_name=QUEUE, broker=broker)(_echo)  # the consumer checks actors
    broker.declare_queue(QUEUE, ensure=True)
    yield broker
    broker.close()
    delete_queues(rabbitmq_url, QUEUE)


def _echo(number: int) -> None:
    del number


def _enqueue(broker: GreenroomBroker, count: int) -> None:
    for number in range(count):
        broker.enqueue(dramatiq.Message(QUEUE, "echo", (), {"number": number}, {}))


def _receive(consumer: GreenroomConsumer, count: int) -> list[Any]:
    messages: list[Any] = []
    for _ in range(count * 10):
        message = next(consumer)
        if message is not None:
            messages.append(message)
        if len(messages) == count:
            return messages
    raise AssertionError(f"received {len(messages)} of {count} messages")


def _left_in(rabbitmq_url: str, queue: str) -> list[Any]:
    """The ``number`` argument of every message in ``queue`` (sorted), removing them."""
    return sorted((_number(body) for body in take_all(rabbitmq_url, queue)), key=str)


def _number(body: bytes) -> Any:
    try:
        return json.loads(body)["kwargs"]["number"]
    except ValueError:
        return body  # not a Dramatiq message


def test_settlement_frames_never_ack_past_an_unfinished_message() -> None:
    # One multiple ack for everything below the oldest unfinished tag, single acks above it.
    assert settlement_frames([(1, True), (2, True), (3, True)], None) == [(3, True, True)]
    assert settlement_frames([(2, True), (5, True)], oldest_unfinished=3) == [
        (2, True, True),
        (5, True, False),
    ]
    assert settlement_frames([(4, True), (5, True)], oldest_unfinished=1) == [
        (4, True, False),
        (5, True, False),
    ]
    # Rejections go first, one each, so a multiple ack never covers one.
    assert settlement_frames([(2, True), (1, False), (3, True)], None) == [(1, False, False), (3, True, True)]


def test_acks_of_later_messages_leave_an_earlier_unfinished_one_unacked(
    broker: GreenroomBroker, rabbitmq_url: str
) -> None:
    _enqueue(broker, 6)
    consumer = broker.consume(QUEUE, prefetch=6, timeout=100)
    assert isinstance(consumer, GreenroomConsumer)
    messages = _receive(consumer, 6)
    for finished in (messages[1], messages[2], messages[4]):
        consumer.ack(finished)
    consumer.close()  # waits for the scheduled settlement, then drops the connection

    assert _left_in(rabbitmq_url, QUEUE) == [0, 3, 5]  # redelivered: never acked
    assert _left_in(rabbitmq_url, f"{QUEUE}.XQ") == []


def test_a_rejection_in_a_batch_is_dead_lettered_not_covered_by_the_multiple_ack(
    broker: GreenroomBroker, rabbitmq_url: str
) -> None:
    _enqueue(broker, 4)
    consumer = broker.consume(QUEUE, prefetch=4, timeout=100)
    first, *rest = _receive(consumer, 4)
    consumer.nack(first)
    for message in rest:
        consumer.ack(message)
    consumer.close()

    assert _left_in(rabbitmq_url, QUEUE) == []
    assert _left_in(rabbitmq_url, f"{QUEUE}.XQ") == [0]


def test_an_undecodable_message_between_acked_ones_is_dead_lettered(
    broker: GreenroomBroker, rabbitmq_url: str
) -> None:
    _enqueue(broker, 1)
    broker.channel.basic_publish(exchange="", routing_key=QUEUE, body=b"not a dramatiq message")
    _enqueue(broker, 1)
    consumer = broker.consume(QUEUE, prefetch=3, timeout=100)
    messages = _receive(consumer, 2)  # the consumer rejects the third itself
    for message in messages:
        consumer.ack(message)
    consumer.close()

    assert _left_in(rabbitmq_url, QUEUE) == []
    assert _left_in(rabbitmq_url, f"{QUEUE}.XQ") == [b"not a dramatiq message"]


def test_a_busy_worker_acks_every_success_once_and_dead_letters_every_failure(
    broker: GreenroomBroker, rabbitmq_url: str
) -> None:
    count = 400
    failing = set(random.Random(7).sample(range(count), 40))
    broker.add_middleware(Retries(max_retries=0))
    runs: list[int] = []
    lock = threading.Lock()

    broker.actors.pop("echo")  # the fixture's, replaced by one that records and fails

    @dramatiq.actor(actor_name="echo", queue_name=QUEUE, broker=broker)
    def echo(number: int) -> None:
        with lock:
            runs.append(number)
        if number in failing:
            raise ValueError(f"task {number} fails on purpose")

    _enqueue(broker, count)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        broker.join(QUEUE, timeout=60_000)
        worker.join()
    finally:
        worker.stop()

    assert sorted(runs) == list(range(count))  # each ran once: nothing redelivered
    assert _left_in(rabbitmq_url, QUEUE) == []
    assert _left_in(rabbitmq_url, f"{QUEUE}.XQ") == sorted(failing, key=str)


def test_messages_carry_their_fields_as_plain_attributes_shared_with_the_message(
    broker: GreenroomBroker,
) -> None:
    _enqueue(broker, 1)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=100)
    [proxy] = _receive(consumer, 1)
    fields = proxy.asdict()  # the delivered Message's own fields (asdict is not copied onto the proxy)

    assert {name: vars(proxy)[name] for name in fields} == fields
    assert proxy.options is fields["options"]  # Retries' count, written through the proxy, is the message's
    proxy.options["retries"] = 1
    assert proxy.asdict()["options"]["retries"] == 1
    assert proxy.message_id == fields["message_id"] and proxy.kwargs == {"number": 0}
    consumer.ack(proxy)
    consumer.close()
