"""Pipelined publisher confirms against the real RabbitMQ: all confirmed, refusals kept for a retry."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlparse

import dramatiq
import pika
import pytest
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import INVALID_SPAN
from prometheus_client import REGISTRY

from observability.tracing import Tracing
from shared import pika_compat
from shared import publishing as batch_publisher
from shared.errors import PublishError
from shared.producer import Producer
from shared.publishing import BatchPublisher
from shared.settings import Settings, load_settings
from tests.support import delete_queues, free_port, stop_rabbitmq_for, take_all

FULL_QUEUE = "greenroom-test-full"


def _messages(queue: str, count: int) -> list[dramatiq.Message[Any]]:
    return [
        dramatiq.Message(queue_name=queue, actor_name="echo", args=(), kwargs={"payload": n}, options={})
        for n in range(count)
    ]


def _kept_channel(producer: Producer) -> tuple[Any, batch_publisher.Confirmations]:
    """The confirm channel (and its confirmations) kept for the producer's connection on this thread."""
    _, channel, confirmed = batch_publisher._kept[id(producer.broker.connection)]
    return channel, confirmed


def _drain(rabbitmq_url: str, queue: str) -> list[int]:
    """Every payload in ``queue``, in order, removing them."""
    return [json.loads(body)["kwargs"]["payload"] for body in take_all(rabbitmq_url, queue)]


def _vhost(rabbitmq_url: str) -> str:
    return unquote(urlparse(rabbitmq_url).path.lstrip("/"))


def _close_connections_of(vhost: str) -> int:
    """Close every client connection to ``vhost`` (this session's own) with rabbitmqctl; how many."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "vhost"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    pids = [pid for pid, _, name in (line.partition("\t") for line in listed.splitlines()) if name == vhost]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "greenroom test: connection dropped"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return len(pids)


def _payload_counts(rabbitmq_url: str, queue: str) -> Counter[int]:
    """How often each payload is in ``queue``, removing the messages (a consumer, not a get each)."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)
        counts: Counter[int] = Counter()
        for method, _properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=2):
            if method is None:
                return counts
            counts[json.loads(body)["kwargs"]["payload"]] += 1
        return counts
    finally:
        connection.close()


class _AtMessage(Middleware):
    """Runs ``action`` in ``before_enqueue`` of the ``at``-th message published, on the publishing
    thread (which waits for it); counts every publish, re-sends included."""

    def __init__(self, *, at: int, action: Callable[[], object]) -> None:
        self.at = at
        self.action = action
        self.published = 0

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: Any) -> None:
        self.published += 1
        if self.published == self.at:
            self.action()


@pytest.fixture
def full_after_five(rabbitmq_url: str) -> Iterator[str]:
    """A queue that holds 5 messages and makes RabbitMQ refuse (nack) any more (a real policy)."""
    vhost = unquote(urlparse(rabbitmq_url).path.lstrip("/"))
    policy = json.dumps({"max-length": 5, "overflow": "reject-publish"})
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run(
        [*ctl, "set_policy", "-p", vhost, "--apply-to", "queues", "full", f"^{FULL_QUEUE}$", policy],
        check=True,
        capture_output=True,
        timeout=60,
    )
    yield FULL_QUEUE
    subprocess.run([*ctl, "clear_policy", "-p", vhost, "full"], check=True, capture_output=True, timeout=60)
    delete_queues(rabbitmq_url, FULL_QUEUE)


def test_a_batch_larger_than_the_confirm_window_arrives_whole_and_in_order(
    producer: Producer, rabbitmq_url: str
) -> None:
    count = batch_publisher.MAX_UNCONFIRMED + batch_publisher.CHUNK_SIZE * 3 + 7
    publisher = BatchPublisher(producer.broker, _messages("default", count))
    publisher.publish()
    assert publisher.unconfirmed == []
    assert _drain(rabbitmq_url, "default") == list(range(count))


def test_refused_messages_are_kept_and_only_they_are_published_again(
    producer: Producer, rabbitmq_url: str, full_after_five: str
) -> None:
    messages = _messages(full_after_five, 12)
    publisher = BatchPublisher(producer.broker, messages)

    with pytest.raises(ConnectionClosed, match="refused 7 messages"):
        publisher.publish()
    assert [m.message_id for m in publisher.unconfirmed] == [m.message_id for m in messages[5:]]
    assert _drain(rabbitmq_url, full_after_five) == [0, 1, 2, 3, 4]

    with pytest.raises(ConnectionClosed, match="refused 2 messages"):
        publisher.publish()
    assert _drain(rabbitmq_url, full_after_five) == [5, 6, 7, 8, 9]

    publisher.publish()
    assert publisher.unconfirmed == []
    assert _drain(rabbitmq_url, full_after_five) == [10, 11]


