"""shared.connections: a checking connection to a real RabbitMQ, one it refuses, one that is away,
and one that never answers (the open ends within its bounded waits)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pika.exceptions
import pytest

from shared.connections import checking_connection
from shared.errors import BrokerRefused, BrokerUnavailable
from shared.settings import Settings, load_settings


def _settings(rabbitmq_url: str) -> Settings:
    return load_settings(_env_file=None, RABBITMQ_URL=rabbitmq_url)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_a_checking_connection_opens_and_is_closed_after_the_block(rabbitmq_url: str) -> None:
    with checking_connection(_settings(rabbitmq_url)) as connection:
        connection.channel().queue_declare("", exclusive=True)
        assert connection.is_open
    assert connection.is_closed


def test_a_login_rabbitmq_refuses_is_broker_refused_naming_the_setting(rabbitmq_url: str) -> None:
    parts = urlsplit(rabbitmq_url)
    wrong = urlunsplit(parts._replace(netloc=f"guest:wrong@{parts.hostname}:{parts.port}"))

    refused = r"RABBITMQ_URL \(amqp://guest:\*\*\*@.*refused the login"
    with pytest.raises(BrokerRefused, match=refused), checking_connection(_settings(wrong)):
        pass


def test_rabbitmq_away_is_broker_unavailable_caused_by_pikas_error() -> None:
    away = _settings("amqp://guest:guest@127.0.0.1:1/%2F")
    outage = "could not reach RabbitMQ: ConnectionRefusedError"
    with pytest.raises(BrokerUnavailable, match=outage) as caught, checking_connection(away):
        pass
    assert not isinstance(caught.value, BrokerRefused)
    assert isinstance(caught.value.__cause__, pika.exceptions.AMQPConnectionError)


def test_an_error_in_the_block_is_told_apart_too(rabbitmq_url: str) -> None:
    lost = "RabbitMQ connection lost: ChannelClosedByBroker"
    settings = _settings(rabbitmq_url)
    with pytest.raises(BrokerUnavailable, match=lost), checking_connection(settings) as connection:
        connection.channel().queue_declare("no-such-queue-here", passive=True)


def test_a_server_that_never_answers_fails_within_the_bounded_waits(silent_port: int) -> None:
    started = time.monotonic()
    silent = _settings(f"amqp://guest:guest@127.0.0.1:{silent_port}/%2F")
    with pytest.raises(BrokerUnavailable), checking_connection(silent, timeout=0.5):
        pass
    assert time.monotonic() - started < 10  # pika's own stack timeout alone is 15 s
