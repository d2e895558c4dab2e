"""A contract's retry_on, time_limit, max_age and result_ttl, on a real worker."""

from __future__ import annotations

import time
import uuid

import redis

from shared.producer import Producer
from shared.results import RESULTS_NAMESPACE
from tests.e2e import policy_support
from tests.e2e.policy_support import StartPolicyWorker
from tests.e2e.policy_tasks import BRIEF, FLAKY, FRESH, NOTES, SLOW
from tests.support import wait_for

#: The fixtures of tests.e2e.policy_support, used here.
start_policy_worker = policy_support.start_policy_worker
notes = policy_support.notes


def test_retry_on_retries_the_listed_exception_and_dead_letters_another_at_once(
    start_policy_worker: StartPolicyWorker, producer: Producer, notes: redis.Redis[str]
) -> None:
    worker = start_policy_worker(processes=1, threads=2)
    run = uuid.uuid4().hex

    # When: one task raises ConnectionError (listed in retry_on), another ValueError (not listed)
    producer.send(FLAKY.name, run=run, error="connection")
    producer.send(FLAKY.name, run=run, error="value")
    wait_for(
        lambda: len([e for e in worker.events_of(FLAKY.name) if e["event"] == "failed"]) >= 2,
        20,
        "2 failures",
    )

    # Then: ConnectionError ran 1 + max_retries (2) times; ValueError once, dead-lettered at once
    assert notes.get(f"{NOTES}:{run}:connection") == "3"
    assert notes.get(f"{NOTES}:{run}:value") == "1"
    events = worker.events_of(FLAKY.name)
    failed = {event["error"].split(":")[0]: event for event in events if event["event"] == "failed"}
    assert failed["ConnectionError"]["reason"] == "retries exhausted"
    assert failed["ValueError"]["reason"] == "not in retry_on (ConnectionError, Retry)"
    assert sum(event["event"] == "retrying" for event in events) == 2
    wait_for(lambda: worker.outcome_count(FLAKY.name, "failure") == 2, 5, "2 failures counted")


def test_a_contract_time_limit_stops_the_task(
    start_policy_worker: StartPolicyWorker, producer: Producer, notes: redis.Redis[str]
) -> None:
    worker = start_policy_worker(processes=1, threads=2)

    producer.send(SLOW.name, run="slow", item=0, seconds=10)

    [event] = [e for e in worker.wait_for_task_events(1, timeout=15) if e["actor"] == SLOW.name]
    assert event["event"] == "failed"
    assert event["error"].startswith("TimeLimitExceeded")
    assert event["duration_seconds"] < 5  # the contract's 1 s, not TASK_TIME_LIMIT_SECONDS' 300 s


def test_a_message_older_than_max_age_is_skipped_logged_and_counted(
    start_policy_worker: StartPolicyWorker, producer: Producer, notes: redis.Redis[str]
) -> None:
    # Given: a message sent before any worker runs, older than its 1 s max_age once one does
    stale = producer.send(FRESH.name, run="fresh", item=1)
    time.sleep(1.2)
    worker = start_policy_worker(processes=1, threads=2)

    # When: a fresh one follows
    fresh = producer.send(FRESH.name, run="fresh", item=2)

    # Then: the fresh one ran, the stale one was skipped with a line saying why, and counted
    assert fresh.result(timeout=10) == 2
    events = {event["message_id"]: event for event in worker.wait_for_task_events(2)}
    assert events[fresh.message_id]["event"] == "succeeded"
    skipped = events[stale.message_id]
    assert skipped["event"] == "skipped"
    assert skipped["reason"] == "older than its max_age (1 s); dead-lettered"
    assert skipped["age_seconds"] >= 1
    wait_for(lambda: worker.outcome_count(FRESH.name, "skipped") == 1, 5, "the skip counted")
    assert worker.outcome_count(FRESH.name, "failure") == 0


def test_a_contract_result_ttl_is_the_result_lifetime(
    start_policy_worker: StartPolicyWorker, producer: Producer, notes: redis.Redis[str]
) -> None:
    start_policy_worker(processes=1, threads=2)

    handle = producer.send(BRIEF.name, run="brief", item=7)

    assert handle.result(timeout=10) == 7
    [key] = notes.keys(f"{RESULTS_NAMESPACE}:*{handle.message_id}*")
    assert 0 < notes.pttl(key) <= 5000  # the contract's 5 s, not RESULT_TTL_SECONDS' 3600 s
