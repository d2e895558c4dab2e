"""The arguments of greenroom's dead-letter queues, and one clear line when RabbitMQ
already holds such a queue with others.

Every ``<queue>.XQ`` keeps dead letters DEAD_LETTER_TTL_SECONDS (its
``x-message-ttl``). RabbitMQ never changes an existing queue's arguments: once
that setting changes, every declaration of the queue fails with
PRECONDITION_FAILED. Left alone, a worker would start, call itself ready and
restart its consumers every 3 seconds for good, and ``send`` would retry for
SEND_RETRY_TIMEOUT_SECONDS. Instead ``greenroom worker`` checks before it
starts (exit 2), and ``send`` and ``greenroom dlq replay`` fail at once, each
with one line that names the setting and says what to do.

>>> check_dead_letter_queues(settings, ["default"])
"DEAD_LETTER_TTL_SECONDS=86400 (86400000 ms) does not match the dead-letter queue 'default.XQ' ..."
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

import pika
import pika.exceptions
from dramatiq.common import q_name, xq_name

from shared.settings import MIN_DEAD_LETTER_TTL_SECONDS, Settings

#: Seconds the check may wait for RabbitMQ before leaving the question to the worker.
CHECK_TIMEOUT_SECONDS = 5.0

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


def check_dead_letter_queues(settings: Settings, queues: Iterable[str]) -> str | None:
    """None when each queue's ``.XQ`` is absent or keeps DEAD_LETTER_TTL_SECONDS; else the
    line that says which one differs and what to do. Creates nothing.

    An unreachable RabbitMQ is not this check's business: None (the worker then
    waits for it and reconnects, as it does for any outage).
    """
    parameters = pika.URLParameters(settings.rabbitmq_url)
    parameters.socket_timeout = CHECK_TIMEOUT_SECONDS
    parameters.blocked_connection_timeout = CHECK_TIMEOUT_SECONDS
    parameters.connection_attempts = 1
    try:
        connection = pika.BlockingConnection(parameters)
    except pika.exceptions.AMQPError:
        return None
    try:
        with _quiet_channels():
            return _first_mismatch(connection, queues, settings.DEAD_LETTER_TTL_SECONDS)
    except pika.exceptions.AMQPConnectionError:
        return None
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def _first_mismatch(connection: Any, queues: Iterable[str], ttl_seconds: int) -> str | None:
    arguments = dead_letter_arguments(ttl_seconds * 1000)
    for name in dict.fromkeys(xq_name(queue) for queue in queues):
        try:
            connection.channel().queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            continue  # not there yet: it will be declared with the setting's TTL
        try:
            connection.channel().queue_declare(name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == PRECONDITION_FAILED:
                return explain_refusal(error.reply_text, ttl_seconds)
            raise
    return None


@contextlib.contextmanager
def _quiet_channels() -> Iterator[None]:
    """pika logs every channel the broker closes (a passive declaration of a queue that
    does not exist yet) as a WARNING; during the check those are answers, not news."""
    channel_logger = logging.getLogger("pika.channel")
    level = channel_logger.level
    channel_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        channel_logger.setLevel(level)


def refusal_of(error: BaseException) -> str | None:
    """RabbitMQ's reply when ``error`` (or the pika error Dramatiq wrapped in it) is a
    refused re-declaration of an existing queue, else None."""
    cause = getattr(error, "message", error)  # Dramatiq's ConnectionClosed keeps pika's error there
    if (
        isinstance(cause, pika.exceptions.ChannelClosedByBroker)
        and cause.reply_code == PRECONDITION_FAILED
        and "inequivalent arg" in cause.reply_text
    ):
        return str(cause.reply_text)
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
