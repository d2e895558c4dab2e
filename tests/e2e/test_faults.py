"""Faults under load, with real processes: every result present afterwards, nothing
dead-lettered, duplicate executions counted and reported (at-least-once)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.errors import TaskFailed
from shared.producer import Producer, TaskHandle
from shared.settings import Settings
from tests.e2e.conftest import StartWorker
from tests.support import Worker, free_port, stop_rabbitmq_for, wait_for

TASKS = 1000


def _duplicates(*workers: Worker) -> int:
    runs = collections.Counter(
        e["message_id"] for w in workers for e in w.task_events() if e["event"] == "succeeded"
    )
    return sum(count - 1 for count in runs.values())


def _report(
    fault: str, handles: list[TaskHandle], results: list[object], duplicates: int, dead: int, recovery: float
) -> None:
    present = sum(1 for n, value in enumerate(results) if value == n)
    print(f"\nFAULT | {fault} | sent {len(handles)} | present {present} | duplicates {duplicates} | "
          f"dead-lettered {dead} | recovered in {recovery:.1f}s")  # fmt: skip


def test_rabbitmq_restart_under_load(start_worker: StartWorker, producer: Producer) -> None:
    # Given: a worker, and a producer sending 1,000 tasks one by one (confirmed)
    worker = start_worker(processes=2, threads=4)
    handles: list[TaskHandle] = []
    refused: list[Exception] = []

    def produce() -> None:
        for n in range(TASKS):
            try:
                handles.append(producer.send("echo", payload=n, delay_ms=n % 5))
            except Exception as error:  # the assertion below reports it
                refused.append(error)

    sender = threading.Thread(target=produce)
    sender.start()
    wait_for(lambda: len(handles) >= 200, 30, "200 tasks sent")

    # When: RabbitMQ's application stops for 3 seconds in the middle of it
    stop_rabbitmq_for(3)
    restarted = time.monotonic()
    sender.join(timeout=120)

    # Then: no send refused, every result present, nothing dead-lettered
    assert refused == []
    assert len(handles) == TASKS
    results = [handle.result(timeout=60) for handle in handles]
    recovery = time.monotonic() - restarted
    assert results == list(range(TASKS))
    dead = producer.broker.get_queue_message_counts("default")[2]
    assert dead == 0
    _report("RabbitMQ stop_app 3 s", handles, results, _duplicates(worker), dead, recovery)


def test_sigkill_of_a_worker_process_mid_task(start_worker: StartWorker, producer: Producer) -> None:
    # Given: 1,000 tasks, some slow, being processed
    first = start_worker(processes=2, threads=4)
    handles = producer.send_many(
        "echo", [{"payload": n, "delay_ms": 50 if n % 10 == 0 else 0} for n in range(TASKS)]
    )
    wait_for(lambda: len(first.task_events()) >= 100, 30, "100 tasks done")

    # When: one worker process is killed outright (its master then stops the rest)
    victim = first.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    first.wait(timeout=60)
    killed = time.monotonic()
    second = start_worker(processes=2, threads=4)

    # Then: its unacknowledged messages were redelivered and completed
    results = [handle.result(timeout=60) for handle in handles]
    assert results == list(range(TASKS))
    dead = producer.broker.get_queue_message_counts("default")[2]
    assert dead == 0
    _report(
        "SIGKILL of a worker process",
        handles,
        results,
        _duplicates(first, second),
        dead,
        time.monotonic() - killed,
    )


def test_rolling_restart_of_three_workers(start_worker: StartWorker, producer: Producer) -> None:
    # Given: three worker processes (one per `greenroom worker`) and 1,000 tasks
    workers = [start_worker(processes=1, threads=4) for _ in range(3)]
    handles = producer.send_many("echo", [{"payload": n, "delay_ms": 20} for n in range(TASKS)])
    started = time.monotonic()

    # When: each one in turn gets SIGTERM and is replaced, while the tasks run
    retired: list[Worker] = []
    for index in range(3):
        target = 150 * (index + 1)
        wait_for(
            lambda target=target: sum(len(w.task_events()) for w in workers + retired) >= target,
            60,
            "progress",
        )
        old = workers[index]
        old.signal(signal.SIGTERM)
        assert old.wait(timeout=30) == 0, old.output()
        retired.append(old)
        workers[index] = start_worker(processes=1, threads=4)

    # Then
    results = [handle.result(timeout=60) for handle in handles]
    assert results == list(range(TASKS))
    dead = producer.broker.get_queue_message_counts("default")[2]
    assert dead == 0
    duplicates = _duplicates(*workers, *retired)
    assert duplicates == 0  # graceful stops finish or return every message: nothing runs twice
    _report("rolling SIGTERM restart x3", handles, results, duplicates, dead, time.monotonic() - started)


def test_task_past_its_time_limit_is_interrupted_and_reported(
    start_worker: StartWorker, producer: Producer
) -> None:
    worker = start_worker(
        processes=1, threads=2, env={"TASK_TIME_LIMIT_SECONDS": "1", "TASK_MAX_RETRIES": "0"}
    )
    slow = producer.send("echo", payload="slow", delay_ms=2500)
    quick = producer.send("echo", payload="quick")

    assert quick.result(timeout=10) == "quick"
    with pytest.raises(TaskFailed) as failure:
        slow.result(timeout=15)
    assert failure.value.error_type == "TimeLimitExceeded"
    [event] = [e for e in worker.wait_for_task_events(2) if e["message_id"] == slow.message_id]
    assert event["event"] == "failed"
    assert producer.broker.get_queue_message_counts("default")[2] == 1


class PrivateRedis:
    """A redis-server of the test's own on a free port: stopping it leaves the machine's Redis alone."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory

    def start(self) -> None:
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        options += [
            "--dir",
            str(self.directory),
            "--daemonize",
            "yes",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        subprocess.run(["redis-server", *options], check=True, capture_output=True, timeout=30)
        wait_for(self.answers, 10, "the private Redis")

    def stop(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True, timeout=30
        )
        wait_for(lambda: not self.answers(), 10, "the private Redis to stop")

    def answers(self) -> bool:
        completed = subprocess.run(
            ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
        )
        return completed.stdout.strip() == "PONG"


def test_redis_outage_delays_results_but_loses_none(
    start_worker: StartWorker, settings: Settings, tmp_path: Path, clean_queues: None
) -> None:
    # Given: a worker and a producer on a Redis that is about to go away
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        worker = start_worker(processes=1, threads=4, env={"REDIS_URL": url})
        producer = Producer(settings.model_copy(update={"REDIS_URL": SecretStr(url)}))

        # When: tasks run while Redis is down for 3 seconds
        redis.stop()
        handles = producer.send_many("echo", [{"payload": n, "delay_ms": n % 3} for n in range(TASKS)])
        wait_for(lambda: worker.count("Redis unavailable, retrying") >= 1, 15, "a retried result store")
        time.sleep(3)
        redis.start()
        restarted = time.monotonic()

        # Then: every result arrives, the worker never stopped
        results = [handle.result(timeout=60) for handle in handles]
        assert results == list(range(TASKS))
        assert worker.popen.poll() is None
        assert worker.count("not stored") == 0
        _report("Redis down 3 s", handles, results, _duplicates(worker), 0, time.monotonic() - restarted)
        producer.close()
    finally:
        redis.stop()
