"""Broker-side delayed delivery: a ladder of TTL queues in RabbitMQ.

A delayed (or retrying) message waits in RabbitMQ until it is due, never
unacknowledged in a worker's memory, so no delay runs into RabbitMQ's
``consumer_timeout`` and a worker restart re-reads nothing. The ladder has
:data:`LEVELS` levels; level ``k`` is a headers exchange and a durable classic
queue, both ``greenroom.delay.<k>``, the queue holding every message for
``2**k`` ms (``x-message-ttl``) before dead-lettering it to the exchange of
level ``k - 1`` (level 0: to :data:`DELIVER_EXCHANGE`, a direct exchange that
routes it by its routing key, the destination queue's name). The message's
headers spell its delay in binary, one header per level (:func:`delay_headers`);
each exchange sends a message into its own queue when its bit is 1 and straight
down to the next level when it is 0. A message is published to the level of its
highest bit (:func:`publish_target`) and therefore waits in exactly the levels
of its set bits, ``remaining`` ms in all. Every queue of the ladder has one TTL,
so each is first in, first expired: nothing waits behind a longer delay.

Headers exchanges rather than topic exchanges (Celery's and NServiceBus's
ladder): RabbitMQ 3.10 routed about 170 messages/s through 30 chained topic
exchanges on the test machine, against thousands through headers exchanges.

A message published on the ladder carries its due time (epoch ms) in the
option :data:`DUE_AT_OPTION`; a worker that receives one early (clock skew, a
forged option) puts it back on the ladder for the rest of its delay
(:mod:`shared.runtime.consumer`).

Limitations: the ladder's queues are classic queues (on a cluster they live on
one node); a message whose destination queue was deleted while it waited is
dropped by the deliver exchange; each level adds RabbitMQ's dead-lettering time
(well under a millisecond) to a delay; each hop appends to the ``x-death`` header.

>>> target = publish_target("default", {DUE_AT_OPTION: 1_001_000}, now_ms=1_000_000)
>>> target.exchange, target.routing_key, sorted(k for k, bit in target.headers.items() if bit)
('greenroom.delay.9', 'default', ['greenroom-delay-3', 'greenroom-delay-5', 'greenroom-delay-6', \
'greenroom-delay-7', 'greenroom-delay-8', 'greenroom-delay-9'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

#: The longest delay a send may ask for (the ladder itself holds up to MAX_LADDER_MS).
MAX_DELAY_SECONDS = 604_800
#: Levels of the ladder: level k holds a message 2**k ms.
LEVELS = 30
#: The longest delay the ladder can spell, in ms (about 12.4 days).
MAX_LADDER_MS = 2**LEVELS - 1
#: Message option: epoch milliseconds at which a delayed message becomes due.
DUE_AT_OPTION = "greenroom_due_at"
#: Where level 0 dead-letters to; it routes each message to its queue (the routing key).
DELIVER_EXCHANGE = "greenroom.delay.deliver"
#: The prefix of every level's exchange and queue name.
LEVEL_PREFIX = "greenroom.delay."


def level_name(level: int) -> str:
    """The name of level ``level``'s exchange and queue.

    >>> level_name(29)
    'greenroom.delay.29'
    """
    return f"{LEVEL_PREFIX}{level}"


#: Every queue of the ladder, top level first.
LADDER_QUEUES = tuple(level_name(level) for level in reversed(range(LEVELS)))
#: The ``queue`` label of the ladder's total in ``greenroom_queue_messages{state="delayed"}``.
LADDER_DEPTH_NAME = "greenroom.delay"


def bit_header(level: int) -> str:
    """The header that holds the delay's bit of ``level`` (1: wait in that level).

    >>> bit_header(0)
    'greenroom-delay-0'
    """
    return f"greenroom-delay-{level}"


def delay_headers(remaining_ms: int) -> dict[str, int]:
    """The headers that take a message down the ladder in ``remaining_ms``: one bit per level
    from its highest set bit down.

    >>> delay_headers(5)
    {'greenroom-delay-2': 1, 'greenroom-delay-1': 0, 'greenroom-delay-0': 1}
    >>> delay_headers(MAX_LADDER_MS + 1)
    Traceback (most recent call last):
      ...
    ValueError: a delay of 1073741824 ms is beyond the ladder (1 to 1073741823 ms)
    """
    if not 0 < remaining_ms <= MAX_LADDER_MS:
        raise ValueError(f"a delay of {remaining_ms} ms is beyond the ladder (1 to {MAX_LADDER_MS} ms)")
    return {
        bit_header(level): remaining_ms >> level & 1 for level in reversed(range(remaining_ms.bit_length()))
    }


def levels_of(remaining_ms: int) -> list[int]:
    """The levels a message delayed ``remaining_ms`` waits in, top first.

    >>> levels_of(1000)
    [9, 8, 7, 6, 5, 3]
    >>> sum(2**level for level in levels_of(1000))
    1000
    """
    return [level for level in reversed(range(LEVELS)) if remaining_ms >> level & 1]


def remaining_ms(options: Mapping[str, Any], now_ms: int) -> int:
    """How many ms the message with ``options`` is still to wait (0 when due or undelayed).

    >>> remaining_ms({DUE_AT_OPTION: 1_000_250}, now_ms=1_000_000)
    250
    >>> remaining_ms({DUE_AT_OPTION: 999_000}, now_ms=1_000_000), remaining_ms({}, now_ms=1_000_000)
    (0, 0)
    """
    due_at = options.get(DUE_AT_OPTION)
    if not isinstance(due_at, (int, float)) or isinstance(due_at, bool) or not math.isfinite(due_at):
        return 0
    return int(min(max(0, math.ceil(float(due_at) - now_ms)), MAX_LADDER_MS))


class Target(NamedTuple):
    """Where to publish a message: exchange, routing key and the headers that route it."""

    exchange: str
    routing_key: str
    headers: dict[str, int] | None


def publish_target(queue: str, options: Mapping[str, Any], now_ms: int) -> Target:
    """Where to publish a message for ``queue``: the ladder while it is not due (at the level
    of its highest bit), else the queue itself through the default exchange.

    >>> publish_target("default", {}, now_ms=0)
    Target(exchange='', routing_key='default', headers=None)
    >>> publish_target("reports.daily", {DUE_AT_OPTION: 2}, now_ms=0)
    Target(exchange='greenroom.delay.1', routing_key='reports.daily', headers={'greenroom-delay-1': 1, \
'greenroom-delay-0': 0})
    """
    remaining = remaining_ms(options, now_ms)
    if remaining == 0:
        return Target("", queue, None)
    return Target(level_name(remaining.bit_length() - 1), queue, delay_headers(remaining))


def level_queue_arguments(level: int) -> dict[str, Any]:
    """The arguments of level ``level``'s queue.

    >>> level_queue_arguments(3)
    {'x-message-ttl': 8, 'x-dead-letter-exchange': 'greenroom.delay.2'}
    """
    return {"x-message-ttl": 2**level, "x-dead-letter-exchange": _below(level)}


def _below(level: int) -> str:
    return level_name(level - 1) if level else DELIVER_EXCHANGE


def declare_ladder(channel: Any) -> None:
    """Declare the whole ladder on a pika ``BlockingChannel`` (idempotent: about 120 round trips)."""
    channel.exchange_declare(DELIVER_EXCHANGE, exchange_type="direct", durable=True)
    for level in range(LEVELS):  # bottom first: each level dead-letters to one already declared
        name = level_name(level)
        channel.exchange_declare(name, exchange_type="headers", durable=True)
        channel.queue_declare(name, durable=True, arguments=level_queue_arguments(level))
        wait, skip = ({"x-match": "all", bit_header(level): bit} for bit in (1, 0))
        channel.queue_bind(name, name, arguments=wait)
        channel.exchange_bind(destination=_below(level), source=name, arguments=skip)


def bind_queue(channel: Any, queue: str) -> None:
    """Bind ``queue`` to the deliver exchange, so delayed messages for it arrive there."""
    channel.queue_bind(queue, DELIVER_EXCHANGE, routing_key=queue)
