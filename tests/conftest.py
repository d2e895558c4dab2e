"""Fixtures for real RabbitMQ and Redis.

Each test session gets its own RabbitMQ virtual host (created with rabbitmqctl,
deleted afterwards) and its own Redis database index, cleaned of greenroom's
keys afterwards, so tests never touch a running platform's queues or results.
A missing service fails the tests loudly; nothing is skipped.
"""

from __future__ import annotations

import gc
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import redis
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from shared.bench.otlp_receiver import OtlpReceiver
from shared.delays import LADDER_QUEUES
from shared.producer import Producer
from shared.results import RESULTS_NAMESPACE
from shared.settings import Settings, load_settings
from tests.support import greenroom_env

RABBITMQ_HOST = os.environ.get("GREENROOM_TEST_RABBITMQ", "127.0.0.1:5672")
REDIS_TEST_URL = os.environ.get("GREENROOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")

#: What greenroom writes to Redis (results, cancellations, the sent-message registry, group
#: barriers): the redis_url fixture deletes keys with these prefixes after the session.
GREENROOM_REDIS_PREFIXES = (
    f"{RESULTS_NAMESPACE}:",
    "greenroom-sent:",
    "greenroom-cancellations",
    "greenroom-group:",
    "greenroom-beat:",
)


@pytest.fixture(autouse=True, scope="module")
def _collect_what_each_module_leaves() -> Iterator[None]:
    """Collect garbage after each test module: a connection or socket a module leaves
    unclosed then fails that module's last test (warnings are errors here), not whichever
    later test the garbage collector happens to run in."""
    yield
    gc.collect()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """amqp URL of a fresh virtual host on the machine's RabbitMQ."""
    try:
        pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@{RABBITMQ_HOST}/%2F")).close()
    except Exception as error:
        pytest.fail(
            f"RabbitMQ is not reachable at {RABBITMQ_HOST}: {error!r} (start it: rabbitmq-server -detached)"
        )
    vhost = f"greenroom-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{RABBITMQ_HOST}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis database index that tests may write greenroom results to."""
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis is not reachable at {REDIS_TEST_URL}: {error!r}")
    try:
        yield REDIS_TEST_URL
    finally:
        for prefix in GREENROOM_REDIS_PREFIXES:
            keys = list(client.scan_iter(f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        client.close()


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A live OTLP/HTTP receiver that every greenroom process under test exports its spans to."""
    with OtlpReceiver.start("http/protobuf") as receiver:
        yield receiver


@pytest.fixture(scope="session")
def tracer_provider(otlp_receiver: OtlpReceiver) -> Iterator[TracerProvider]:
    """The test process's producer spans, exported to the session receiver."""
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_receiver.endpoint}/v1/traces"))
    )
    yield provider
    provider.shutdown()


@pytest.fixture
def clean_queues(rabbitmq_url: str) -> Iterator[None]:
    """Purge the test vhost's queues before and after a test."""
    _purge_all(rabbitmq_url)
    yield
    _purge_all(rabbitmq_url)


@pytest.fixture
def vhost_url(rabbitmq_url: str) -> Iterator[str]:
    """amqp URL of a virtual host of the test's own (the session's holds its queues with
    the default arguments), deleted afterwards."""
    vhost = f"greenroom-test-{uuid.uuid4().hex[:8]}-own"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"{rabbitmq_url.rsplit('/', 1)[0]}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def empty_ladder(rabbitmq_url: str) -> Iterator[None]:
    """Purge the delay ladder after the test: what a failed test left there would reach later tests."""
    yield
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        for name in LADDER_QUEUES:
            if not _purge(connection, name):
                break
    finally:
        connection.close()


def _purge_all(rabbitmq_url: str) -> None:
    """Purge the built-in queues and the delay ladder (which holds every queue's delayed
    messages; declared whole or not at all)."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        for queue in ("default", "reports"):
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                _purge(connection, name)
        for name in LADDER_QUEUES:
            if not _purge(connection, name):
                break
    finally:
        connection.close()


def _purge(connection: pika.BlockingConnection, queue: str) -> bool:
    """Purge ``queue``; False if it does not exist (yet)."""
    channel = connection.channel()
    try:
        channel.queue_purge(queue)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    channel.close()
    return True


@pytest.fixture
def service_env(
    rabbitmq_url: str, redis_url: str, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> dict[str, str]:
    """Environment for greenroom subprocesses: the test services, nothing from the caller's config."""
    return greenroom_env(rabbitmq_url, redis_url, otlp_receiver, tmp_path / "metrics")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory without a .env file, for subprocesses."""
    return tmp_path


@pytest.fixture
def settings(rabbitmq_url: str, redis_url: str) -> Settings:
    return load_settings(_env_file=None, RABBITMQ_URL=rabbitmq_url, REDIS_URL=redis_url)


@pytest.fixture
def producer(settings: Settings, clean_queues: None, tracer_provider: TracerProvider) -> Iterator[Producer]:
    producer = Producer(settings, tracer_provider=tracer_provider)
    yield producer
    producer.close()
