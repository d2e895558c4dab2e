"""Priorities with real RabbitMQ, Redis and workers: high-priority messages overtake a backlog; a
queue kept with other priorities than QUEUE_MAX_PRIORITIES gives it is refused with one line by
``greenroom worker``, ``greenroom check`` and ``greenroom send``.

Each test has a virtual host of its own: the session's holds ``default`` without priorities.
"""

from __future__ import annotations

from pathlib import Path

import pika
import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.producer import Producer
from shared.queue_arguments import queue_arguments
from shared.settings import load_settings
from tests.e2e.conftest import StartWorker
from tests.support import run_cli

#: Echo tasks queued before the urgent ones, and how long each runs.
BACKLOG, BACKLOG_TASK_MS = 40, 50
URGENT = 3


def test_high_priority_messages_overtake_a_backlog(
    start_worker: StartWorker, vhost_url: str, redis_url: str, tracer_provider: TracerProvider
) -> None:
    # Given: priorities on `default`, a worker running one task at a time (prefetching 2)
    priorities = {"RABBITMQ_URL": vhost_url, "QUEUE_MAX_PRIORITIES": "default=9"}
    settings = load_settings(_env_file=None, REDIS_URL=redis_url, **priorities)
    producer = Producer(settings, tracer_provider=tracer_provider)
    try:
        worker = start_worker(env=priorities, processes=1, threads=1, queues=["default"])

        # When: a backlog at the default priority, then a few urgent tasks
        backlog = producer.send_many(
            "echo", [{"payload": n, "delay_ms": BACKLOG_TASK_MS} for n in range(BACKLOG)]
        )
        urgent = producer.send_many("echo", [{"payload": f"urgent-{n}"} for n in range(URGENT)], priority=9)

        # Then: every task runs, and each urgent one before most of the backlog
        assert [handle.result(timeout=30) for handle in urgent] == [f"urgent-{n}" for n in range(URGENT)]
        assert [handle.result(timeout=60) for handle in backlog] == list(range(BACKLOG))
    finally:
        producer.close()
    order = [
        e["message_id"] for e in worker.wait_for_task_events(BACKLOG + URGENT) if e["event"] == "succeeded"
    ]
    backlog_ids = {handle.message_id for handle in backlog}
    overtaken = [sum(m in backlog_ids for m in order[: order.index(h.message_id)]) for h in urgent]
    assert max(overtaken) <= BACKLOG // 4, f"backlog tasks run before each urgent one: {overtaken}"


def _declare_default(url: str, max_priority: int | None) -> None:
    """Declare `default` and its .DQ as a greenroom with that maximum priority would."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for name in ("default", "default.DQ"):
            connection.channel().queue_declare(
                name, durable=True, arguments=queue_arguments("default", max_priority)
            )
    finally:
        connection.close()


def _messages_on_default(url: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare("default", passive=True).method.message_count)
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("declared_with", "setting", "expected"),
    [
        (
            None,
            "default=9",
            "QUEUE_MAX_PRIORITIES gives queue 'default' x-max-priority 9 (default=9), but RabbitMQ keeps it "
            "without priorities and cannot change that: remove default=9 from it; or, to change it,",
        ),
        (
            5,
            "default=9",
            "QUEUE_MAX_PRIORITIES gives queue 'default' x-max-priority 9 (default=9), but RabbitMQ keeps it "
            "with x-max-priority 5 and cannot change that: set default=5 in it again; or, to change it,",
        ),
        (
            5,
            "",
            "QUEUE_MAX_PRIORITIES gives queue 'default' no priorities, but RabbitMQ keeps it "
            "with x-max-priority 5 and cannot change that: set default=5 in it again; or, to change it,",
        ),
    ],
    ids=["added", "changed", "removed"],
)
def test_a_queue_kept_with_other_priorities_is_refused_with_one_line(
    service_env: dict[str, str],
    workdir: Path,
    vhost_url: str,
    declared_with: int | None,
    setting: str,
    expected: str,
) -> None:
    # Given: `default` exists with other priorities than the setting gives it
    _declare_default(vhost_url, declared_with)
    env = {**service_env, "RABBITMQ_URL": vhost_url, "QUEUE_MAX_PRIORITIES": setting}

    # When / Then: the worker does not start, check and send say why; nothing is published
    worker = run_cli(["worker", "--processes", "1", "--threads", "1"], env, workdir)
    assert worker.returncode == 2, worker
    [line] = worker.stderr.splitlines()
    assert line.startswith(f"greenroom: error: {expected}"), line
    assert f"rabbitmqctl delete_queue -p {vhost_url.rsplit('/', 1)[1]} " in line

    check = run_cli(["check"], env, workdir)
    assert check.returncode == 2, check
    assert f"rabbitmq REFUSED {expected}" in check.stdout.splitlines()[0]

    send = run_cli(["send", "echo", "--kwargs", '{"payload": 1}'], env, workdir)
    assert send.returncode == 2, send
    [line] = send.stderr.splitlines()
    assert line.startswith("greenroom: error: could not publish message ") and expected in line, line
    assert _messages_on_default(vhost_url) == 0


def test_the_matching_setting_starts_and_sends_with_a_priority(
    start_worker: StartWorker, service_env: dict[str, str], workdir: Path, vhost_url: str
) -> None:
    # Given: `default` already declared with the setting's priorities
    _declare_default(vhost_url, 9)
    env = {"RABBITMQ_URL": vhost_url, "QUEUE_MAX_PRIORITIES": "default=9"}
    start_worker(env=env, processes=1, threads=1, queues=["default"])

    # When
    sent = run_cli(
        ["send", "echo", "--kwargs", '{"payload": 3}', "--priority", "9", "--wait"],
        {**service_env, **env},
        workdir,
    )
    over = run_cli(
        ["send", "echo", "--kwargs", '{"payload": 3}', "--priority", "10"], {**service_env, **env}, workdir
    )

    # Then
    assert (sent.returncode, sent.stdout, sent.stderr) == (0, "3\n", "")
    assert over.returncode == 2
    assert over.stderr == (
        "greenroom: error: priority: queue 'default' of task 'echo' takes priorities 0 to 9 "
        "(QUEUE_MAX_PRIORITIES), got 10\n"
    )
