"""RabbitMQ or Redis refusing greenroom's settings, told apart from being away.

An outage (connection refused, reset, timed out) passes: workers reconnect,
``send`` retries. A refusal does not pass by waiting: a login RabbitMQ rejects,
a vhost or queue the user may not use (RABBITMQ_URL), a dead-letter queue kept with
another TTL (DEAD_LETTER_TTL_SECONDS), a queue kept with other priorities
(QUEUE_MAX_PRIORITIES), a Redis login or database Redis rejects
(REDIS_URL). Left to the retry loops, a worker would start, call itself ready
and restart its consumers every 3 seconds for good (or hold every result it
stores for RESULT_STORE_RETRY_SECONDS), and ``send`` would retry for
SEND_RETRY_TIMEOUT_SECONDS. Instead ``greenroom worker`` checks before it
starts (exit 2, :mod:`shared.runtime.service_checks`), and ``send`` and
``greenroom dlq replay`` fail at once, each with one line that names the
setting and says what to do. This module only tells errors apart; opening a
connection to check is :mod:`shared.connections`.

>>> from shared.settings import load_settings
>>> settings = load_settings(_env_file=None, RABBITMQ_URL="amqp://app:s3cret@rabbit:5672/prod")
>>> refused = pika.exceptions.ProbableAuthenticationError("(403) 'ACCESS_REFUSED - Login was refused'")
>>> refusal_line(refused, settings)
'RABBITMQ_URL (amqp://app:***@rabbit:5672/prod): RabbitMQ refused the login: check the user name and password'
>>> away = pika.exceptions.AMQPConnectionError(ConnectionRefusedError(111, "Connection refused"))
>>> refusal_line(away, settings) is None     # an outage: retrying may help
True
>>> outage_line(away)                        # what went wrong when nothing refused
'ConnectionRefusedError: [Errno 111] Connection refused'
"""

from __future__ import annotations

import pika
import pika.exceptions

from shared.queue_arguments import PRECONDITION_FAILED, explain_refusal
from shared.settings import Settings, redact_url

#: RabbitMQ's reply code for an operation the user has no permission for.
ACCESS_REFUSED = 403


def refusal_line(error: BaseException, settings: Settings) -> str | None:
    """The line for ``error`` (pika's, or the one Dramatiq wrapped it in) when it is
    RabbitMQ refusing the settings; None for anything else, an outage included."""
    cause = getattr(error, "message", error)  # Dramatiq's ConnectionClosed keeps pika's error there
    where = f"RABBITMQ_URL ({redact_url(settings.rabbitmq_url)})"
    # pika's "probable" errors are guesses from the stage a connection ended at; only
    # RabbitMQ's own answer (403 ACCESS_REFUSED, 530 NOT_ALLOWED) makes them refusals.
    if isinstance(cause, pika.exceptions.ProbableAuthenticationError) and "ACCESS_REFUSED" in str(cause):
        return f"{where}: RabbitMQ refused the login: check the user name and password"
    if isinstance(cause, pika.exceptions.ProbableAccessDeniedError) and "NOT_ALLOWED" in str(cause):
        return f"{where}: RabbitMQ refused the vhost: it does not exist or this user has no permission on it"
    if (
        isinstance(cause, pika.exceptions.ChannelClosedByBroker)
        and cause.reply_code == PRECONDITION_FAILED
        and "inequivalent arg" in cause.reply_text
    ):
        return explain_refusal(
            cause.reply_text, settings.DEAD_LETTER_TTL_SECONDS, settings.QUEUE_MAX_PRIORITIES
        )
    if isinstance(cause, pika.exceptions.ChannelClosedByBroker) and cause.reply_code == ACCESS_REFUSED:
        return f"{where}: RabbitMQ refused this user: {cause.reply_text}"
    return None


def redis_refusal_line(error: BaseException, settings: Settings) -> str | None:
    """The line for a redis-py ``error`` that is Redis refusing REDIS_URL (its login,
    its database number); None for anything else, an outage included."""
    import redis.exceptions  # already imported by whoever has a redis error

    where = f"REDIS_URL ({redact_url(settings.redis_url)})"
    if isinstance(error, redis.AuthenticationError):
        return f"{where}: Redis refused the login: check the user name and password"
    if isinstance(error, redis.exceptions.NoPermissionError) or (
        isinstance(error, redis.ResponseError) and "DB index" in str(error)
    ):
        return f"{where}: Redis refused it: {error}"
    return None


def outage_line(error: BaseException) -> str:
    """One line saying why a connection failed, from the innermost cause pika or
    redis-py wrapped (pika's own wrappers often have no text of their own)."""
    cause = _innermost(error)
    text = " ".join(str(cause).split()) or " ".join(str(error).split())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _innermost(error: BaseException) -> BaseException:
    for _ in range(10):  # bounded: a wrapper never nests deeper than a few levels
        inner = getattr(error, "message", None)  # Dramatiq's ConnectionClosed keeps pika's error there
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in error.args if isinstance(arg, BaseException)), None)
        if inner is None:
            inner = getattr(error, "exception", None)  # pika's connector errors
        if not isinstance(inner, BaseException):
            return error
        error = inner
    return error
