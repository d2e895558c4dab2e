"""Task results in Redis, with timeouts that mean what they say.

Dramatiq's RedisBackend truncates blocking timeouts to whole seconds (0.5 s
becomes "don't wait"). Redis has accepted fractional BRPOPLPUSH timeouts since
6.0, so this backend passes them through.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.results import ResultMissing, ResultTimeout
from dramatiq.results.backends import RedisBackend

#: Key prefix of stored results (keys are readable: NAMESPACE:queue:actor:message_id).
RESULTS_NAMESPACE = "greenroom-results"


class RedisResultBackend(RedisBackend):  # type: ignore[misc]
    """RedisBackend whose blocking reads honour sub-second timeouts.

    >>> backend = RedisResultBackend(url="redis://127.0.0.1:6379/0")
    >>> backend.get_result(message, block=True, timeout=250)  # milliseconds, as in Dramatiq
    """

    def __init__(self, *, url: str) -> None:
        super().__init__(url=url, namespace=RESULTS_NAMESPACE, use_namespace_prefix_keys=True)

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
