"""RabbitMQ or Redis refusing greenroom's settings, told apart from being away.

An outage (connection refused, reset, timed out) passes: workers reconnect,
``send`` retries. A refusal does not pass by waiting: a login RabbitMQ rejects,
a vhost or queue the user may not use (RABBITMQ_URL), a dead-letter queue kept with
another TTL (DEAD_LETTER_TTL_SECONDS), a Redis login or database Redis rejects
(REDIS_URL). Left to the retry loops, a worker would start, call itself ready
and restart its consumers every 3 seconds for good (or hold every result it
stores for RESULT_STORE_RETRY_SECONDS), and ``send`` would retry for
SEND_RETRY_TIMEOUT_SECONDS. Instead ``greenroom worker`` checks before it
starts (exit 2), and ``send`` and ``greenroom dlq replay`` fail at once, each
with one line that names the setting and says what to do.

>>> check_services(settings, ["default"], stores_results=True)   # None, or the line to print
"RABBITMQ_URL (amqp://app:***@rabbit:5672/prod): RabbitMQ refused the login ..."
>>> refusal_line(error, settings)                # for an error from a publish
>>> redis_refusal_line(error, settings)          # for an error from Redis
>>> outage_line(error)                           # what went wrong when nothing refused
"ConnectionRefusedError: [Errno 111] Connection refused"
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from shared.queue_arguments import PRECONDITION_FAILED, dead_letter_mismatch, explain_refusal
from shared.settings import Settings, redact_url

#: Seconds the check waits for RabbitMQ before leaving the question to the worker.
CHECK_TIMEOUT_SECONDS = 5.0

#: RabbitMQ's reply code for an operation the user has no permission for.
ACCESS_REFUSED = 403

#: What opening a connection to RabbitMQ raises when it fails: pika's errors, a name
#: that does not resolve (socket.gaierror), a stalled handshake (AMQPConnectorStackTimeout).
CONNECTION_ERRORS = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)


def check_services(settings: Settings, queues: Iterable[str], *, stores_results: bool) -> str | None:
    """None when RabbitMQ accepts the login, the vhost and the dead-letter queues of
    ``queues`` as the settings describe them, and (if the worker ``stores_results``)
    Redis its login and database; else the line to print. A service that cannot be
    reached at all passes: that is an outage, and the worker connects once it can.
    Declares the dead-letter queues the worker would declare next, nothing else.
    """
    return _rabbitmq_refusal(settings, queues) or (_redis_refusal(settings) if stores_results else None)


def _rabbitmq_refusal(settings: Settings, queues: Iterable[str]) -> str | None:
    parameters = pika.URLParameters(settings.rabbitmq_url)
    parameters.socket_timeout = CHECK_TIMEOUT_SECONDS
    parameters.blocked_connection_timeout = CHECK_TIMEOUT_SECONDS
    parameters.connection_attempts = 1
    with _quiet_pika():
        try:
            connection = pika.BlockingConnection(parameters)
        except CONNECTION_ERRORS as error:
            return refusal_line(error, settings)
        try:
            return dead_letter_mismatch(connection, queues, settings.DEAD_LETTER_TTL_SECONDS)
        except pika.exceptions.ChannelClosedByBroker as error:  # a permission the user lacks, say
            return refusal_line(error, settings)
        except pika.exceptions.AMQPConnectionError:
            return None
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()


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
        return explain_refusal(cause.reply_text, settings.DEAD_LETTER_TTL_SECONDS)
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


def _redis_refusal(settings: Settings) -> str | None:
    import redis  # imported here: 0.18 s, and only workers whose tasks store results need it

    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=CHECK_TIMEOUT_SECONDS, socket_timeout=CHECK_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except redis.RedisError as error:  # a login, a database number past the server's count
        return redis_refusal_line(error, settings)
    finally:
        client.close()
    return None


@contextlib.contextmanager
def _quiet_pika() -> Iterator[None]:
    """pika logs each step of a failed connection at ERROR, and each channel the broker
    closes as a WARNING; during the check those are answers, not news."""
    pika_logger = logging.getLogger("pika")
    level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        pika_logger.setLevel(level)
