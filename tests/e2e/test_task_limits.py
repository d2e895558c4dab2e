"""concurrency_limit and rate_limit hold across two worker processes; throttled tasks all run once."""

from __future__ import annotations

import uuid

import redis

from shared.producer import Producer
from tests.e2e import policy_support
from tests.e2e.policy_support import StartPolicyWorker
from tests.e2e.policy_tasks import CONCURRENCY_LIMIT, LIMITED, NOTES, RATE_LIMIT, RATED
from tests.support import wait_for

#: The fixtures of tests.e2e.policy_support, used here.
start_policy_worker = policy_support.start_policy_worker
notes = policy_support.notes


def test_concurrency_limit_holds_across_two_worker_processes(
    start_policy_worker: StartPolicyWorker, producer: Producer, notes: redis.Redis[str]
) -> None:
    # Given: two worker processes of four threads each (eight could run at once)
    worker = start_policy_worker(processes=2, threads=4)
    run = uuid.uuid4().hex

    # When: 16 tasks of 0.3 s are sent at once to a task limited to 2 at a time
    producer.send_many(LIMITED.name, [{"run": run, "item": item, "seconds": 0.3} for item in range(16)])
    wait_for(lambda: notes.llen(f"{NOTES}:{run}:done") >= 16, 60, "16 limited tasks done")

    # Then: never more than 2 ran at once, each ran exactly once, and the waits were throttled
    levels = [int(level) for level in notes.lrange(f"{NOTES}:{run}:levels", 0, -1)]
    assert max(levels) <= CONCURRENCY_LIMIT, levels
    assert sorted(int(item) for item in notes.lrange(f"{NOTES}:{run}:done", 0, -1)) == list(range(16))
    # (a task's line follows its notes)
    wait_for(lambda: worker.event_count(LIMITED.name, "succeeded") == 16, 5, "16 task lines saying succeeded")
    events = worker.events_of(LIMITED.name)
    throttled = [event for event in events if event["event"] == "throttled"]
    assert throttled, "8 threads and a limit of 2: some tasks must have waited"
    assert all(event["reason"] == "concurrency_limit 2 reached" for event in throttled)
    assert all(event["retries"] == 0 for event in events), "throttling counts no retry"
    wait_for(
        lambda: worker.outcome_count(LIMITED.name, "throttled") == len(throttled),
        5,
        "greenroom_tasks_total{outcome=throttled} to match the throttled lines",
    )
    wait_for(lambda: worker.outcome_count(LIMITED.name, "success") == 16, 5, "16 counted success")
    assert worker.outcome_count(LIMITED.name, "failure") == 0
    # And: every slot was freed
    slots = [notes.get(f"greenroom-limits:concurrency:{LIMITED.name}:{slot}") for slot in range(2)]
    assert all(slot in (None, "0") for slot in slots), slots


def test_rate_limit_holds_across_two_worker_processes(
    start_policy_worker: StartPolicyWorker, producer: Producer, notes: redis.Redis[str]
) -> None:
    # Given: two worker processes, and a task limited to 4 starts per 2 seconds
    worker = start_policy_worker(processes=2, threads=4)
    run = uuid.uuid4().hex

    # When: 12 are sent at once
    producer.send_many(RATED.name, [{"run": run, "item": item} for item in range(12)])
    wait_for(lambda: notes.llen(f"{NOTES}:{run}:starts") >= 12, 60, "12 rated tasks started")

    # Then: no 2-second window (1 s of it slack for clocks read a moment apart) held more than 4 starts
    starts = sorted(float(line.split()[1]) for line in notes.lrange(f"{NOTES}:{run}:starts", 0, -1))
    for index, first in enumerate(starts):
        within = [start for start in starts[index:] if start - first < 0.9]
        assert len(within) <= RATE_LIMIT.count, starts
    # And: it took the time the limit needs (12 at 4 per 2 s: at least two more windows)
    assert starts[-1] - starts[0] >= 2.0, starts
    items = sorted(int(line.split()[0]) for line in notes.lrange(f"{NOTES}:{run}:starts", 0, -1))
    assert items == list(range(12)), "each ran exactly once"
    wait_for(
        lambda: sum(e["event"] == "succeeded" for e in worker.events_of(RATED.name)) == 12, 5, "12 lines"
    )
    events = worker.events_of(RATED.name)
    throttled = [event for event in events if event["event"] == "throttled"]
    assert throttled and all(event["reason"] == "rate_limit 4 per 2 s reached" for event in throttled)
    assert all(0 < event["retry_in_seconds"] <= 2 + 2 * 8 for event in throttled)
    wait_for(
        lambda: worker.outcome_count(RATED.name, "throttled") == len(throttled),
        5,
        "greenroom_tasks_total{outcome=throttled} to match the throttled lines",
    )
