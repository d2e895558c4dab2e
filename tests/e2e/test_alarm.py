"""A RabbitMQ resource alarm under load, with real processes: publishing pauses and resumes,
every result present afterwards, nothing dead-lettered (the fault table's alarm row)."""

from __future__ import annotations

import collections
import threading
import time

from shared.producer import Producer, TaskHandle
from tests.e2e.conftest import StartWorker
from tests.support import rabbitmq_disk_alarm, wait_for

TASKS = 1000
ALARM_SECONDS = 3.0


def test_a_disk_alarm_shorter_than_the_send_timeout_under_load(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given: a worker, and a producer sending 1,000 tasks one by one (confirmed)
    worker = start_worker(processes=2, threads=4)
    handles: list[TaskHandle] = []
    refused: list[Exception] = []

    def produce() -> None:
        for n in range(TASKS):
            try:
                handles.append(producer.send("echo", payload=n))
            except Exception as error:  # the assertion below reports it
                refused.append(error)

    sender = threading.Thread(target=produce)
    sender.start()
    wait_for(lambda: len(handles) >= 200, 30, "200 tasks sent")

    # When: RabbitMQ blocks publishers for a few seconds (less than SEND_RETRY_TIMEOUT_SECONDS)
    with rabbitmq_disk_alarm():
        sent_at_alarm = len(handles)
        time.sleep(ALARM_SECONDS)  # the fault lasts this long; nothing is awaited
        sent_in_alarm = len(handles) - sent_at_alarm
    cleared = time.monotonic()
    sender.join(timeout=120)

    # Then: the sends waited (none refused), every result present, nothing dead-lettered
    assert refused == []
    assert len(handles) == TASKS
    assert sent_in_alarm <= 1  # at most one confirmed as the alarm was raised
    results = [handle.result(timeout=60) for handle in handles]
    recovery = time.monotonic() - cleared
    assert results == list(range(TASKS))
    dead = producer.broker.get_queue_message_counts("default")[2]
    assert dead == 0
    runs = collections.Counter(e["message_id"] for e in worker.task_events() if e["event"] == "succeeded")
    duplicates = sum(count - 1 for count in runs.values())
    print(f"\nFAULT | RabbitMQ disk alarm {ALARM_SECONDS:g} s | sent {len(handles)} | "
          f"present {len(results)} | duplicates {duplicates} | dead-lettered {dead} | "
          f"recovered in {recovery:.1f}s")  # fmt: skip


def test_a_retry_that_cannot_be_enqueued_during_an_alarm_is_dead_lettered_not_lost(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given: a task that fails once, waiting for a worker whose enqueues give up after 1 s
    handle = producer.send("reports.sync_inventory", source="erp", fail_first=1)

    # When: it fails while RabbitMQ blocks publishers, so its retry cannot be enqueued
    with rabbitmq_disk_alarm():
        worker = start_worker(
            processes=1, threads=1, queues=("reports",), env={"SEND_RETRY_TIMEOUT_SECONDS": "1"}
        )
        [event] = worker.wait_for_task_events(1, timeout=20)

    # Then: the message is a dead letter (replayable), and the line says why
    assert event["event"] == "failed" and event["message_id"] == handle.message_id
    wait_for(lambda: producer.broker.get_queue_message_counts("reports")[2] == 1, 10, "the dead letter")
    [line] = [line for line in worker.json_lines() if line.get("logger") == "greenroom.retries"]
    assert handle.message_id in line["message"] and "dead-lettered instead" in line["message"]
