"""Producer against real RabbitMQ and Redis: validation before publishing, results, timeouts."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from pathlib import Path

import dramatiq
import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.errors import (
    InvalidTaskArguments,
    PublishError,
    ResultTimeout,
    ResultUnavailable,
    TaskFailed,
    UnknownTask,
)
from shared.producer import Producer
from shared.settings import load_settings
from tests.support import run_cli


def _ready(producer: Producer, queue: str = "default") -> int:
    ready, _delayed, _dead = producer.broker.get_queue_message_counts(queue)
    return int(ready)


def test_send_publishes_one_confirmed_message(producer: Producer) -> None:
    assert producer.broker.confirm_delivery is True
    handle = producer.send("echo", payload={"x": 1})
    uuid.UUID(handle.message_id)
    assert _ready(producer) == 1


def test_invalid_arguments_raise_and_publish_nothing(producer: Producer) -> None:
    producer.send("echo", payload="already queued")
    with pytest.raises(InvalidTaskArguments, match="delay_ms: Input should be greater than or equal to 0"):
        producer.send("echo", payload=1, delay_ms=-1)
    with pytest.raises(InvalidTaskArguments, match="payload: Field required"):
        producer.send("echo")
    assert _ready(producer) == 1


def test_unknown_task_raises_and_publishes_nothing(producer: Producer) -> None:
    with pytest.raises(UnknownTask, match="unknown task 'echoo'"):
        producer.send("echoo", payload=1)
    assert _ready(producer) == 0


def test_send_many_validates_every_item_before_publishing_any(producer: Producer) -> None:
    batch = [{"payload": 1}, {"payload": 2, "delay_ms": "soon"}, {"payload": 3}]
    with pytest.raises(InvalidTaskArguments, match="delay_ms"):
        producer.send_many("echo", batch)
    assert _ready(producer) == 0


def test_send_many_returns_handles_in_order(producer: Producer) -> None:
    handles = producer.send_many("echo", [{"payload": i} for i in range(20)])
    assert len({h.message_id for h in handles}) == 20
    assert _ready(producer) == 20


def test_sub_second_result_timeout_is_respected(producer: Producer) -> None:
    handle = producer.send("echo", payload=1)  # no worker runs: the result never comes
    started = time.monotonic()
    with pytest.raises(ResultTimeout, match=r"within 0\.3s"):
        handle.result(timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 1.0


def test_result_of_reads_a_stored_result_and_a_stored_failure(producer: Producer) -> None:
    # Given: results stored the way a worker stores them
    ok = dramatiq.Message(queue_name="default", actor_name="echo", args=(), kwargs={}, options={})
    bad = dramatiq.Message(queue_name="default", actor_name="echo", args=(), kwargs={}, options={})
    producer.backend.store_result(ok, {"x": 1}, 60_000)
    producer.backend.store_exception(bad, RuntimeError("upstream down"), 60_000)

    # Then
    assert producer.result_of("echo", ok.message_id, timeout=1) == {"x": 1}
    assert producer.result_of("echo", ok.message_id, timeout=1) == {"x": 1}  # reading does not consume it
    with pytest.raises(TaskFailed, match="RuntimeError: upstream down"):
        producer.result_of("echo", bad.message_id, timeout=1)


def test_cli_send_prints_the_message_id(
    producer: Producer, service_env: dict[str, str], workdir: Path
) -> None:
    completed = run_cli(["send", "echo", "--kwargs", '{"payload": {"a": 1}}'], service_env, workdir)
    assert completed.returncode == 0, completed.stderr
    uuid.UUID(completed.stdout.strip())
    assert _ready(producer) == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["send", "echo", "--kwargs", '{"payload": 1, "delay_ms": -1}'], "invalid arguments for task 'echo'"),
        (["send", "nope", "--kwargs", "{}"], "unknown task 'nope'"),
    ],
)
def test_cli_send_rejects_bad_input_with_exit_2(
    producer: Producer, service_env: dict[str, str], workdir: Path, args: list[str], error: str
) -> None:
    completed = run_cli(args, service_env, workdir)
    assert completed.returncode == 2
    assert completed.stderr.startswith(f"greenroom: error: {error}")
    assert len(completed.stderr.splitlines()) == 1
    assert _ready(producer) == 0


def test_check_reports_each_service(service_env: dict[str, str], workdir: Path) -> None:
    completed = run_cli(["check"], service_env, workdir)
    assert completed.returncode == 0, completed.stdout
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("rabbitmq ok amqp://guest:***@")
    assert lines[1].startswith("redis ok redis://")


def test_check_fails_when_a_service_is_unreachable(service_env: dict[str, str], workdir: Path) -> None:
    env = {**service_env, "REDIS_URL": "redis://127.0.0.1:1/0"}  # nothing listens on port 1
    completed = run_cli(["check"], env, workdir)
    assert completed.returncode == 1
    assert "redis FAILED redis://127.0.0.1:1/0" in completed.stdout


def test_demo_producer_sends_a_steady_mix_and_stops_by_itself(
    producer: Producer, service_env: dict[str, str], workdir: Path
) -> None:
    completed = run_cli(["demo-producer", "--rate", "40", "--duration", "1.5"], service_env, workdir)
    assert completed.returncode == 0, completed.stderr
    queued = sum(_ready(producer, queue) for queue in ("default", "reports"))
    assert 30 <= queued <= 70
    assert _ready(producer, "default") > _ready(producer, "reports")  # echo dominates the mix


@pytest.mark.parametrize(
    ("redis_host_part", "reason"),
    [
        ("bob:wrong-secret@{host}", "REDIS_URL (redis://bob:***@{host}/14): Redis refused the login"),
        ("127.0.0.1:1", "ConnectionError: Error 111 connecting to 127.0.0.1:1"),
    ],
)
def test_a_result_redis_cannot_give_raises_result_unavailable(
    rabbitmq_url: str,
    redis_url: str,
    clean_queues: None,
    tracer_provider: TracerProvider,
    redis_host_part: str,
    reason: str,
) -> None:
    host = redis_url.removeprefix("redis://").split("/", 1)[0]
    url = f"redis://{redis_host_part.format(host=host)}/14"
    settings = load_settings(_env_file=None, RABBITMQ_URL=rabbitmq_url, REDIS_URL=url)
    producer = Producer(settings, tracer_provider=tracer_provider)
    try:
        handle = producer.send("echo", payload=1)  # RabbitMQ takes it; only the result is out of reach
        with pytest.raises(ResultUnavailable, match=re.escape(reason.format(host=host))) as raised:
            handle.result(timeout=1)
    finally:
        producer.close()
    assert "wrong-secret" not in str(raised.value)


def test_a_rabbitmq_that_accepts_and_never_answers_is_a_publish_error(redis_url: str) -> None:
    # Given a server that accepts connections and never says a word (a silent network path)
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True)
    accepting.start()
    port = listener.getsockname()[1]
    settings = load_settings(
        _env_file=None,
        RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{port}/%2F?stack_timeout=0.5&socket_timeout=0.5",
        REDIS_URL=redis_url,
        SEND_RETRY_TIMEOUT_SECONDS=1.0,
    )
    producer = Producer(settings, tracer_provider=TracerProvider())
    try:
        # When a task is sent there, Then the AMQP handshake's timeout is retried and ends as
        # PublishError (pika raises it as AMQPConnectorException, not one of its AMQPErrors)
        with pytest.raises(PublishError, match=r"within 1s: AMQPConnectorStackTimeout"):
            producer.send("echo", payload=1)
    finally:
        producer.close()
        listener.close()
        for connection in held:
            connection.close()
