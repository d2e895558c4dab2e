"""What the beat records in Redis so that each tick is sent once, whoever leads.

Per schedule, a hash ``greenroom-beat:schedule:<name>`` holds its *cursor*, the
scheduled time (epoch ms) of the latest tick that is settled (sent, or counted
as missed), and ``sent_at``, when a tick was last sent. Every tick after the
cursor is still to send. A tick is sent in three steps, each one script that
first checks, in Redis, that the caller holds the lease
(:mod:`shared.runtime.beat_lease`):

1. :meth:`TickLedger.claim` sets ``greenroom-beat:tick:<name>:<ms>`` to the
   holder's id, unless the tick is settled or claimed already;
2. the caller publishes the tick's message (with confirms);
3. :meth:`TickLedger.settle_sent` moves the cursor to the tick and deletes the claim.

Two processes that both believe they lead therefore never both publish a tick:
the claim goes to one. A claim left by a former leader (it died, or was paused,
between steps 1 and 3) is taken over by the next one
(:meth:`TickLedger.take_over`), which sends the tick: nothing is lost. The tick
is sent twice only if the former leader had already handed the message to
RabbitMQ when it stopped, and then :meth:`settle_sent` tells the one that comes
second (its caller logs a warning).

A tick older than the catch-up window is not sent: :meth:`skip_to` moves the
cursor past it and the caller counts it missed. Hashes last
:data:`STATE_TTL_SECONDS` (400 days) after their last change; a claim lasts the catch-up
window and a minute more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from shared.runtime.beat_lease import LEASE_KEY

#: How long a schedule's cursor is kept after its last change (400 days: a yearly schedule's too).
STATE_TTL_SECONDS = 400 * 86400
#: How long a claim outlives the catch-up window, in seconds.
CLAIM_MARGIN_SECONDS = 60
#: The longest record of the leader's schedules (``schedule_set`` cuts longer ones).
MAX_SCHEDULES_CHARS = 10_000
#: How far ahead of this process's clock a cursor may lie (another host's clock) before it is
#: taken for damage and reset.
MAX_CURSOR_AHEAD_MS = 3_600_000

_LEADS = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'not-leader'} end\n"

#: What the scripts accept from Redis: a cursor or time is whole milliseconds since the epoch (not
#: too far ahead); a key that should hold a string and holds another type is dropped.
_VALID = """
local function valid(value, ahead)
  return value and string.match(value, '^%d+$') and #value <= 15 and tonumber(value) <= tonumber(ahead)
