"""Publishing while RabbitMQ blocks publishers (a disk alarm on the real node) ends in time.

RabbitMQ blocks every connection that publishes while a memory or disk alarm is
raised; without pika's ``blocked_connection_timeout`` a confirmed publish waits
for the alarm to end, however long that is. Each test holds the alarm for a few
seconds only (other tests on the node are blocked meanwhile).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Retries
from opentelemetry.sdk.trace import TracerProvider

from shared.broker import build_broker
from shared.errors import PublishError
from shared.producer import Producer
from shared.settings import Settings, load_settings
from tests.support import rabbitmq_disk_alarm

SEND_TIMEOUT = 2.0
#: Reconnecting and the last attempt's backoff, on top of SEND_RETRY_TIMEOUT_SECONDS.
SLACK_SECONDS = 1.5


@pytest.fixture
def blocking_settings(rabbitmq_url: str, redis_url: str) -> Settings:
    return load_settings(
        _env_file=None,
        RABBITMQ_URL=rabbitmq_url,
        REDIS_URL=redis_url,
        SEND_RETRY_TIMEOUT_SECONDS=SEND_TIMEOUT,
    )


@pytest.fixture
def quick_producer(
    blocking_settings: Settings, clean_queues: None, tracer_provider: TracerProvider
) -> Iterator[Producer]:
    producer = Producer(blocking_settings, tracer_provider=tracer_provider)
    producer.send("echo", payload="connected")  # the connection and queues exist before the alarm
    yield producer
    producer.close()


def _blocked_call(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """Run ``call()`` on a thread while a disk alarm blocks publishers: what it raised (None if
    nothing) and how long it took. A call still blocked after the bound fails the test (the
    alarm then ends, which releases it)."""
    outcome: list[tuple[BaseException | None, float]] = []

    def timed() -> None:
        started = time.monotonic()
        try:
            call()
        except Exception as error:
            outcome.append((error, time.monotonic() - started))
        else:
            outcome.append((None, time.monotonic() - started))

    with rabbitmq_disk_alarm():
        thread = threading.Thread(target=timed, daemon=True)
        thread.start()
        thread.join(timeout=SEND_TIMEOUT + SLACK_SECONDS + 5)
        still_blocked = thread.is_alive()
    assert not still_blocked, "still blocked: the publish waited for the alarm to end"
    return outcome[0]


def test_send_raises_publish_error_within_the_send_timeout_while_rabbitmq_blocks_publishers(
    quick_producer: Producer,
) -> None:
    # When
    error, seconds = _blocked_call(lambda: quick_producer.send("echo", payload="blocked"))

    # Then: PublishError in time, and publishing works again once the alarm is over
    assert isinstance(error, PublishError), error
    assert seconds < SEND_TIMEOUT + SLACK_SECONDS
    assert quick_producer.send("echo", payload="after").message_id


def test_send_many_raises_publish_error_within_the_send_timeout_while_rabbitmq_blocks_publishers(
    quick_producer: Producer,
) -> None:
    # When
    error, seconds = _blocked_call(
        lambda: quick_producer.send_many("echo", [{"payload": n} for n in range(500)])
    )

    # Then
    assert isinstance(error, PublishError), error
    assert seconds < SEND_TIMEOUT + SLACK_SECONDS
    assert len(quick_producer.send_many("echo", [{"payload": n} for n in range(500)])) == 500


def test_a_worker_threads_retry_enqueue_gives_up_while_rabbitmq_blocks_publishers(
    blocking_settings: Settings, clean_queues: None
) -> None:
    # Given: a worker's broker, its thread connected (it published before), and a failing actor
    broker = build_broker(blocking_settings, "worker")
    retries = next(m for m in broker.middleware if isinstance(m, Retries))
    actor = dramatiq.actor(broker=broker, actor_name="greenroom-test-fails", queue_name="default")(_fails)
    sent = actor.message()
    message = MessageProxy(sent)
    try:
        broker.enqueue(sent)

        # When: Retries enqueues the retry, as a worker thread does after the task raised
        error, seconds = _blocked_call(
            lambda: retries.after_process_message(broker, message, exception=ValueError("failed"))
        )
    finally:
        broker.close()

    # Then: the enqueue gave up instead of waiting for the alarm to end, and the message is
    # failed (dead-lettered, so replayable) rather than acked with its retry lost
    assert error is None, error
    assert message.failed
    assert seconds < SEND_TIMEOUT + SLACK_SECONDS


def _fails() -> None:
    raise ValueError("failed")
