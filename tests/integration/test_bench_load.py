"""The benchmark's paced load against the real RabbitMQ: every message arrives, spread over time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import pairwise

import pytest

from observability.tracing import TRACE_CONTEXT_OPTION
from shared.bench.load import offer_load
from shared.bench.recorder import BENCH_QUEUE
from shared.bench.task import BENCH_ECHO
from shared.producer import Producer
from tests.support import delete_queues, take_all


@pytest.fixture
def bench_queue(rabbitmq_url: str) -> Iterator[str]:
    yield BENCH_QUEUE
    delete_queues(rabbitmq_url, BENCH_QUEUE)


def test_the_load_is_published_whole_at_its_rate_a_few_messages_at_a_time(
    producer: Producer, rabbitmq_url: str, bench_queue: str
) -> None:
    sent = offer_load(producer, BENCH_ECHO, rate=1000, seconds=1.0, kwargs={"payload": "x"})

    messages = [json.loads(body) for body in take_all(rabbitmq_url, bench_queue)]
    assert sent == len(messages) >= 990  # all confirmed and queued; the last tick may fall short of 1000
    stamps = [message["kwargs"]["sent_at"] for message in messages]
    assert stamps == sorted(stamps)
    assert 0.9 < stamps[-1] - stamps[0] < 1.1
    # Paced, not in bursts: the publishes spread over many ticks, none far from the next
    # (a gap allows for one scheduling stall of a loaded 2-core machine, not a pause in the load).
    ticks = sorted(set(stamps))
    assert len(ticks) > 300
    assert max(later - earlier for earlier, later in pairwise(ticks)) < 0.2
    # Traced as send_many is: every message carries its batch's producer context.
    assert all("traceparent" in message["options"][TRACE_CONTEXT_OPTION] for message in messages)
