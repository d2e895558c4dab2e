"""Delays that last, with real workers: delayed and retrying messages wait on RabbitMQ's delay ladder,
never unacknowledged in a worker, and run once, no earlier than due and soon after.

Run with ``-s`` to see the lateness figures.
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import dramatiq
import pika
import pika.exceptions
import pytest

from shared import delays
from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import Worker, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("empty_ladder")]

#: What a channel that RabbitMQ closed for an unacknowledged delivery leaves in a worker's output.
CHANNEL_CLOSED = ("PRECONDITION_FAILED", "timed out", "ChannelClosed", "Restarting consumer")
#: What RabbitMQ says when it closes a channel for a delivery unacknowledged past consumer_timeout.
TIMED_OUT = "delivery acknowledgement on channel"


def _echo(payload: Any, **options: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name="default", actor_name="echo", args=(), kwargs={"payload": payload}, options=options
    )


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


def _vhost(rabbitmq_url: str) -> str:
    return rabbitmq_url.rsplit("/", 1)[1]


def _queues(rabbitmq_url: str) -> dict[str, tuple[int, int]]:
    """name -> (ready, unacknowledged) for every queue of the vhost."""
    rows = _rabbitmqctl(
        "list_queues", "-p", _vhost(rabbitmq_url), "name", "messages_ready", "messages_unacknowledged"
    )
    counts = {}
    for row in rows.splitlines():
        name, ready, unacked = row.split("\t")
        if ready.isdigit():
            counts[name] = (int(ready), int(unacked))
    return counts


def _on_ladder(counts: dict[str, tuple[int, int]]) -> int:
    return sum(counts.get(name, (0, 0))[0] for name in delays.LADDER_QUEUES)


def _unacked(counts: dict[str, tuple[int, int]]) -> dict[str, int]:
    return {name: unacked for name, (_, unacked) in counts.items() if unacked}


def _started_at(event: dict[str, Any]) -> float:
    """When a task line's task started (epoch ms): the line is written when it ends."""
    ended = datetime.fromisoformat(event["timestamp"]).timestamp()
    return (ended - float(event["duration_seconds"])) * 1000


def _task_events(*workers: Worker, count: int, timeout: float) -> list[dict[str, Any]]:
    needle = '"logger": "greenroom.task"'
    wait_for(lambda: sum(w.count(needle) for w in workers) >= count, timeout, f"{count} task lines", 0.2)
    return [json.loads(line) for w in workers for line in w.snapshot() if needle in line]


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98], max(values)


def test_delayed_tasks_wait_on_the_ladder_and_run_when_due(
    start_worker: StartWorker, producer: Producer, rabbitmq_url: str
) -> None:
    worker = start_worker(processes=1, threads=4)

    # Given a task delayed 2 s
    probe = producer.broker.enqueue(_echo("probe"), delay=2000)

    # Then it waits on the ladder: not in its queue, not held unacknowledged by the worker
    counts = _queues(rabbitmq_url)
    assert _on_ladder(counts) == 1
    assert counts["default"] == (0, 0) and counts["default.DQ"] == (0, 0)
    assert _unacked(counts) == {}

    # Given one more published straight to its queue ahead of its due time (a producer's clock ahead)
    early = _echo("early", **{delays.DUE_AT_OPTION: int(time.time() * 1000) + 4000})
    # And two with Dramatiq's own eta (plain Dramatiq's producer, an older version's .DQ),
    # which Dramatiq's worker would hold unacknowledged in memory until due
    eta = int(time.time() * 1000) + 5000
    dramatiq_eta = _echo("dramatiq eta", eta=eta)
    legacy = _echo("legacy .DQ", eta=eta).copy(queue_name="default.DQ")
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    for queue, message in (("default", early), ("default", dramatiq_eta), ("default.DQ", legacy)):
        connection.channel().basic_publish("", queue, message.encode(), pika.BasicProperties(delivery_mode=2))
    connection.close()
    wait_for(lambda: _on_ladder(_queues(rabbitmq_url)) >= 3, 5, "the early ones back on the ladder")
    assert _unacked(_queues(rabbitmq_url)) == {}

    # And 200 tasks delayed 1 s, sent over 2 s
    sent = {
        probe.message_id: probe.options[delays.DUE_AT_OPTION],
        early.message_id: early.options[delays.DUE_AT_OPTION],
        dramatiq_eta.message_id: eta,
        legacy.message_id: eta,
    }
    for n in range(200):
        message = producer.broker.enqueue(_echo(n), delay=1000)
        sent[message.message_id] = message.options[delays.DUE_AT_OPTION]
        time.sleep(0.01)

    # Then every one runs once, none before its due time, and soon after
    events = _task_events(worker, count=len(sent), timeout=30)
    assert sorted(e["message_id"] for e in events) == sorted(sent)
    lateness = [_started_at(e) - sent[e["message_id"]] for e in events]
    assert min(lateness) >= 0, "a task ran before it was due"
    p50, p99, worst = _quantiles(lateness)
    print(
        f"\nlateness of {len(lateness)} tasks delayed 1-2 s: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms"
    )
    assert worst < 10_000  # generous: a loaded machine, not a timing benchmark
    assert _on_ladder(_queues(rabbitmq_url)) == 0


