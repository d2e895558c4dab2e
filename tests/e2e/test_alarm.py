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
