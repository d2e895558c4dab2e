"""Which broker errors are RabbitMQ refusing the settings (no retry) and which are outages."""

from __future__ import annotations

import pika.exceptions
import pytest
from dramatiq.errors import ConnectionClosed

from shared.service_refusals import refusal_line
from shared.settings import Settings, load_settings


@pytest.fixture
def settings() -> Settings:
    return load_settings(_env_file=None, RABBITMQ_URL="amqp://app:s3cret@rabbit:5672/prod")


def test_a_login_refused_by_rabbitmq_names_the_url_without_its_password(settings: Settings) -> None:
    refused = pika.exceptions.ProbableAuthenticationError(
        "Client was disconnected at a connection stage indicating a probable authentication error: "
        "(\"ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused'\",)"
    )
    line = refusal_line(ConnectionClosed(refused), settings)  # as Dramatiq's enqueue wraps it
    assert line == (
        "RABBITMQ_URL (amqp://app:***@rabbit:5672/prod): RabbitMQ refused the login: "
        "check the user name and password"
    )


def test_a_connection_lost_while_logging_in_is_an_outage(settings: Settings) -> None:
    # pika guesses "authentication" from the stage alone; RabbitMQ said nothing (a restart)
    lost = pika.exceptions.ProbableAuthenticationError(
        "Client was disconnected at a connection stage indicating a probable authentication error: "
        "(\"StreamLostError: ('Transport indicated EOF',)\",)"
    )
    assert refusal_line(ConnectionClosed(lost), settings) is None
    assert refusal_line(pika.exceptions.AMQPConnectionError("refused"), settings) is None


def test_a_queue_with_other_arguments_is_a_refusal(settings: Settings) -> None:
    closed = pika.exceptions.ChannelClosedByBroker(
        406,
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'default.XQ' in vhost 'prod': "
        "received '604800000' but current is '86400000'",
    )
    line = refusal_line(ConnectionClosed(closed), settings)
    assert line is not None
    assert line.startswith("DEAD_LETTER_TTL_SECONDS=604800 (604800000 ms) does not match")
    assert "set DEAD_LETTER_TTL_SECONDS=86400 again" in line
