"""The worker module of tests/e2e/test_async_actors.py: the production worker and three async test tasks.

Started as ``greenroom worker tests.e2e.async_worker --queues default`` with the
repository on PYTHONPATH; importing :mod:`workers` first gives the real broker,
middleware and production actors (``echo`` and ``echo_async`` among them).
"""

from __future__ import annotations

import asyncio
import logging

from dramatiq.middleware import CurrentMessage
from opentelemetry import trace

from tests.e2e.async_contracts import (
    ASYNC_NESTED,
    ASYNC_RAISE,
    ASYNC_SLEEP,
    NestedArguments,
    RaiseArguments,
    SleepArguments,
)
from workers import broker
from workers.actor import implements

__all__ = ["broker"]

logger = logging.getLogger("tests.async_worker")
tracer = trace.get_tracer("tests.async_worker")


class AsyncFailure(Exception):
    """Raised on purpose by ``tests.async_raise``."""


@implements(ASYNC_SLEEP)
async def async_sleep(arguments: SleepArguments) -> float:
    try:
        await asyncio.sleep(arguments.seconds)
    except asyncio.CancelledError:
        logger.warning("async sleep cancelled")
        raise
    logger.info("async sleep finished")
    return arguments.seconds


@implements(ASYNC_RAISE)
async def async_raise(arguments: RaiseArguments) -> None:
    await asyncio.sleep(0)
    raise AsyncFailure(arguments.reason)


@implements(ASYNC_NESTED)
async def async_nested(arguments: NestedArguments) -> dict[str, str]:
    await asyncio.sleep(0)
    with tracer.start_as_current_span(f"nested {arguments.label}"):
        await asyncio.sleep(0.01)
        logger.info("inside the nested span")
    message = CurrentMessage.get_current_message()
    return {"label": arguments.label, "message_id": message.message_id if message else ""}
