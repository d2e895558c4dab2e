"""The module the bench's greenroom-side worker processes load.

``greenroom bench`` starts them as ``greenroom worker shared.bench.worker --queues
greenroom-bench``. Importing this module loads the production worker module
(:mod:`workers`: the broker with every middleware, and the production actors, so
start-up and memory are a real worker's), then declares the bench's own actors,
a sync one and an async one doing the same work.
A default ``greenroom worker`` never imports it.
"""

from __future__ import annotations

import dramatiq

from shared.bench.recorder import record_completion
from shared.bench.task import BENCH_ECHO, BENCH_ECHO_ASYNC, BenchEchoArguments
from workers import broker
from workers.actor import implements

__all__ = ["bench_echo", "bench_echo_async", "broker"]

# The actors below go on the global broker: make sure it is the worker's, also when
# :mod:`workers` was imported before another module (the bare side's) replaced it.
dramatiq.set_broker(broker)


@implements(BENCH_ECHO)
def bench_echo(arguments: BenchEchoArguments) -> None:
    """Record this task's queue wait: the same work as the bare-Dramatiq side (no result stored)."""
    record_completion(arguments.sent_at)


@implements(BENCH_ECHO_ASYNC)
async def bench_echo_async(arguments: BenchEchoArguments) -> None:
    """The same work as :func:`bench_echo`, as an async actor (on the worker's event loop)."""
    record_completion(arguments.sent_at)