def test_the_wait_ends_when_the_confirms_arrive_not_when_the_poll_times_out(
    producer: Producer, rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each wait may block this long for events; the confirmations themselves must end it.
    monkeypatch.setattr(batch_publisher, "MAX_POLL_SECONDS", 20.0)
    started = time.monotonic()
    for _ in range(3):
        BatchPublisher(producer.broker, _messages("default", 10)).publish()
    assert time.monotonic() - started < 5.0  # without the wake-up: 20 s per wait
    assert len(_drain(rabbitmq_url, "default")) == 30


def test_batches_on_a_thread_share_one_confirm_channel_and_each_waits_for_its_own_confirms(
    producer: Producer, rabbitmq_url: str
) -> None:
    BatchPublisher(producer.broker, _messages("default", 3)).publish()
    channel, confirmed = _kept_channel(producer)

    second = BatchPublisher(producer.broker, _messages("default", 5))
    second.publish()

    assert _kept_channel(producer)[0] is channel  # no channel opened for the second batch
    assert second.unconfirmed == []
    assert confirmed.published == confirmed.highest == 8  # delivery tags went on from the first batch
    assert _drain(rabbitmq_url, "default") == [0, 1, 2, 0, 1, 2, 3, 4]


def test_a_kept_channel_that_was_closed_is_replaced(producer: Producer, rabbitmq_url: str) -> None:
    BatchPublisher(producer.broker, _messages("default", 2)).publish()
    channel, _ = _kept_channel(producer)
    channel.close()  # as RabbitMQ closes a channel after a channel error

    BatchPublisher(producer.broker, _messages("default", 2)).publish()

    assert _kept_channel(producer)[0] is not channel
    assert _drain(rabbitmq_url, "default") == [0, 1, 0, 1]


def test_send_many_rides_out_a_rabbitmq_restart_between_two_calls(
    producer: Producer, rabbitmq_url: str
) -> None:
    # Given: a thread that kept its confirm channel from an earlier batch
    producer.send_many("echo", [{"payload": "before"}])

    # When: RabbitMQ restarts (the kept channel's connection dies) before the next batch
    stop_rabbitmq_for(1)
    handles = producer.send_many("echo", [{"payload": n} for n in range(3)])

    # Then: the batch went out whole on a new channel (durable queue: the earlier message is kept)
    assert len(handles) == 3
    assert _drain(rabbitmq_url, "default") == ["before", 0, 1, 2]


def test_producers_taking_turns_on_a_thread_each_keep_their_own_channel(
    producer: Producer, settings: Settings, tracer_provider: TracerProvider, rabbitmq_url: str
) -> None:
    other = Producer(settings, tracer_provider=tracer_provider)
    try:
        for turn in (producer, other, producer, other):
            BatchPublisher(turn.broker, _messages("default", 1)).publish()
        kept = [_kept_channel(turn) for turn in (producer, other)]
    finally:
        other.close()

    assert kept[0][0] is not kept[1][0]
    assert [confirmed.published for _, confirmed in kept] == [2, 2]  # each channel served both its batches
    assert _drain(rabbitmq_url, "default") == [0, 0, 0, 0]


def test_the_channel_of_a_closed_producer_is_forgotten(
    producer: Producer, settings: Settings, tracer_provider: TracerProvider
) -> None:
    other = Producer(settings, tracer_provider=tracer_provider)
    BatchPublisher(other.broker, _messages("default", 1)).publish()
    connection = other.broker.connection
    assert id(connection) in batch_publisher._kept
    other.close()

    BatchPublisher(producer.broker, _messages("default", 1)).publish()  # opens a channel: looks around

    assert id(connection) not in batch_publisher._kept


LARGE_BATCH = 30_000


def test_a_connection_dropped_mid_batch_re_sends_only_what_was_not_confirmed(
    producer: Producer, rabbitmq_url: str
) -> None:
    # Given: a batch whose producer connection RabbitMQ closes half-way through
    producer.send_many("echo", [{"payload": -1}])  # the producer's connection exists
    assert _payload_counts(rabbitmq_url, "default") == {-1: 1}
    dropped: list[int] = []
    hook = _AtMessage(
        at=LARGE_BATCH // 2, action=lambda: dropped.append(_close_connections_of(_vhost(rabbitmq_url)))
    )
    producer.broker.add_middleware(hook)

    # When
    handles = producer.send_many("echo", [{"payload": n} for n in range(LARGE_BATCH)])

    # Then: every message is there, and only the window unconfirmed at the drop came twice
    assert dropped and dropped[0] >= 1
    counts = _payload_counts(rabbitmq_url, "default")
    duplicates = sum(counts.values()) - LARGE_BATCH
    re_sent = hook.published - LARGE_BATCH
    assert len(handles) == LARGE_BATCH
    assert set(counts) == set(range(LARGE_BATCH))
    assert 0 < re_sent <= batch_publisher.MAX_UNCONFIRMED + LARGE_BATCH // 2 - 1, re_sent
    assert 0 <= duplicates <= min(re_sent, batch_publisher.MAX_UNCONFIRMED), (duplicates, re_sent)


def test_send_many_gives_up_within_the_send_timeout_when_rabbitmq_stays_unreachable(
    rabbitmq_url: str, redis_url: str, tracer_provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: a producer that retries for 2 s, whose RabbitMQ drops it mid-batch and then refuses it
    monkeypatch.setattr(batch_publisher, "CONFIRM_TIMEOUT_SECONDS", 2.0)
    settings = load_settings(
        _env_file=None, RABBITMQ_URL=rabbitmq_url, REDIS_URL=redis_url, SEND_RETRY_TIMEOUT_SECONDS=2
    )
    producer = Producer(settings, tracer_provider=tracer_provider)
    closed_port = free_port()

    def drop_and_refuse() -> None:
        parameters = producer.broker.parameters
        assert isinstance(parameters, pika.URLParameters)
        parameters.port = closed_port  # every reconnect is refused from now on
        _close_connections_of(_vhost(rabbitmq_url))

    producer.broker.add_middleware(_AtMessage(at=5_000, action=drop_and_refuse))
    try:
        # When
        started = time.monotonic()
        with pytest.raises(PublishError, match="within 2s"):
            producer.send_many("echo", [{"payload": n} for n in range(10_000)])
        elapsed = time.monotonic() - started
    finally:
        producer.close()
        _payload_counts(rabbitmq_url, "default")

    # Then: retried for SEND_RETRY_TIMEOUT_SECONDS, plus at most one confirm wait
    assert elapsed < settings.SEND_RETRY_TIMEOUT_SECONDS + batch_publisher.CONFIRM_TIMEOUT_SECONDS + 1.0


@pytest.fixture
def without_pipelined_confirms(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pika whose blocking channel no longer keeps its channel where shared.pika_compat looks."""
    monkeypatch.setattr(pika_compat, "IMPL_ATTRIBUTE", "_impl_moved")
    monkeypatch.setattr("observability.fallbacks._reported", {})
    monkeypatch.setattr(batch_publisher, "_kept", {})  # no confirm channel kept from a pipelined batch


def test_without_pipelined_confirms_a_batch_arrives_whole_on_pikas_public_path_and_says_so(
    producer: Producer, rabbitmq_url: str, without_pipelined_confirms: None, caplog: pytest.LogCaptureFixture
) -> None:
    # When
    with caplog.at_level(logging.ERROR, "greenroom.degraded"):
        publisher = BatchPublisher(producer.broker, _messages("default", 300))
        publisher.publish()

    # Then: every message confirmed and in order; one ERROR line and the degraded gauge
    assert publisher.unconfirmed == []
    assert _drain(rabbitmq_url, "default") == list(range(300))
    [line] = caplog.messages
    assert line.startswith("pika pipelined confirms: fast path unavailable")
    assert REGISTRY.get_sample_value("greenroom_degraded", {"component": "pika pipelined confirms"}) == 1
    _, confirmed = _kept_channel(producer)
    assert not confirmed.pipelined


def test_without_pipelined_confirms_refused_messages_are_still_kept_for_a_retry(
    producer: Producer, rabbitmq_url: str, full_after_five: str, without_pipelined_confirms: None
) -> None:
    messages = _messages(full_after_five, 12)
    publisher = BatchPublisher(producer.broker, messages)
    tracing = next(m for m in producer.broker.middleware if isinstance(m, Tracing))

    # As send_many publishes: one batch span (a refused publish raises mid-batch on this path)
    with pytest.raises(ConnectionClosed, match="refused"), tracing.publishing_batch(full_after_five, 12):
        publisher.publish()
    assert trace.get_current_span() is INVALID_SPAN  # nothing of the batch left current
    assert [m.message_id for m in publisher.unconfirmed] == [m.message_id for m in messages[5:]]
    assert _drain(rabbitmq_url, full_after_five) == [0, 1, 2, 3, 4]


def test_without_pikas_buffering_each_message_is_written_at_once_and_the_batch_still_arrives(
    producer: Producer, rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given: a pika whose asynchronous channel no longer has the buffering publish
    monkeypatch.setattr(pika_compat, "BUFFERED_PUBLISH", "basic_publish_moved")
    monkeypatch.setattr("observability.fallbacks._reported", {})

    # When
    with caplog.at_level(logging.ERROR, "greenroom.degraded"):
        publisher = BatchPublisher(producer.broker, _messages("default", 600))
        publisher.publish()

    # Then: confirms still pipelined, every message there in order, one ERROR line and the gauge
    assert publisher.unconfirmed == []
    assert _drain(rabbitmq_url, "default") == list(range(600))
    assert _kept_channel(producer)[1].pipelined
    [line] = caplog.messages
    assert line.startswith("pika frame buffering: fast path unavailable")
    assert REGISTRY.get_sample_value("greenroom_degraded", {"component": "pika frame buffering"}) == 1