end
local function strings_only(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', key) end
end
local function cursor_of(key, ahead)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return -1 end
  local cursor = kind == 'hash' and redis.call('HGET', key, 'cursor') or false
  if not valid(cursor, ahead) then return redis.error_reply('DAMAGED greenroom beat state ' .. key) end
  return tonumber(cursor)
end
"""

_START = (
    _LEADS
    + _VALID
    + """
local kind = redis.call('TYPE', KEYS[2])['ok']
local cursor, sent_at = false, false
if kind == 'hash' then
  cursor, sent_at = redis.call('HGET', KEYS[2], 'cursor'), redis.call('HGET', KEYS[2], 'sent_at')
end
if valid(cursor, ARGV[4]) and valid(sent_at, ARGV[4]) then return {'cursor', cursor, sent_at} end
local state = 'new'
if kind ~= 'none' then state = 'reset' end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'cursor', ARGV[2], 'sent_at', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {state, ARGV[2], ARGV[2]}
"""
)
#: The start of a script about the tick ARGV[2] of the schedule KEYS[2]: done if it is settled.
_UNSETTLED = """
local cursor = cursor_of(KEYS[2], ARGV[4])
if type(cursor) == 'table' then return cursor end
if cursor >= tonumber(ARGV[2]) then return {'settled'} end
"""

_CLAIM = (
    _LEADS
    + _VALID
    + _UNSETTLED
    + """
strings_only(KEYS[3])
local holder = redis.call('GET', KEYS[3])
if not holder then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
  return {'claimed'}
end
if holder == ARGV[1] then return {'claimed'} end
return {'held', holder}
"""
)
_TAKE_OVER = (
    _LEADS
    + """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return {'changed'} end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
return {'claimed'}
"""
)
_SETTLE_SENT = (
    _VALID
    + """
strings_only(KEYS[2])
local holder = redis.call('GET', KEYS[2])
local kind = redis.call('TYPE', KEYS[1])['ok']
local cursor = -1
if kind == 'hash' and valid(redis.call('HGET', KEYS[1], 'cursor'), ARGV[5]) then
  cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor'))
elseif kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
if holder == ARGV[1] then redis.call('DEL', KEYS[2]) end
if cursor < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'cursor', ARGV[2]) end
redis.call('HSET', KEYS[1], 'sent_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if holder == ARGV[1] then return 'sent' end
if holder then return 'taken-over' end
if cursor >= tonumber(ARGV[2]) then return 'sent-before' end
return 'sent'
"""
)
_SKIP_TO = (
    _LEADS
    + _VALID
    + _UNSETTLED
    + """
local before = redis.call('HGET', KEYS[2], 'cursor') or '-1'
redis.call('HSET', KEYS[2], 'cursor', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {'skipped', before}
"""
)
_HEARTBEAT_COMPLETED = (
    _VALID
    + """
strings_only(KEYS[1])
return redis.call('GET', KEYS[1])
"""
)
_RECORD_HEARTBEAT = (
    _VALID
    + """
strings_only(KEYS[1])
local known = redis.call('GET', KEYS[1])
if known and string.match(known, '^%d+$') and tonumber(known) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
)


#: The schedules the leader sends (:func:`shared.runtime.beat.schedule_set`), for followers to compare.
SCHEDULES_KEY = "greenroom-beat:schedules"
#: The scheduled time of the latest heartbeat a worker completed (epoch ms), for the next leader.
HEARTBEAT_COMPLETED_KEY = "greenroom-beat:heartbeat-completed"


def _ahead(now_ms: int) -> int:
    """The latest cursor the scripts accept around ``now_ms``."""
    return now_ms + MAX_CURSOR_AHEAD_MS


def schedule_key(schedule: str) -> str:
    return f"greenroom-beat:schedule:{schedule}"


def claim_key(schedule: str, at_ms: int) -> str:
    return f"greenroom-beat:tick:{schedule}:{at_ms}"


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule's cursor and when it last sent a tick (both epoch ms)."""

    cursor_ms: int
    sent_at_ms: int
    reset: bool = False


class NotLeader(Exception):
    """The lease in Redis is not the caller's (any more)."""


class TickLedger:
    """The scripts above, for the beat process whose lease holder id is ``holder``."""

    def __init__(self, client: Any, *, holder: str, catchup_seconds: float) -> None:
        self.holder = holder
        self.claim_ttl_ms = round((catchup_seconds + CLAIM_MARGIN_SECONDS) * 1000)
        self.state_ttl_ms = STATE_TTL_SECONDS * 1000
        self._start = client.register_script(_START)
        self._claim = client.register_script(_CLAIM)
        self._take_over = client.register_script(_TAKE_OVER)
        self._settle_sent = client.register_script(_SETTLE_SENT)
        self._skip_to = client.register_script(_SKIP_TO)
        self._record_heartbeat = client.register_script(_RECORD_HEARTBEAT)
        self._heartbeat_completed = client.register_script(_HEARTBEAT_COMPLETED)
        self._client = client

    def start(self, schedule: str, now_ms: int) -> ScheduleState:
        """The schedule's state; for a schedule seen for the first time, its cursor is ``now_ms``
        (no tick before the first start is sent). A state that is not two numbers, or a cursor
        more than MAX_CURSOR_AHEAD_MS ahead, is reset so (``reset`` is then True)."""
        reply = self._leading(
            self._start(
                keys=[LEASE_KEY, schedule_key(schedule)],
                args=[self.holder, now_ms, self.state_ttl_ms, now_ms + MAX_CURSOR_AHEAD_MS],
            )
        )
        return ScheduleState(
            cursor_ms=int(reply[1]), sent_at_ms=int(reply[2]), reset=_text(reply[0]) == "reset"
        )

    def claim(self, schedule: str, at_ms: int) -> tuple[str, str | None]:
        """``("claimed", None)``: publish it; ``("settled", None)``: sent or skipped already;
        ``("held", holder)``: another process claimed it and has not settled it."""
        reply = self._leading(
            self._claim(
                keys=[LEASE_KEY, schedule_key(schedule), claim_key(schedule, at_ms)],
                args=[self.holder, at_ms, self.claim_ttl_ms, _ahead(at_ms)],
            )
        )
        return _text(reply[0]), _text(reply[1]) if len(reply) > 1 else None

    def take_over(self, schedule: str, at_ms: int, former: str) -> bool:
        """Claim a tick ``former`` claimed and left; False if its claim changed meanwhile."""
        reply = self._leading(
            self._take_over(
                keys=[LEASE_KEY, schedule_key(schedule), claim_key(schedule, at_ms)],
                args=[self.holder, former, self.claim_ttl_ms],
            )
        )
        return _text(reply[0]) == "claimed"

    def settle_sent(self, schedule: str, at_ms: int, sent_at_ms: int) -> str:
        """Record the tick as sent (whoever leads now: RabbitMQ has it). ``"sent"``; or
        ``"taken-over"``/``"sent-before"``: another process sent it too."""
        reply = self._settle_sent(
            keys=[schedule_key(schedule), claim_key(schedule, at_ms)],
            args=[self.holder, at_ms, sent_at_ms, self.state_ttl_ms, _ahead(at_ms)],
        )
        return _text(reply)

    def skip_to(self, schedule: str, at_ms: int) -> int | None:
        """Move the cursor to ``at_ms`` (the ticks up to it are missed); the cursor it had, or
        None if it was there already (another process counted them)."""
        reply = self._leading(
            self._skip_to(
                keys=[LEASE_KEY, schedule_key(schedule)],
                args=[self.holder, at_ms, self.state_ttl_ms, _ahead(at_ms)],
            )
        )
        return int(reply[1]) if _text(reply[0]) == "skipped" else None

    def publish_schedules(self, schedules: str) -> None:
        """Record what the leader sends (``schedules``: a line from ``schedule_set``)."""
        self._client.delete(SCHEDULES_KEY)  # a key of another type too
        self._client.set(SCHEDULES_KEY, schedules, px=self.state_ttl_ms)

    def leaders_schedules(self) -> str | None:
        """What the leader said it sends, if it did."""
        try:
            value = self._client.get(SCHEDULES_KEY)
        except redis.ResponseError:  # a key of another type: the leader rewrites it
            return None
        return None if value is None else _text(value)

    def heartbeat_completed(self) -> int | None:
        """The scheduled time (epoch ms) of the latest heartbeat a worker completed, if known."""
        value = self._heartbeat_completed(keys=[HEARTBEAT_COMPLETED_KEY])  # a damaged key: dropped
        text = _text(value) if value is not None else ""
        return int(text) if text.isdigit() and len(text) <= 15 else None

    def record_heartbeat_completed(self, at_ms: int) -> None:
        """Remember that the heartbeat of ``at_ms`` completed (unless a later one is known)."""
        self._record_heartbeat(keys=[HEARTBEAT_COMPLETED_KEY], args=[at_ms, self.state_ttl_ms])

    @staticmethod
    def _leading(reply: Any) -> Any:
        if _text(reply[0]) == "not-leader":
            raise NotLeader
        return reply


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
