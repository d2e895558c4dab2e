"""The worker module of the cancellation tests: the production worker plus the ``cancels`` tasks.

Started as ``greenroom worker tests.e2e.cancel_worker --queues cancels``.
"""

from __future__ import annotations

import os
import time

import redis

from shared.cancellation import CancelledWhileRunning
from tests.e2e.cancel_tasks import CANCELLABLE, LATE, NOTES, QUICK, STUBBORN, RunArguments
from workers import broker
from workers.actor import implements

__all__ = ["broker"]

_redis = redis.Redis.from_url(os.environ["REDIS_URL"])


def _run(arguments: RunArguments) -> int:
    """Note the start (process id, epoch seconds), run in short sleeps (an interrupt lands
    between two), note how it ended."""
    key = f"{NOTES}:{arguments.run}:{arguments.item}"
    _redis.rpush(f"{key}:started", f"{os.getpid()} {time.time():.6f}")
    deadline = time.monotonic() + arguments.seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except CancelledWhileRunning:
        _redis.rpush(f"{key}:ended", f"interrupted {time.time():.6f}")
        raise
    _redis.rpush(f"{key}:ended", f"finished {time.time():.6f}")
    return arguments.item


implements(CANCELLABLE)(_run)
implements(STUBBORN)(_run)
implements(QUICK)(_run)
implements(LATE)(_run)
