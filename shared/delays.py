"""Broker-side delayed delivery: a ladder of TTL queues in RabbitMQ.

A delayed (or retrying) message waits in RabbitMQ until it is due, never
unacknowledged in a worker's memory, so no delay runs into RabbitMQ's
``consumer_timeout`` and a worker restart re-reads nothing. The ladder has
:data:`LEVELS` levels; level ``k`` is a topic exchange and a durable classic
queue, both ``greenroom.delay.<k>``, the queue holding every message for
``2**k`` ms (``x-message-ttl``) before dead-lettering it to the exchange of
level ``k - 1`` (level 0: to :data:`DELIVER_EXCHANGE`). The routing key spells
the delay in binary, bit 29 first, then names the destination queue
(:func:`routing_key`); each exchange sends a message into its own queue when
its bit is 1 and straight down to the next level when it is 0, and the
deliver exchange routes it to its queue. A message therefore waits in exactly
the levels of its set bits, ``remaining`` ms in all. Every queue of the ladder
has one TTL, so each is first in, first expired: nothing waits behind a
longer delay.

A message published on the ladder carries its due time (epoch ms) in the
option :data:`DUE_AT_OPTION`; a worker that receives one early (clock skew, a
forged option) puts it back on the ladder for the rest of its delay
(:mod:`shared.runtime.consumer`).

Limitations: the ladder's queues are classic queues (on a cluster they live on
one node); a message whose destination queue was deleted while it waited is
dropped by the deliver exchange; a delay is at least one hop late per set bit
(about a millisecond each).

>>> routing_key(1000, "default")
'0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.1.1.1.1.0.1.0.0.0.default'
>>> sum(2**k for k in levels_of(1000)) == 1000
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

#: The longest delay a send may ask for (the ladder itself holds up to MAX_LADDER_MS).
MAX_DELAY_SECONDS = 604_800
#: Levels of the ladder: level k holds a message 2**k ms.
LEVELS = 30
#: The longest delay the ladder can spell, in ms (about 12.4 days).
MAX_LADDER_MS = 2**LEVELS - 1
#: Message option: epoch milliseconds at which a delayed message becomes due.
DUE_AT_OPTION = "greenroom_due_at"
#: Where the last level dead-letters to; it routes each message to its queue.
DELIVER_EXCHANGE = "greenroom.delay.deliver"
#: The prefix of every level's exchange and queue name.
LEVEL_PREFIX = "greenroom.delay."


def level_name(level: int) -> str:
    """The name of level ``level``'s exchange and queue.

    >>> level_name(29)
    'greenroom.delay.29'
    """
    return f"{LEVEL_PREFIX}{level}"


#: The exchange a delayed message is published to.
ENTRY_EXCHANGE = level_name(LEVELS - 1)
#: Every queue of the ladder, top level first.
LADDER_QUEUES = tuple(level_name(level) for level in reversed(range(LEVELS)))


def routing_key(remaining_ms: int, queue: str) -> str:
    """The routing key that takes a message to ``queue`` after ``remaining_ms`` on the ladder.

    >>> routing_key(5, "reports.daily")
    '0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.reports.daily'
    >>> routing_key(0, "q") == "0." * 30 + "q"
    True
    >>> routing_key(MAX_LADDER_MS + 1, "q")
    Traceback (most recent call last):
      ...
    ValueError: a delay of 1073741824 ms is beyond the ladder (0 to 1073741823 ms)
    """
    if not 0 <= remaining_ms <= MAX_LADDER_MS:
        raise ValueError(f"a delay of {remaining_ms} ms is beyond the ladder (0 to {MAX_LADDER_MS} ms)")
    return ".".join(format(remaining_ms, f"0{LEVELS}b")) + "." + queue


def levels_of(remaining_ms: int) -> list[int]:
    """The levels a message delayed ``remaining_ms`` waits in, top first.

    >>> levels_of(1000)
    [9, 8, 7, 6, 5, 3]
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


def publish_target(queue: str, options: Mapping[str, Any], now_ms: int) -> tuple[str, str]:
    """(exchange, routing key) to publish a message for ``queue`` on: the ladder while it is
    not due, else the queue itself through the default exchange.

    >>> publish_target("default", {}, now_ms=0)
    ('', 'default')
    >>> publish_target("default", {DUE_AT_OPTION: 2}, now_ms=0)[0]
    'greenroom.delay.29'
    """
    remaining = remaining_ms(options, now_ms)
    if remaining == 0:
        return "", queue
    return ENTRY_EXCHANGE, routing_key(remaining, queue)


def _words(level: int) -> str:
    """The binding-key prefix that skips the words of the levels above ``level``."""
    return "*." * (LEVELS - 1 - level)


def ladder_topology() -> Iterator[tuple[str, str, str, str]]:
    """Every binding of the ladder as (kind, source exchange, destination, binding key);
    kind is ``queue`` or ``exchange``.

    >>> [(kind, destination, key[-5:]) for kind, source, destination, key in ladder_topology()
    ...  if source == "greenroom.delay.0"]
    [('queue', 'greenroom.delay.0', '*.1.#'), ('exchange', 'greenroom.delay.deliver', '*.0.#')]
    >>> next(ladder_topology())
    ('queue', 'greenroom.delay.29', 'greenroom.delay.29', '1.#')
    """
    for level in reversed(range(LEVELS)):
        name = level_name(level)
        below = level_name(level - 1) if level else DELIVER_EXCHANGE
        yield "queue", name, name, _words(level) + "1.#"
        yield "exchange", name, below, _words(level) + "0.#"


def level_queue_arguments(level: int) -> dict[str, Any]:
    """The arguments of level ``level``'s queue.

    >>> level_queue_arguments(3)
    {'x-message-ttl': 8, 'x-dead-letter-exchange': 'greenroom.delay.2'}
    """
    below = level_name(level - 1) if level else DELIVER_EXCHANGE
    return {"x-message-ttl": 2**level, "x-dead-letter-exchange": below}


def declare_ladder(channel: Any) -> None:
    """Declare the whole ladder on a pika ``BlockingChannel`` (idempotent: about 120 round trips)."""
    channel.exchange_declare(DELIVER_EXCHANGE, exchange_type="topic", durable=True)
    for level in range(LEVELS):  # bottom first: each level dead-letters to one already declared
        name = level_name(level)
        channel.exchange_declare(name, exchange_type="topic", durable=True)
        channel.queue_declare(name, durable=True, arguments=level_queue_arguments(level))
    for kind, source, destination, key in ladder_topology():
        if kind == "queue":
            channel.queue_bind(destination, source, routing_key=key)
        else:
            channel.exchange_bind(destination=destination, source=source, routing_key=key)


def delivery_binding_key(queue: str) -> str:
    """The key binding ``queue`` to the deliver exchange: any 30 delay words, then its name.

    >>> delivery_binding_key("default") == "*." * 30 + "default"
    True
    """
    return "*." * LEVELS + queue


def bind_queue(channel: Any, queue: str) -> None:
    """Bind ``queue`` to the deliver exchange, so delayed messages for it arrive there."""
    channel.queue_bind(queue, DELIVER_EXCHANGE, routing_key=delivery_binding_key(queue))
