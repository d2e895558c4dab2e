"""A steady offered load for the benchmark's queue-wait measurement.

The load is the messages due each millisecond at ``rate`` per second, each
stamped with the time it is published, on one channel in confirm mode. The
confirms are read as they arrive and waited for only at the end, so a slow
confirm never holds the next messages back: the load follows the clock, not
the broker's disk (a loop of ``send_many`` calls would wait for each batch's
confirms and come in bursts).

Tracing is as for ``send_many``: one ``send <queue>`` producer span per
millisecond's batch, whose context every message of the batch carries.

Example (not run here: it needs a RabbitMQ), 3 s at 2700 tasks/s::

    offer_load(producer, BENCH_ECHO, rate=2700, seconds=3, kwargs={"payload": "x"})  # -> 8100
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import dramatiq

from observability.tracing import Tracing
from shared.producer import Producer
from shared.publishing import Confirmations, write_messages
from shared.tasks import TaskContract

#: Seconds between two publishes of the messages due.
TICK_SECONDS = 0.001


def offer_load(
    producer: Producer, contract: TaskContract, *, rate: float, seconds: float, kwargs: Mapping[str, Any]
) -> int:
    """Publish ``contract``'s task at ``rate`` messages per second for ``seconds``, each with ``kwargs``
    plus ``sent_at`` (its publish time, ``time.time()``); returns how many were published,
    once RabbitMQ has confirmed them all. Raises if RabbitMQ refused any."""
    broker = producer.broker
    tracing = next((m for m in broker.middleware if isinstance(m, Tracing)), None)
    broker.declare_queue(contract.queue, ensure=True)
    channel = broker.connection.channel()
    try:
        confirmations = Confirmations(channel)
        sent = 0
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < seconds:
            due = int(elapsed * rate) - sent
            if due > 0:
                stamped = contract.validate({**kwargs, "sent_at": time.time()})
                messages: list[dramatiq.Message[Any]] = [
                    dramatiq.Message(
                        queue_name=contract.queue,
                        actor_name=contract.name,
                        args=(),
                        kwargs=stamped,
                        options={},
                    )
                    for _ in range(due)
                ]
                with tracing.publishing_batch(contract.queue, due) if tracing else nullcontext():
                    write_messages(broker, channel, messages)
                sent += due
            channel.connection.process_data_events(time_limit=0)  # write them, read confirms so far
            time.sleep(TICK_SECONDS)
        confirmations.wait_for(sent)
        if confirmations.refused:
            raise RuntimeError(f"bench: RabbitMQ refused {len(confirmations.refused)} of {sent} messages")
        return sent
    finally:
        if channel.is_open:
            channel.close()
