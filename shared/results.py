"""Task results in Redis, with timeouts that mean what they say.

Dramatiq's RedisBackend truncates blocking timeouts to whole seconds (0.5 s
becomes "don't wait"). Redis has accepted fractional BRPOPLPUSH timeouts since
6.0, so this backend passes them through. redis-py gives every connection a
socket timeout (5 s by default), which would cut a longer blocking read short:
a long wait is made of reads that each end before the socket timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.results import ResultMissing, ResultTimeout
from dramatiq.results.backends import RedisBackend

from shared.backoff import Backoff, retry_with_backoff

#: Key prefix of stored results (keys are readable: NAMESPACE:queue:actor:message_id).
RESULTS_NAMESPACE = "greenroom-results"

#: Socket timeout of the Redis connections unless REDIS_URL sets one (redis-py's default).
SOCKET_TIMEOUT_SECONDS = 5.0
#: How much shorter than the connection's socket timeout one blocking read is.
SOCKET_TIMEOUT_MARGIN_SECONDS = 1.0
#: The longest single blocking read when the connection has no socket timeout.
MAX_BLOCKING_READ_SECONDS = 60.0

#: Waits between attempts to store a result while Redis is unreachable
#: (RESULT_STORE_RETRY_SECONDS bounds them).
STORE_BACKOFF = Backoff(first_delay=0.2, max_delay=2.0)

logger = logging.getLogger("greenroom.results")


class RedisResultBackend(RedisBackend):  # type: ignore[misc]
    """RedisBackend whose blocking reads honour sub-second timeouts, and whose
    writes ride out a Redis outage of up to ``store_retry_seconds``.

    A worker stores a result before it acknowledges the message, so while it
    retries, the task's message stays unacknowledged and the thread waits: a
    short Redis restart costs latency, not results. Past the deadline the
    failure is logged (with the message id) and the task counts as done. With Redis running::

        backend = RedisResultBackend(url="redis://127.0.0.1:6379/0", store_retry_seconds=30)
        backend.get_result(message, block=True, timeout=250)  # milliseconds, as in Dramatiq
    """

    def __init__(self, *, url: str, store_retry_seconds: float = 0.0) -> None:
        # Explicit, so that the socket timeout the blocking reads must stay under is known.
        pool = redis.ConnectionPool.from_url(url, socket_timeout=SOCKET_TIMEOUT_SECONDS)
        client = redis.Redis(connection_pool=pool)
        super().__init__(client=client, namespace=RESULTS_NAMESPACE, use_namespace_prefix_keys=True)
        self.store_retry_seconds = store_retry_seconds

    def close(self) -> None:
        """Close the client and every connection of its pool (the client does not own the
        pool it was given, so closing it alone leaves the pool's sockets open)."""
        self.client.close()
        self.client.connection_pool.disconnect()

    def store_result(self, message: dramatiq.Message[Any], result: Any, ttl: int) -> None:
        """As RedisBackend's, riding out a Redis outage of up to ``store_retry_seconds``."""
        self._riding_out_outages(
            message, lambda: super(RedisResultBackend, self).store_result(message, result, ttl)
        )

    def store_exception(self, message: dramatiq.Message[Any], exception: Exception, ttl: int) -> None:
        """As RedisBackend's, riding out a Redis outage of up to ``store_retry_seconds``."""
        self._riding_out_outages(
            message, lambda: super(RedisResultBackend, self).store_exception(message, exception, ttl)
        )

    def _riding_out_outages(self, message: dramatiq.Message[Any], store: Callable[[], object]) -> None:
        message_key = self.build_message_key(message)

        def log_retry(error: BaseException, delay: float) -> None:
            logger.warning("Redis unavailable, retrying to store result %s in %.1fs", message_key, delay)

        try:
            retry_with_backoff(
                store,
                retry_on=(redis.ConnectionError, redis.TimeoutError),
                timeout_seconds=self.store_retry_seconds,
                policy=STORE_BACKOFF,
                on_retry=log_retry,
            )
        except (redis.ConnectionError, redis.TimeoutError) as error:
            logger.error(
                "Result %s not stored: Redis unavailable for %.0fs (%s)",
                message_key, self.store_retry_seconds, error,
            )  # fmt: skip
            raise

    def get_result(
        self, message: dramatiq.Message[Any], *, block: bool = False, timeout: float | None = None
    ) -> Any:
        """As RedisBackend's, with ``timeout`` in milliseconds, fractions and long waits honoured."""
        key = self.build_message_key(message)
        if block:
            data = self._wait_for(key, (10_000 if timeout is None else timeout) / 1000)
            if data is None:
                raise ResultTimeout(message)
        else:
            data = self.client.lindex(key, 0)
            if data is None:
                raise ResultMissing(message)
        return self.unwrap_result(self.encoder.decode(data))

    def _wait_for(self, key: str, seconds: float) -> bytes | None:
        """The stored result at ``key``, waiting up to ``seconds`` (a non-positive
        wait looks once); None if none came in time."""
        deadline = time.monotonic() + seconds
        longest = self._longest_read()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self.client.lindex(key, 0)  # type: ignore[no-any-return]
            # Redis treats 0 as "block forever": every read here blocks for a bounded time.
            data = self.client.brpoplpush(key, key, max(0.001, min(remaining, longest)))
            if data is not None:
                return data  # type: ignore[no-any-return]

    def _longest_read(self) -> float:
        socket_timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout is None:
            return MAX_BLOCKING_READ_SECONDS
        socket_timeout = float(socket_timeout)
        if socket_timeout > 2 * SOCKET_TIMEOUT_MARGIN_SECONDS:
            return min(MAX_BLOCKING_READ_SECONDS, socket_timeout - SOCKET_TIMEOUT_MARGIN_SECONDS)
        return socket_timeout / 2
