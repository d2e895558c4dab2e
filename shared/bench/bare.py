"""The bare-Dramatiq side of ``greenroom bench``: Dramatiq's RabbitmqBroker with its
default middleware and AsyncIO (as greenroom's worker has it), stdlib logging at WARNING,
and the same echo tasks, sync and async (their names are those of :mod:`shared.bench.task`,
not imported: this side loads no greenroom task code).

Run by the benchmark as ``python -m dramatiq shared.bench.bare ...``.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import AsyncIO

from shared.bench.recorder import BENCH_QUEUE, record_completion
from shared.settings import get_settings

logging.getLogger().setLevel(logging.WARNING)
broker = RabbitmqBroker(url=get_settings().rabbitmq_url)
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.echo", queue_name=BENCH_QUEUE, max_retries=0)
def echo(payload: Any, sent_at: float = 0.0) -> None:
    # Returns nothing: without a Results middleware Dramatiq would log a warning per task.
    record_completion(sent_at)


@dramatiq.actor(actor_name="bench.echo_async", queue_name=BENCH_QUEUE, max_retries=0)
async def echo_async(payload: Any, sent_at: float = 0.0) -> None:
    record_completion(sent_at)
