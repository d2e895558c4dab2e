"""The arguments of greenroom's dead-letter queues, and what to say when RabbitMQ
already holds one with another TTL.

Every ``<queue>.XQ`` keeps dead letters DEAD_LETTER_TTL_SECONDS (its
``x-message-ttl``). RabbitMQ never changes an existing queue's arguments: once
that setting changes, every declaration of the queue fails with
PRECONDITION_FAILED until the queue is emptied and deleted.
:mod:`shared.service_refusals` turns that into one line (worker start, ``send``,
``greenroom dlq replay``).

For example, with an open pika connection, ``dead_letter_mismatch(connection, ["default"],
ttl_seconds=86400)`` returns "DEAD_LETTER_TTL_SECONDS=86400 (86400000 ms) does not match the
dead-letter queue 'default.XQ' ..." when that queue was declared with another TTL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pika
import pika.exceptions
from dramatiq.common import q_name, xq_name

from shared.settings import MIN_DEAD_LETTER_TTL_SECONDS

#: RabbitMQ's reply code for a declaration that contradicts the existing queue.
PRECONDITION_FAILED = 406

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<argument>[^']+)' for queue '(?P<queue>[^']+)'.*current is '(?P<current>[^']*)'"
)


def dead_letter_arguments(ttl_ms: int) -> dict[str, Any]:
    """The arguments every ``<queue>.XQ`` is declared with.

    >>> dead_letter_arguments(604_800_000)
    {'x-message-ttl': 604800000}
    """
    return {"x-message-ttl": ttl_ms}


def dead_letter_mismatch(connection: Any, queues: Iterable[str], ttl_seconds: int) -> str | None:
    """Declare each of ``queues``' ``.XQ`` as a worker is about to, keeping dead letters
    ``ttl_seconds``: the line for the first one RabbitMQ keeps with another TTL, else None.
    Any other refusal (a permission the user lacks) raises pika's error."""
    arguments = dead_letter_arguments(ttl_seconds * 1000)
    for name in dict.fromkeys(xq_name(queue) for queue in queues):
        try:
            connection.channel().queue_declare(name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == PRECONDITION_FAILED:
                return explain_refusal(error.reply_text, ttl_seconds)
            raise
    return None


def explain_refusal(reply_text: str, dead_letter_ttl_seconds: int) -> str:
    """One line for RabbitMQ's refusal ``reply_text``: which queue, and what to do.

    >>> explain_refusal("PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue "
    ...     "'default.XQ' in vhost '/': received '86400000' but current is '604800000'", 86400)
    "DEAD_LETTER_TTL_SECONDS=86400 (86400000 ms) does not match the dead-letter queue 'default.XQ', ..."
    """
    found = _INEQUIVALENT.search(reply_text)
    if found is None or found["argument"] != "x-message-ttl" or not found["queue"].endswith(".XQ"):
        return f"RabbitMQ holds a queue with other arguments than greenroom declares: {reply_text}"
    queue, current = found["queue"], found["current"]
    mismatch = (
        f"DEAD_LETTER_TTL_SECONDS={dead_letter_ttl_seconds} ({dead_letter_ttl_seconds * 1000} ms) does not "
        f"match the dead-letter queue '{queue}', which RabbitMQ keeps at x-message-ttl {current} ms and "
        f"cannot change"
    )
    purge = f"greenroom dlq purge --queue {q_name(queue)}"
    if current.isdigit() and int(current) % 1000 == 0 and int(current) // 1000 >= MIN_DEAD_LETTER_TTL_SECONDS:
        before = f"DEAD_LETTER_TTL_SECONDS={int(current) // 1000}"
        return (
            f"{mismatch}: set {before} again; to change it, empty that queue under the old value "
            f"({before} greenroom dlq replay --queue {q_name(queue)} --all, or {purge}) and delete it"
        )
    return f"{mismatch}: empty that queue ({purge}) and delete it"
