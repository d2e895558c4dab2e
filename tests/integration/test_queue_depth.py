"""Queue depths read from a real RabbitMQ, and a scrape bounded when RabbitMQ does not answer."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pika
import pytest

from observability.queue_depth import QueueDepthReader
from shared.connections import checking_parameters
from tests.support import delete_queues

pytestmark = pytest.mark.integration

QUEUE = "depth-probe"


@pytest.fixture
def probe_queue(rabbitmq_url: str) -> Iterator[str]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True)
    channel.queue_declare(f"{QUEUE}.XQ", durable=True)
    for body in (b"1", b"2", b"3"):
        channel.basic_publish("", QUEUE, body)
    channel.basic_publish("", f"{QUEUE}.XQ", b"dead")
    connection.close()
    yield QUEUE
    delete_queues(rabbitmq_url, QUEUE)


def test_reads_ready_delayed_and_dead_letter_depths(rabbitmq_url: str, probe_queue: str) -> None:
    # Given a queue with 3 ready messages, no .DQ and 1 dead letter
    reader = QueueDepthReader(lambda: checking_parameters(rabbitmq_url, 2.0), lambda: [probe_queue])

    # When a scrape reads its depths
    try:
        depths = reader.read()
    finally:
        reader.close()  # its connection, kept between scrapes, would be left to the garbage collector

    # Then each state has its count (a queue not declared counts 0)
    assert depths == {probe_queue: {"ready": 3, "delayed": 0, "dead_letter": 1}}


# pika leaves its socket to the garbage collector when the handshake times out.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_scrape_ends_within_its_bound_when_rabbitmq_never_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a server that accepts connections and never says a word
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/%2F"
        reader = QueueDepthReader(lambda: checking_parameters(url, 0.5), lambda: ["default"])

        # When a scrape reads the depths
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="greenroom.exposition"):
            depths = reader.read()
        waited = time.monotonic() - started

    # Then it reports nothing, says so once, and gave up within the bounded waits (pika's own
    # default would wait 15 s for the handshake)
    assert depths == {}
    assert [r.message for r in caplog.records if "queue depths" in r.message] != []
    assert waited < 5, f"a scrape waited {waited:.1f} s"
