"""Task results in Redis, with timeouts that mean what they say.

Dramatiq's RedisBackend truncates blocking timeouts to whole seconds (0.5 s
becomes "don't wait"). Redis has accepted fractional BRPOPLPUSH timeouts since
6.0, so this backend passes them through.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
import redis
from dramatiq.results import ResultMissing, ResultTimeout
from dramatiq.results.backends import RedisBackend

#: Key prefix of stored results (keys are readable: NAMESPACE:queue:actor:message_id).
RESULTS_NAMESPACE = "greenroom-results"

#: Backoff between attempts to store a result while Redis is unreachable.
STORE_RETRY_FIRST_DELAY_SECONDS = 0.2
STORE_RETRY_MAX_DELAY_SECONDS = 2.0

logger = logging.getLogger("greenroom.results")


class RedisResultBackend(RedisBackend):  # type: ignore[misc]
    """RedisBackend whose blocking reads honour sub-second timeouts, and whose
    writes ride out a Redis outage of up to ``store_retry_seconds``.

    A worker stores a result before it acknowledges the message, so while it
    retries, the task's message stays unacknowledged and the thread waits: a
    short Redis restart costs latency, not results. Past the deadline the
    failure is logged (with the message id) and the task counts as done.

    >>> backend = RedisResultBackend(url="redis://127.0.0.1:6379/0", store_retry_seconds=30)
    >>> backend.get_result(message, block=True, timeout=250)  # milliseconds, as in Dramatiq
    """

    def __init__(self, *, url: str, store_retry_seconds: float = 0.0) -> None:
        super().__init__(url=url, namespace=RESULTS_NAMESPACE, use_namespace_prefix_keys=True)
        self.store_retry_seconds = store_retry_seconds

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        deadline = time.monotonic() + self.store_retry_seconds
        delay = STORE_RETRY_FIRST_DELAY_SECONDS
        while True:
            try:
                super()._store(message_key, result, ttl)
                return
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "Result %s not stored: Redis unavailable for %.0fs (%s)",
                        message_key, self.store_retry_seconds, error,
                    )  # fmt: skip
                    raise
                logger.warning("Redis unavailable, retrying to store result %s in %.1fs", message_key, delay)
                time.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_DELAY_SECONDS)

    def get_result(
        self, message: dramatiq.Message[Any], *, block: bool = False, timeout: int | None = None
    ) -> Any:
        key = self.build_message_key(message)
        if not block:
            data = self.client.lindex(key, 0)
            if data is None:
                raise ResultMissing(message)
        else:
            seconds = (10_000 if timeout is None else timeout) / 1000
            # Redis treats 0 as "block forever"; a non-positive timeout means "look once".
            data = self.client.brpoplpush(key, key, seconds) if seconds > 0 else self.client.lindex(key, 0)
            if data is None:
                raise ResultTimeout(message)
        return self.unwrap_result(self.encoder.decode(data))
