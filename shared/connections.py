"""The one way to open a short-lived connection that checks or inspects RabbitMQ (or Redis).

``greenroom check``, the worker's start-up check and ``greenroom dlq`` each open a
connection of their own, use it for a few operations and close it. Opening it
makes one attempt, with the socket, handshake and blocked-connection waits
bounded by ``timeout`` (CHECK_TIMEOUT_SECONDS unless told otherwise), and pika's
own log lines about a failed connection or a channel RabbitMQ closes are held
back: the caller turns them into its one line. A failure is told apart as
:mod:`shared.service_refusals` tells them apart:

- RabbitMQ refusing the settings (a login, a vhost, a permission, a queue's
  arguments) raises :class:`~shared.errors.BrokerRefused`, whose text is the line
  naming the setting;
- anything else (RabbitMQ away, the connection lost) raises
  :class:`~shared.errors.BrokerUnavailable`, caused by (``__cause__``) the error
  pika raised.

Example (not run here: it needs a RabbitMQ)::

    with checking_connection(settings) as connection:
        connection.channel().queue_declare("default.XQ", passive=True)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from shared.errors import BrokerRefused, BrokerUnavailable
from shared.service_refusals import outage_line, refusal_line
from shared.settings import Settings

if TYPE_CHECKING:
    import redis

#: Seconds a checking connection waits for RabbitMQ (or Redis) at each step.
CHECK_TIMEOUT_SECONDS = 5.0

#: What opening a connection to RabbitMQ raises when it fails: pika's errors, a name
#: that does not resolve (socket.gaierror), a stalled handshake (AMQPConnectorStackTimeout).
CONNECTION_ERRORS = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)


def checking_parameters(url: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> pika.URLParameters:
    """pika's parameters for ``url`` with one connection attempt and every wait bounded by ``timeout``."""
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = timeout
    parameters.stack_timeout = 2 * timeout  # the whole open: TCP, TLS, the AMQP handshake
    parameters.blocked_connection_timeout = timeout
    parameters.connection_attempts = 1
    return parameters


@contextlib.contextmanager
def checking_connection(
    settings: Settings, *, timeout: float = CHECK_TIMEOUT_SECONDS
) -> Iterator[pika.BlockingConnection]:
    """A connection to RABBITMQ_URL for the ``with`` block, closed at its end; pika's
    errors, opening it or in the block, become BrokerRefused or BrokerUnavailable."""
    with quiet_pika():
        try:
            connection = pika.BlockingConnection(checking_parameters(settings.rabbitmq_url, timeout))
        except CONNECTION_ERRORS as error:
            raise broker_error(error, settings, "could not reach RabbitMQ") from error
        try:
            yield connection
        except pika.exceptions.AMQPError as error:
            raise broker_error(error, settings, "RabbitMQ connection lost") from error
        finally:
            if connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()


def broker_error(error: BaseException, settings: Settings, outage: str) -> BrokerUnavailable:
    """``error`` from pika as greenroom's: BrokerRefused with the line naming the setting
    RabbitMQ refuses, else BrokerUnavailable saying ``outage`` and why."""
    refused = refusal_line(error, settings)
    if refused is not None:
        return BrokerRefused(refused)
    return BrokerUnavailable(f"{outage}: {outage_line(error)}")


@contextlib.contextmanager
def checking_redis(
    settings: Settings, *, timeout: float = CHECK_TIMEOUT_SECONDS
) -> Iterator[redis.Redis[bytes]]:
    """A Redis client for REDIS_URL for the ``with`` block, its waits bounded by ``timeout``;
    redis-py's errors pass unchanged (:func:`shared.service_refusals.redis_refusal_line`
    tells a refusal)."""
    import redis  # imported here: only workers whose tasks store results load redis-py

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def quiet_pika() -> Iterator[None]:
    """pika logs each step of a failed connection at ERROR, and each channel the broker
    closes as a WARNING; while checking, those are answers, not news."""
    pika_logger = logging.getLogger("pika")
    level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        pika_logger.setLevel(level)
