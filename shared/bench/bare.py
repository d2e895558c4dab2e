"""The bare-Dramatiq side of ``greenroom bench``: Dramatiq's RabbitmqBroker with its
default middleware, stdlib logging at WARNING, and the same echo task.

Run by the benchmark as ``python -m dramatiq shared.bench.bare ...``.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from shared.bench.recorder import BENCH_QUEUE, record_completion
from shared.settings import get_settings

logging.getLogger().setLevel(logging.WARNING)
broker = RabbitmqBroker(url=get_settings().rabbitmq_url)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.echo", queue_name=BENCH_QUEUE, max_retries=0)
def echo(payload: Any, sent_at: float = 0.0) -> None:
    # Returns nothing: without a Results middleware Dramatiq would log a warning per task.
    record_completion(sent_at)