def test_retries_back_off_on_the_ladder(
    start_worker: StartWorker, producer: Producer, rabbitmq_url: str
) -> None:
    # Given a worker of a task that fails twice (a flaky upstream), then succeeds
    worker = start_worker(processes=1, threads=2, queues=["reports"])
    handle = producer.send("reports.sync_inventory", source="erp", fail_first=2)

    # Then, between attempts, the message waits on the ladder
    seen_on_ladder = 0
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    deadline = time.monotonic() + 30
    while worker.count('"event": "succeeded"') == 0 and time.monotonic() < deadline:
        # bottom level first: a message moving down the ladder is never counted twice
        bottom_up = reversed(delays.LADDER_QUEUES)
        counts = [channel.queue_declare(q, passive=True).method.message_count for q in bottom_up]
        seen_on_ladder = max(seen_on_ladder, sum(counts))
    connection.close()
    assert handle.result(timeout=10) == {"source": "erp", "attempts": 3, "status": "synced"}
    assert seen_on_ladder == 1

    # And each retry ran no earlier than its backoff after the failure before it
    events = sorted(_task_events(worker, count=3, timeout=10), key=_started_at)
    assert [e["event"] for e in events] == ["retrying", "retrying", "succeeded"]
    ends = [datetime.fromisoformat(e["timestamp"]).timestamp() * 1000 for e in events]
    # the contract's min backoff is 0.2 s, which Dramatiq's jitter may halve
    assert all(_started_at(after) >= end + 100 for after, end in zip(events[1:], ends, strict=False))


@contextlib.contextmanager
def _rabbit_env(name: str, value: int) -> Iterator[None]:
    """Set the ``rabbit`` application's ``name`` on the machine's RabbitMQ for the block, then set
    back what it was (unset if it was undefined), whatever happens in the block."""
    before = _rabbitmqctl("eval", f"application:get_env(rabbit, {name}).")
    try:
        _rabbitmqctl("eval", f"application:set_env(rabbit, {name}, {value}).")
        yield
    finally:
        if before.startswith("{ok,"):
            _rabbitmqctl("eval", f"application:set_env(rabbit, {name}, {before[4:-1]}).")
        else:
            _rabbitmqctl("eval", f"application:unset_env(rabbit, {name}).")


def _connections(rabbitmq_url: str) -> int:
    vhost = _vhost(rabbitmq_url)
    return sum(
        line.split("\t")[0] == vhost for line in _rabbitmqctl("list_connections", "vhost").splitlines()
    )


def test_a_delay_longer_than_consumer_timeout_is_delivered_once_without_closing_a_channel(
    start_worker: StartWorker, producer: Producer, rabbitmq_url: str
) -> None:
    # RabbitMQ 3.10 reads consumer_timeout when a channel opens and checks it every
    # channel_tick_interval ms (60 s by default; read each time the check is re-armed). So the
    # timeout is lowered only while the worker opens its channels, the check interval for the test.
    with _rabbit_env("channel_tick_interval", 200):
        with _rabbit_env("consumer_timeout", 1000):
            worker = start_worker(processes=1, threads=2)

        # Given a task delayed three times the worker channels' consumer_timeout
        delayed = producer.broker.enqueue(_echo("after the timeout"), delay=3000)
        connections = _connections(rabbitmq_url)  # the worker's and the producer's

        # Then it runs once, on time, and no channel was closed, no connection replaced
        [event] = _task_events(worker, count=1, timeout=15)
        assert event["message_id"] == delayed.message_id
        assert _started_at(event) >= delayed.options[delays.DUE_AT_OPTION]
        time.sleep(0.5)  # a few more checks of the timeout
        output = worker.output()
        assert not [needle for needle in CHANNEL_CLOSED if needle in output], output
        assert _connections(rabbitmq_url) == connections

        # While a task that holds its message unacknowledged longer does get its channel closed
        # (the lowered timeout was live)
        producer.send("echo", payload="slow", delay_ms=2500)
        wait_for(lambda: TIMED_OUT in worker.output(), 10, "RabbitMQ to close the channel")


def test_restarting_workers_while_10000_messages_wait_loses_none_and_runs_none_early(
    start_worker: StartWorker, producer: Producer, rabbitmq_url: str
) -> None:
    # Given 10,000 tasks delayed 15 s and a worker
    first = start_worker(processes=2, threads=4)
    due_at = int(time.time() * 1000) + 15_000
    messages = [_echo(n, **{delays.DUE_AT_OPTION: due_at}) for n in range(10_000)]
    producer.publish_confirmed(messages, "10,000 delayed tasks")

    # When the worker is restarted while they wait
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    second = start_worker(processes=2, threads=4)

    # Then they wait on the ladder, none held unacknowledged by a worker
    counts = _queues(rabbitmq_url)
    assert time.time() * 1000 < due_at, "the restart took longer than the delay"
    assert _on_ladder(counts) > 5_000  # listed a queue at a time, some move between levels meanwhile
    assert counts["default"] == (0, 0) and counts["default.DQ"] == (0, 0)
    assert _unacked(counts) == {}

    # And every one runs once, none early
    events = _task_events(first, second, count=10_000, timeout=120)
    assert len(events) == 10_000
    assert {e["message_id"] for e in events} == {m.message_id for m in messages}
    assert {e["event"] for e in events} == {"succeeded"}
    lateness = [_started_at(e) - due_at for e in events]
    assert min(lateness) >= 0, "a task ran before it was due"
    p50, p99, worst = _quantiles(lateness)
    print(
        f"\n10,000 tasks due at once, after a restart: "
        f"lateness p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {worst:.0f} ms"
    )
