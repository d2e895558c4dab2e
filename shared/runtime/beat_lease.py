"""The beat's leadership lease: one Redis key that one ``greenroom beat`` process holds at a time.

The leader sets ``greenroom-beat:leader`` to its holder id with a time to live
(BEAT_LEASE_SECONDS) and renews it well before it expires; the others try to
take it and succeed once it has expired or been released. A process counts
itself the leader only until ``ttl`` after the start of its last successful
renewal, measured on its own monotonic clock: a process that was paused (or lost
Redis) stops leading on its own, before the key can have passed to another.

The lease alone does not prevent a double send (a process may be paused between
checking its lease and publishing): every tick is also claimed in Redis, by a script
that checks the lease there (:mod:`shared.runtime.beat_ledger`). For example::

    lease = Lease(redis.Redis(), holder="host-a:42:ab12", ttl_seconds=5.0)
    lease.refresh(), lease.held()   # (True, True): nobody else held it
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: The Redis key of the lease.
LEASE_KEY = "greenroom-beat:leader"
#: The share of the lease a leader counts on: it stops leading this much before the key expires.
SAFETY_SHARE = 0.1

_ACQUIRE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RENEW = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """The lease as ``holder`` sees it; ``refresh`` takes or renews it."""

    def __init__(
        self,
        client: Any,
        *,
        holder: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.holder = holder
        self.ttl_ms = round(ttl_seconds * 1000)
        self._clock = clock
        self._valid_until = -1.0
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def held(self) -> bool:
        """Whether this process leads, by its own clock (no Redis call)."""
        return self._clock() < self._valid_until

    def refresh(self) -> bool:
        """Renew the lease if this process holds it, else try to take it; whether it leads.

        Raises redis-py's errors (Redis unreachable): the lease then lapses by itself.
        """
        started = self._clock()
        if self.held():
            renewed = bool(self._renew(keys=[LEASE_KEY], args=[self.holder, self.ttl_ms]))
        else:  # take it (a key of another type is damage: replaced), or find it still ours
            renewed = bool(self._acquire(keys=[LEASE_KEY], args=[self.holder, self.ttl_ms]))
        self._valid_until = started + self.ttl_ms / 1000 * (1 - SAFETY_SHARE) if renewed else -1.0
        return renewed

    def release(self) -> None:
        """Give the lease up at once (if this process holds it), so another takes over now."""
        self._valid_until = -1.0
        self._release(keys=[LEASE_KEY], args=[self.holder])
