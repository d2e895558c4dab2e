"""Bad input: poison messages published with plain pika are dead-lettered at once, with a
log line saying why, never retried, never unpickled; the worker keeps working."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import dramatiq
import pika
import pytest

from shared.errors import InvalidTaskArguments
from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import wait_for


class Exploit:
    """Unpickling this creates a file: proof that a pickle was (not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def _publish(rabbitmq_url: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().basic_publish(exchange="", routing_key="default", body=body)
    finally:
        connection.close()


def _message(actor: str, **kwargs: object) -> dramatiq.Message:  # type: ignore[type-arg]
    return dramatiq.Message(queue_name="default", actor_name=actor, args=(), kwargs=kwargs, options={})


def test_poison_messages_are_dead_lettered_once_with_a_reason(
    start_worker: StartWorker, producer: Producer, rabbitmq_url: str, tmp_path: Path
) -> None:
    # Given
    worker = start_worker(processes=1, threads=2)
    marker = tmp_path / "unpickled"
    unknown_actor = _message("no.such.task")
    bad_arguments = _message("echo", payload=1, delay_ms="soon")
    poison = {
        "not JSON": b"\x00\xffnot json{",
        "JSON, not a Dramatiq message": json.dumps({"hello": "world"}).encode(),
        "pickle": pickle.dumps(Exploit(marker)),
        "unknown actor": unknown_actor.encode(),
        "breaks the contract": bad_arguments.encode(),
    }

    # When
    for body in poison.values():
        _publish(rabbitmq_url, body)

    # Then: all five are dead letters, and the worker still works
    wait_for(
        lambda: producer.broker.get_queue_message_counts("default")[2] == len(poison), 15, "5 dead letters"
    )
    assert producer.send("echo", payload="still alive").result(timeout=10) == "still alive"
    assert not marker.exists(), "a pickle was unpickled"
    lines = worker.json_lines()
    rejections = [line for line in lines if line["message"].startswith("Dead-lettered a message from queue")]
    assert [line["field"] for line in rejections] == ["body", "actor_name", "body", "actor_name"]
    assert rejections[0]["reason"].startswith("not UTF-8") and rejections[1]["reason"] == "missing"
    assert "no actor 'no.such.task'" in rejections[3]["reason"]
    [rejected] = [e for e in worker.wait_for_task_events(2) if e["message_id"] == bad_arguments.message_id]
    assert rejected["event"] == "dead-lettered"
    assert "delay_ms" in rejected["error"]
    assert [e["event"] for e in worker.task_events()] == ["dead-lettered", "succeeded"]  # nothing retried
    assert producer.broker.get_queue_message_counts("default")[:2] == (0, 0)


def test_oversized_payload_is_refused_at_send_time(producer: Producer) -> None:
    limit = producer.settings.MAX_MESSAGE_BYTES
    with pytest.raises(InvalidTaskArguments, match=rf"more than MAX_MESSAGE_BYTES \({limit}\)"):
        producer.send("echo", payload="x" * limit)
    with pytest.raises(InvalidTaskArguments):
        producer.send_many("echo", [{"payload": 1}, {"payload": "x" * limit}])
    assert producer.broker.get_queue_message_counts("default")[0] == 0
