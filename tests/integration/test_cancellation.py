"""Cancellation's Redis side against a real Redis (and RabbitMQ for sending): the registry and
the statuses a cancel reports, a send that goes on with Redis away, REDIS_URL refused, and a
worker process's view of the pending set (boot load, announcements, the periodic reload)."""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.results import Results
from opentelemetry.trace import NoOpTracerProvider

from shared.cancellation import CANCELLATIONS_KEY, SENT_PREFIX
from shared.cli import cancel as cancel_command
from shared.producer import Producer
from shared.result_marks import cancelled_mark, stopped_mark
from shared.runtime import cancellation as worker_side
from shared.runtime.cancellation import Cancellation
from shared.settings import Settings, load_settings
from tests.support import take_all, wait_for


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    connection: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def key_message(message_id: str) -> dramatiq.Message[object]:
    return dramatiq.Message("default", "echo", (), {}, {}, message_id=message_id)


def test_a_cancel_tells_unknown_finished_already_cancelled_and_cancelled(
    producer: Producer, client: redis.Redis[bytes]
) -> None:
    # Given: four messages sent 60 s ahead, three of which have something stored as their result
    handles = producer.send_many("echo", [{"payload": n} for n in range(4)], delay=60)
    succeeded, failed_step, cancelled, waiting = (handle.message_id for handle in handles)
    backend = producer.backend
    backend.store_result(key_message(succeeded), 1, 60_000)
    backend.store_exception(
        key_message(failed_step),
        stopped_mark("first", "m-0", error_type="ValueError", error="no"),
        60_000,
    )
    backend.store_exception(key_message(cancelled), cancelled_mark("echo", cancelled), 60_000)
    unknown = str(uuid.uuid4())

    # When: all are cancelled, in one call
    reports = producer.cancel(succeeded, failed_step, cancelled, waiting, unknown)

    # Then: each says what it is; only the waiting one is marked
    assert [report.status for report in reports] == [
        "finished",
        "finished",
        "already cancelled",
        "cancelled",
        "unknown",
    ]
    assert reports[0].line.endswith("finished, not cancelled (it succeeded)")
    assert "an earlier step of its workflow failed" in reports[1].line
    assert client.zscore(CANCELLATIONS_KEY, waiting) is not None
    assert client.zscore(CANCELLATIONS_KEY, succeeded) is None
    # And: the mark expires with the message's record: its delay and its result TTL
    lasts = 60 + producer._result_ttl_ms("echo") / 1000
    expiry_s = (client.zscore(CANCELLATIONS_KEY, waiting) or 0) / 1000 - time.time()
    assert lasts - 5 < expiry_s <= lasts, (expiry_s, lasts)
    record_ttl = client.pttl(f"{SENT_PREFIX}{waiting}") / 1000
    assert lasts - 5 < record_ttl <= lasts, (record_ttl, lasts)
    # And: a second cancel says already cancelled
    assert [report.status for report in producer.cancel(waiting)] == ["already cancelled"]


def test_a_send_goes_on_when_redis_is_away_with_one_warning(
    settings: Settings, clean_queues: None, rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    away = load_settings(_env_file=None, RABBITMQ_URL=rabbitmq_url, REDIS_URL="redis://127.0.0.1:1/0")
    producer = Producer(away, tracer_provider=NoOpTracerProvider())
    try:
        with caplog.at_level(logging.WARNING, logger="greenroom.producer"):
            handle = producer.send("echo", payload=1)
    finally:
        producer.close()

    (warning,) = [r for r in caplog.records if r.name == "greenroom.producer"]
    assert warning.getMessage().startswith(f"Could not record message {handle.message_id} for cancellation")
    assert warning.getMessage().endswith("a cancel will not find it")
    assert len(take_all(rabbitmq_url, "default")) == 1, "the message was published"


def test_greenroom_cancel_exits_2_when_redis_refuses_redis_url(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = load_settings(_env_file=None, REDIS_URL=redis_url.rsplit("/", 1)[0] + "/99")

    assert cancel_command.run(argparse.Namespace(message_ids=["m-1"]), refused) == 2

    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("greenroom: error: could not cancel: REDIS_URL (redis://127.0.0.1:6379/99)"), line


def test_a_worker_loads_pending_cancellations_at_boot_and_follows_new_ones(
    settings: Settings, producer: Producer, client: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: a message cancelled before the worker process boots
    monkeypatch.setattr(worker_side, "RELOAD_SECONDS", 0.2)
    early, announced, missed = producer.send_many("echo", [{"payload": n} for n in range(3)], delay=60)
    assert early.cancel().cancelled
    broker = StubBroker(middleware=[Results(backend=producer.backend)])
    middleware = Cancellation(settings)
    try:
        # When: it boots
        middleware.after_process_boot(broker)

        # Then: it knows that one at once, a new one as it is announced
        assert middleware.is_cancelled(early.message_id)
        assert announced.cancel().cancelled
        wait_for(lambda: middleware.is_cancelled(announced.message_id), 2, "the announced cancel")
        # And: one whose announcement it missed (written straight to the set) by the next reload
        client.zadd(CANCELLATIONS_KEY, {missed.message_id: int(time.time() * 1000) + 60_000})
        wait_for(lambda: middleware.is_cancelled(missed.message_id), 2, "the reloaded cancel")
    finally:
        middleware.after_worker_shutdown(broker, None)  # type: ignore[arg-type]
        broker.close()
    assert middleware._thread is not None and not middleware._thread.is_alive(), "the thread stopped"


def test_a_worker_starts_with_redis_away_with_one_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    away = load_settings(_env_file=None, REDIS_URL="redis://127.0.0.1:1/0")
    broker = StubBroker()
    middleware = Cancellation(away)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="greenroom.cancellation"):
        middleware.after_process_boot(broker)
        boot_seconds = time.monotonic() - started
        time.sleep(1.5)  # the thread's first attempts to connect (0.5 s, then 1 s apart) fail meanwhile
        middleware.after_worker_shutdown(broker, None)  # type: ignore[arg-type]
    broker.close()

    assert boot_seconds < 3
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "Could not load pending cancellations",
    ], "one line for the outage, none per reconnect attempt"
