"""The arguments of greenroom's queues, and what to say when RabbitMQ already holds
one with other arguments: a dead-letter queue with another TTL, a queue with other
priorities.

Every ``<queue>.XQ`` keeps dead letters DEAD_LETTER_TTL_SECONDS (its
``x-message-ttl``). RabbitMQ never changes an existing queue's arguments: once
that setting changes, every declaration of the queue fails with
PRECONDITION_FAILED until the queue is emptied and deleted.
:mod:`shared.service_refusals` turns that into one line (worker start, ``send``,
``greenroom dlq replay``).

Each queue and its ``<queue>.DQ`` have the ``x-max-priority`` QUEUE_MAX_PRIORITIES
gives them, or none; RabbitMQ cannot change that either, so a queue is moved to
other priorities by draining and deleting it (the line says how).

For example, with an open pika connection, ``dead_letter_mismatch(connection, ["default"],
ttl_seconds=86400)`` returns "DEAD_LETTER_TTL_SECONDS=86400 (86400000 ms) does not match the
dead-letter queue 'default.XQ' ..." when that queue was declared with another TTL, and
``priority_mismatch(connection, ["default"], {"default": 9})`` "QUEUE_MAX_PRIORITIES gives
queue 'default' x-max-priority 9 ..." when it exists without priorities.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import pika
import pika.exceptions
from dramatiq.common import dq_name, q_name, xq_name

from shared.settings import MIN_DEAD_LETTER_TTL_SECONDS

#: RabbitMQ's reply code for a declaration that contradicts the existing queue.
PRECONDITION_FAILED = 406
#: RabbitMQ's reply code for a passive declaration of a queue that does not exist.
NOT_FOUND = 404

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<argument>[^']+)' for queue '(?P<queue>[^']+)'.*current is '(?P<current>[^']*)'"
)


_PRIORITY_MISMATCH = re.compile(
    r"inequivalent arg 'x-max-priority' for queue '(?P<queue>[^']+)' in vhost '(?P<vhost>[^']*)'.*"
    r"current is (?:none|(?:the value )?'(?P<current>\d+)')"
)


def queue_arguments(queue_name: str, max_priority: int | None) -> dict[str, Any]:
    """The arguments a queue and its ``.DQ`` are declared with (Dramatiq's dead-lettering
    to ``<queue>.XQ``, and the queue's QUEUE_MAX_PRIORITIES, if any).

    >>> queue_arguments("default", 9)
    {'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': 'default.XQ', 'x-max-priority': 9}
    """
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": xq_name(queue_name),
    }
    if max_priority is not None:
        arguments["x-max-priority"] = max_priority
    return arguments


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


def priority_mismatch(
    connection: Any, queues: Iterable[str], max_priorities: Mapping[str, int]
) -> str | None:
    """The line for the first of ``queues`` (or its ``.DQ``) that RabbitMQ keeps with other
    arguments than a worker declares (``max_priorities``: QUEUE_MAX_PRIORITIES), else None.
    Queues that do not exist yet pass and are not created. Any other refusal (a
    permission the user lacks) raises pika's error."""
    for queue in dict.fromkeys(queues):
        arguments = queue_arguments(queue, max_priorities.get(queue))
        for name in (queue, dq_name(queue)):
            try:
                connection.channel().queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code == NOT_FOUND:
                    continue
                raise
            try:
                connection.channel().queue_declare(name, durable=True, arguments=arguments)
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code == PRECONDITION_FAILED:
                    return explain_refusal(error.reply_text, 0, max_priorities)
                raise
    return None


def explain_refusal(
    reply_text: str, dead_letter_ttl_seconds: int, max_priorities: Mapping[str, int] | None = None
) -> str:
    """One line for RabbitMQ's refusal ``reply_text``: which queue, and what to do
    (``max_priorities``: QUEUE_MAX_PRIORITIES).

    >>> explain_refusal("PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue "
    ...     "'default.XQ' in vhost '/': received '86400000' but current is '604800000'", 86400)
    "DEAD_LETTER_TTL_SECONDS=86400 (86400000 ms) does not match the dead-letter queue 'default.XQ', ..."
    >>> explain_refusal("PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'default' "
    ...     "in vhost 'prod': received none but current is the value '9' of type 'signedint'", 0, {})
    "QUEUE_MAX_PRIORITIES gives queue 'default' no priorities, but RabbitMQ keeps it with x-max-priority 9..."
    """
    priorities = _PRIORITY_MISMATCH.search(reply_text)
    if priorities is not None:
        return _explain_priorities(priorities, max_priorities or {})
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


def _explain_priorities(found: re.Match[str], max_priorities: Mapping[str, int]) -> str:
    queue, vhost, current = q_name(found["queue"]), found["vhost"], found["current"]
    wanted = max_priorities.get(queue)
    gives = f"x-max-priority {wanted} ({queue}={wanted})" if wanted is not None else "no priorities"
    keeps = f"with x-max-priority {current}" if current is not None else "without priorities"
    back = f"set {queue}={current} in it again" if current is not None else f"remove {queue}={wanted} from it"
    delete = f"rabbitmqctl delete_queue -p {vhost} {{}}"
    return (
        f"QUEUE_MAX_PRIORITIES gives queue {queue!r} {gives}, but RabbitMQ keeps it {keeps} and cannot "
        f"change that: {back}; or, to change it, stop the queue's producers, let its workers empty "
        f"{queue!r} and {dq_name(queue)!r} under the old setting, delete both "
        f"({delete.format(queue)}; {delete.format(dq_name(queue))}) and start again with the new one"
    )
