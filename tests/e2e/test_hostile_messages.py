"""Hostile message bodies, published with plain pika to a worker consuming two queues while valid
slow tasks run on both: each is dead-lettered on the queue that delivered it with one line naming
the field, nothing else is lost, every thread survives, and every stdout line stays short JSON."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pika
import pytest

from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import Worker, http_get, wait_for

DAY_MS = 86_400_000
MAX_LINE_BYTES = 16 * 1024
REJECTED = "Dead-lettered a message from queue"


def _fields(queue: str = "default", actor: str = "echo", **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "queue_name": queue,
        "actor_name": actor,
        "args": [],
        "kwargs": {"payload": "hostile"} if actor == "echo" else {"report_id": "r1"},
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }
    fields.update(changes)
    return fields


def _body(**changes: Any) -> bytes:
    return json.dumps(_fields(**changes)).encode()


def _options(**options: Any) -> bytes:
    return _body(options=options)


@dataclass(frozen=True)
class Case:
    name: str
    queue: str  # where it is published
    body: bytes
    field: str  # what the rejection line must name


def _without(field: str) -> bytes:
    fields = _fields()
    del fields[field]
    return json.dumps(fields).encode()


def _pipeline(steps: int) -> dict[str, Any]:
    target = _fields()
    for _ in range(steps - 1):
        target = _fields(options={"pipe_target": target})
    return target


NOW_MS = int(time.time() * 1000)
CASES = [
    # Routing: the delivering queue is the truth, the actor must live there.
    Case("queue_name of no queue", "default", _body(queue="nonexistent"), "queue_name"),
    Case("queue_name of the other consumed queue", "default", _body(queue="reports"), "queue_name"),
    Case("claims default, delivered on reports", "reports", _body(queue="default"), "queue_name"),
    Case("claims the main queue, delivered on its delay queue", "default.DQ", _body(), "queue_name"),
    Case("actor of another queue", "default", _body(actor="reports.build"), "actor_name"),
    Case("actor_name a list", "default", _body(actor_name=["echo"]), "actor_name"),
    Case("actor_name a number", "default", _body(actor_name=7), "actor_name"),
    Case("unknown actor", "reports", _body(queue="reports", actor_name="no.such.task"), "actor_name"),
    # Fields of the message.
    Case("options a string", "default", _body(options="eta"), "options"),
    Case("options a list", "default", _body(options=[], kwargs={"delay_ms": "x"}), "options"),
    Case("kwargs a list", "default", _body(kwargs=[1, 2]), "kwargs"),
    Case("kwargs a string", "default", _body(kwargs="abc"), "kwargs"),
    Case("positional args", "default", _body(args=[1]), "args"),
    Case("args a string", "default", _body(args="x"), "args"),
    Case("message_id a number", "default", _body(message_id=5), "message_id"),
    Case("message_id huge", "default", _body(message_id="x" * 5000), "message_id"),
    Case("message_id with a newline", "default", _body(message_id="a\nb"), "message_id"),
    Case("message_timestamp a string", "default", _body(message_timestamp="now"), "message_timestamp"),
    Case("message_timestamp negative", "default", _body(message_timestamp=-5), "message_timestamp"),
    Case("a field missing", "default", _without("options"), "options"),
    Case("an unknown field", "default", _body(evil=1), "body"),
    # Every option a middleware reads.
    Case(
        "retries a string",
        "default",
        _body(actor="fail", kwargs={}, options={"retries": "x"}),
        "options.retries",
    ),
    Case("retries negative", "default", _options(retries=-1), "options.retries"),
    Case("max_retries huge", "default", _options(max_retries=10**6), "options.max_retries"),
    Case("min_backoff a string", "default", _options(min_backoff="1s"), "options.min_backoff"),
    Case("eta a string", "default", _options(eta="tomorrow"), "options.eta"),
    Case("eta a year ahead", "default", _options(eta=NOW_MS + 365 * DAY_MS), "options.eta"),
    Case("time_limit zero", "default", _options(time_limit=0), "options.time_limit"),
    Case("time_limit a fraction", "default", _options(time_limit=1.5), "options.time_limit"),
    Case("max_age a boolean", "default", _options(max_age=True), "options.max_age"),
    Case("throws from a message", "default", _options(throws="ValueError"), "options.throws"),
    Case("notify_shutdown a string", "default", _options(notify_shutdown="yes"), "options.notify_shutdown"),
    Case("store_results a number", "default", _options(store_results=1), "options.store_results"),
    Case("result_ttl beyond any TTL", "default", _options(result_ttl=10**20), "options.result_ttl"),
    Case("on_success names no actor", "default", _options(on_success="no.such"), "options.on_success"),
    Case("pipe_target a string", "default", _options(pipe_target="x"), "options.pipe_target"),
    Case(
        "a tick's schedule a list", "default", _options(greenroom_schedule=[1]), "options.greenroom_schedule"
    ),
    Case(
        "a tick's schedule name with a newline",
        "default",
        _options(greenroom_schedule={"name": "a\nb", "at": NOW_MS}),
        "options.greenroom_schedule.name",
    ),
    Case(
        "a tick's time a century ahead",
        "default",
        _options(greenroom_schedule={"name": "heartbeat", "at": NOW_MS + 36_500 * DAY_MS}),
        "options.greenroom_schedule.at",
    ),
    Case(
        "pipe_target routed to the wrong queue",
        "default",
        _options(pipe_target=_fields(queue="default", actor="reports.build")),
        "options.pipe_target.actor_name",
    ),
    Case(
        "broker_priority out of range", "default", _options(broker_priority=1000), "options.broker_priority"
    ),
    # A float pika cannot pack as the AMQP priority octet: every re-publish (a retry, back on the
    # delay ladder) would fail.
    Case("broker_priority a float", "default", _options(broker_priority=5.0), "options.broker_priority"),
    # Hostile trace context.
    Case(
        "trace context a string",
        "default",
        _options(greenroom_trace_context="abc"),
        "options.greenroom_trace_context",
    ),
    Case(
        "traceparent a number",
        "default",
        _options(greenroom_trace_context={"traceparent": 5}),
        "options.greenroom_trace_context",
    ),
    Case(
        "100 KB baggage",
        "reports",
        _body(
            queue="reports",
            actor="reports.build",
            options={"greenroom_trace_context": {"baggage": "k=" + "v" * 100_000}},
        ),
        "options.greenroom_trace_context",
    ),
    # A message may not raise its task's policy, nor date itself far off.
    Case(
        "max_retries above the contract's",
        "default",
        _body(actor="fail", kwargs={}, options={"max_retries": 20}),
        "options.max_retries",
    ),
    Case("on_success naming a real actor", "default", _options(on_success="echo"), "options.on_success"),
    Case("message_timestamp of 1970", "default", _body(message_timestamp=1), "message_timestamp"),
    Case("ready-at of 1970", "default", _options(greenroom_ready_at=1), "options.greenroom_ready_at"),
    Case("a pipeline of 450 steps", "default", _options(pipe_target=_pipeline(450)), "options.pipe_target"),
    # Size and encoding.
    Case("a number beyond a float", "default", _body().replace(b'"hostile"', b"1e400"), "body"),
    Case("2 MB valid message", "default", _body(kwargs={"payload": "x" * 2_000_000}), "body"),
    Case("10 MB of garbage", "reports", b"\x01" * 10_000_000, "body"),
    Case("not UTF-8", "default", b"\xff\xfe{}", "body"),
    Case("not JSON", "default", b"{'python': 'dict'}", "body"),
    Case("NaN in the arguments", "default", _body().replace(b'"hostile"', b"NaN"), "body"),
    Case("a lone surrogate", "default", _body().replace(b'"hostile"', b'"\\ud800"'), "body"),
    Case("a JSON list", "default", b"[1, 2, 3]", "body"),
    Case("nested beyond the parser", "default", b"[" * 100_000, "body"),
]


def _publish(rabbitmq_url: str, queue: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().basic_publish(exchange="", routing_key=queue, body=body)
    finally:
        connection.close()


def _rejections(worker: Worker) -> list[dict[str, Any]]:
    return [line for line in worker.json_lines() if line["message"].startswith(REJECTED)]


def _capacity(worker: Worker) -> float:
    _, text = http_get(worker.url("/metrics"))
    [line] = [line for line in text.splitlines() if line.startswith("greenroom_worker_capacity ")]
    return float(line.split()[1])


def _rejected_counts(worker: Worker) -> dict[tuple[str, str], float]:
    """greenroom_messages_rejected_total by (queue, field)."""
    _, text = http_get(worker.url("/metrics"))
    counts = {}
    for line in text.splitlines():
        if line.startswith("greenroom_messages_rejected_total{"):
            labels, value = line[len("greenroom_messages_rejected_total{") :].split("} ")
            pairs = dict(pair.split("=", 1) for pair in labels.split(","))
            counts[(pairs["queue"].strip('"'), pairs["field"].strip('"'))] = float(value)
    return counts


@pytest.mark.e2e
def test_hostile_messages_are_dead_lettered_and_nothing_else_is_lost(
    start_worker: StartWorker, producer: Producer, rabbitmq_url: str
) -> None:
    # Given: a 2 x 2 worker on both queues, busy with valid slow tasks on each
    worker = start_worker(processes=2, threads=2, queues=("default", "reports"))
    slow = [producer.send("echo", payload=n, delay_ms=3000) for n in range(2)]
    reports = [producer.send("reports.build", report_id=f"r{n}", rows=200_000) for n in range(2)]

    # When: each hostile body is published in turn
    problems = []
    for number, case in enumerate(CASES, start=1):
        _publish(rabbitmq_url, case.queue, case.body)
        wait_for(lambda n=number: len(_rejections(worker)) >= n, 20, f"a rejection line for {case.name!r}")
        line = _rejections(worker)[number - 1]
        if line["field"] != case.field:
            problems.append(
                f"{case.name}: field {line['field']!r}, expected {case.field!r} ({line['reason']})"
            )
        if line["queue"] != case.queue:
            problems.append(f"{case.name}: said queue {line['queue']!r}, delivered on {case.queue!r}")

    # Then: each named the field, and each is a dead letter of the queue it came from
    assert problems == [], "\n".join(problems)
    per_queue = {"default": 0, "reports": 0}
    for case in CASES:
        per_queue[case.queue.removesuffix(".DQ")] += 1
    for queue, expected in per_queue.items():
        wait_for(
            lambda q=queue, e=expected: producer.broker.get_queue_message_counts(q)[2] == e,
            20,
            f"{expected} dead letters in {queue}.XQ",
        )
    # the valid tasks all completed with their results
    assert [handle.result(timeout=30) for handle in slow] == [0, 1]
    assert all(handle.result(timeout=60)["report_id"] for handle in reports)
    # every thread still works: a full round of concurrent tasks on each queue, and the gauge agrees
    round_trip = [producer.send("echo", payload=n, delay_ms=300) for n in range(8)]
    assert [handle.result(timeout=30) for handle in round_trip] == list(range(8))
    assert (
        producer.send("reports.build", report_id="after", rows=10).result(timeout=30)["report_id"] == "after"
    )
    assert _capacity(worker) == 4
    expected_counts: dict[tuple[str, str], float] = {}
    for case in CASES:
        expected_counts[(case.queue, case.field)] = expected_counts.get((case.queue, case.field), 0) + 1
    wait_for(lambda: _rejected_counts(worker) == expected_counts, 5, "greenroom_messages_rejected_total")
    # a trace context that is only malformed is ignored, and the warning about it quotes an excerpt
    odd = _fields(options={"greenroom_trace_context": {"traceparent": "00-zz", "baggage": "x" * 8000}})
    _publish(rabbitmq_url, "default", json.dumps(odd).encode())
    assert producer.result_of("echo", odd["message_id"], timeout=30) == "hostile"
    wait_for(lambda: worker.count("Baggage entry") > 0, 10, "the baggage warning")  # it follows the result
    [baggage_warning] = [line for line in worker.json_lines() if line["message"].startswith("Baggage")]
    assert len(baggage_warning["message"]) < 400  # the key quoted to 200 chars of 8000
    # nothing retried, and stdout is JSON lines only, each short
    events = [line["event"] for line in worker.task_events()]
    assert "retrying" not in events and "failed" not in events
    lines = worker.snapshot()
    assert all(len(line.encode()) < MAX_LINE_BYTES for line in lines), max(lines, key=len)[:300]
    assert all(len(json.dumps(line).encode()) < 2048 for line in _rejections(worker))
    assert [line for line in lines if "Traceback" in line] == []
