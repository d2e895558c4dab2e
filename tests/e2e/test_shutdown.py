"""Graceful shutdown: SIGTERM finishes running tasks, returns the rest to RabbitMQ, exits 0."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dramatiq
import pika

from shared.delays import LADDER_QUEUES
from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import http_get, wait_for

SHUTDOWN_TIMEOUT = 10.0  # WORKER_SHUTDOWN_TIMEOUT_SECONDS in the test environment


def _succeeded(events: list[dict[str, object]]) -> list[str]:
    return [str(e["message_id"]) for e in events if e["event"] == "succeeded"]


def test_sigterm_mid_way_loses_nothing_and_reruns_nothing(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given: 200 tasks of 300 ms, 8 at a time
    first = start_worker(processes=2, threads=4)
    handles = producer.send_many("echo", [{"payload": n, "delay_ms": 300} for n in range(200)])
    wait_for(lambda: len(first.task_events()) >= 40, 30, "40 tasks to finish")

    # When: SIGTERM to the worker's master process only (as Kubernetes and Docker send it)
    stopping = time.monotonic()
    first.signal(signal.SIGTERM)
    exit_code = first.wait(timeout=SHUTDOWN_TIMEOUT + 10)
    stop_seconds = time.monotonic() - stopping

    # Then: a clean, prompt exit with work left over
    assert exit_code == 0, first.output()
    assert stop_seconds < SHUTDOWN_TIMEOUT
    done_first = _succeeded(first.task_events())
    assert 40 <= len(done_first) < 200
    assert first.json_lines()[-1]["message"] == "greenroom worker stopped"

    # When: a second worker takes over
    second = start_worker(processes=2, threads=4)

    # Then: all 200 results are present, each task ran exactly once
    results = [handle.result(timeout=60) for handle in handles]
    assert results == list(range(200))
    done_second = _succeeded(second.wait_for_task_events(200 - len(done_first)))
    assert sorted(done_first + done_second) == sorted(h.message_id for h in handles)
    assert set(done_first).isdisjoint(done_second)


def test_task_running_past_the_shutdown_timeout_is_redelivered(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given: a task longer than the shutdown timeout is running
    first = start_worker(processes=1, threads=1, env={"WORKER_SHUTDOWN_TIMEOUT_SECONDS": "1"})
    handle = producer.send("echo", payload="long", delay_ms=4000)
    wait_for(lambda: producer.broker.get_queue_message_counts("default")[0] == 0, 10, "the task to be taken")

    # When
    stopping = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0, first.output()

    # Then: the worker did not wait for the task, and the task is not lost
    assert time.monotonic() - stopping < 4
    assert first.task_events() == []
    start_worker(processes=1, threads=1)
    assert handle.result(timeout=20) == "long"


def test_shutdown_logs_the_message_ids_rabbitmq_will_redeliver(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given: one thread running a long task, a second one prefetched behind it
    worker = start_worker(processes=1, threads=1, env={"WORKER_SHUTDOWN_TIMEOUT_SECONDS": "1"})
    running = producer.send("echo", payload="running", delay_ms=4000)
    wait_for(lambda: producer.broker.get_queue_message_counts("default")[0] == 0, 10, "the task to be taken")
    waiting = producer.send("echo", payload="waiting")
    wait_for(lambda: producer.broker.get_queue_message_counts("default")[0] == 0, 10, "the prefetch")

    # When: the shutdown deadline passes with the task still running
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.output()

    # Then: one line names the abandoned task, one the unstarted one
    lines = {line["message"]: line for line in worker.json_lines() if line["logger"] == "greenroom.worker"}
    abandoned = lines[
        "1 tasks still running at the shutdown deadline are abandoned: RabbitMQ redelivers them."
    ]
    assert abandoned["message_ids"] == [running.message_id]
    returned = lines["1 prefetched messages were returned to RabbitMQ unstarted."]
    assert returned["message_ids"] == [waiting.message_id]


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def test_endpoints_answer_until_the_worker_processes_have_stopped(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given: tasks running; no helper process serves the endpoints (nothing to lose on its own)
    worker = start_worker(processes=1, threads=4)
    assert _children(worker.pid) == worker.worker_pids()
    handles = producer.send_many("echo", [{"payload": n, "delay_ms": 3000} for n in range(4)])
    wait_for(lambda: producer.broker.get_queue_message_counts("default")[0] == 0, 10, "the tasks to be taken")

    # When: SIGTERM to the whole process group, twice over (the worker process then its master)
    [child] = worker.worker_pids()
    os.kill(child, signal.SIGTERM)
    wait_for(lambda: worker.count("Stopping worker process") == 1, 10, "the worker process to start stopping")
    worker.signal(signal.SIGTERM)

    # Then: while the tasks drain, liveness holds and readiness says why it fails
    wait_for(lambda: http_get(worker.url("/readyz")) == (503, "shutting down\n"), 5, "readiness to drop")
    assert http_get(worker.url("/healthz")) == (200, "ok\n")
    assert not any(handle.message_id in line for handle in handles for line in worker.snapshot())
    assert worker.wait(timeout=20) == 0, worker.output()
    assert [h.result(timeout=1) for h in handles] == [0, 1, 2, 3]


def test_sigterm_to_the_whole_process_group_is_still_graceful(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given: tasks running (honcho and systemd signal the whole process group)
    worker = start_worker(processes=1, threads=4)
    handles = producer.send_many("echo", [{"payload": n, "delay_ms": 1500} for n in range(4)])
    wait_for(lambda: producer.broker.get_queue_message_counts("default")[0] == 0, 10, "the tasks to be taken")
    time.sleep(0.3)  # let the worker threads start them

    # When: the worker process gets SIGTERM directly, then once more from its master
    #   (what a group-wide SIGTERM amounts to; sent in two steps so the kernel
    #   cannot merge the two signals into one)
    [child] = worker.worker_pids()
    os.kill(child, signal.SIGTERM)
    wait_for(lambda: worker.count("Stopping worker process") == 1, 10, "the worker process to start stopping")
    worker.signal(signal.SIGTERM)

    # Then: the running tasks finished rather than being abandoned
    assert worker.wait(timeout=20) == 0, worker.output()
    assert worker.count("Ignoring a repeated SIGTERM") == 1
    assert len(_succeeded(worker.task_events())) == 4
    assert [h.result(timeout=1) for h in handles] == [0, 1, 2, 3]


def test_a_worker_holds_no_delayed_message_so_shutdown_returns_none(
    start_worker: StartWorker, producer: Producer, rabbitmq_url: str
) -> None:
    # Given: a message due in a minute in default.DQ, as an older version (or Dramatiq) left it;
    # Dramatiq's worker would hold it unacknowledged in memory until due
    worker = start_worker(processes=1, threads=1, queues=("default",))
    delayed = dramatiq.Message(
        queue_name="default.DQ",
        actor_name="echo",
        args=(),
        kwargs={"payload": "later"},
        options={"eta": int(time.time() * 1000) + 60_000},
    )
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().basic_publish(exchange="", routing_key="default.DQ", body=delayed.encode())
    finally:
        connection.close()

    # Then: the worker puts it on the delay ladder and holds nothing
    wait_for(lambda: _on_ladder(rabbitmq_url) == 1, 10, "it on the delay ladder")
    assert producer.broker.get_queue_message_counts("default") == (0, 0, 0)

    # When
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=SHUTDOWN_TIMEOUT + 10) == 0

    # Then: there was nothing to hand back, and the message still waits, not lost
    assert not [line for line in worker.json_lines() if line["message"].startswith("Returning")]
    assert _on_ladder(rabbitmq_url) == 1


def _on_ladder(rabbitmq_url: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        return sum(channel.queue_declare(name, passive=True).method.message_count for name in LADDER_QUEUES)
    finally:
        connection.close()
