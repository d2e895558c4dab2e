"""`greenroom dlq replay` and `purge` on dead letters written with raw pika: confirms, enqueue
time, the queue a replay goes to, ids and prefixes, hostile dead letters, refusals."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest

from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import http_get, run_cli, take_all, wait_for

THREE_DAYS_MS = 3 * 86400 * 1000


def _dead_letter(producer: Producer, message_id: str | None = None, **fields: Any) -> dramatiq.Message[Any]:
    """An echo message dead for three days, written to default.XQ as a worker would leave it."""
    old = int(time.time() * 1000) - THREE_DAYS_MS
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=fields.pop("queue_name", "default"),
        actor_name="echo",
        args=(),
        kwargs={"payload": "back"},
        options={"retries": 3, "eta": old, "greenroom_ready_at": old, **fields},
        message_timestamp=old,
        **({"message_id": message_id} if message_id else {}),
    )
    _publish_raw(producer, "default.XQ", message.encode())
    return message


def _publish_raw(producer: Producer, queue: str, body: bytes) -> None:
    producer.broker.declare_queue("default", ensure=True)  # declares default.XQ too
    connection = pika.BlockingConnection(pika.URLParameters(producer.settings.rabbitmq_url))
    try:
        connection.channel().basic_publish("", queue, body)
    finally:
        connection.close()


def _replay(env: dict[str, str], workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        ["dlq", "replay", "--queue", "default", *args], {**env, "TRACING_ENABLED": "false"}, workdir
    )


@pytest.fixture
def env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, "TRACING_ENABLED": "false"}


@pytest.fixture
def rejecting_default(producer: Producer) -> Iterator[None]:
    """RabbitMQ refuses (nacks) every publish to the queue ``default`` while the test runs."""
    vhost = producer.settings.rabbitmq_url.rsplit("/", 1)[1]
    policy = json.dumps({"max-length": 0, "overflow": "reject-publish"})
    ctl = ["rabbitmqctl", "-q"]
    producer.broker.declare_queue("default", ensure=True)
    subprocess.run(
        [*ctl, "set_policy", "-p", vhost, "--apply-to", "queues", "reject-default", "^default$", policy],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        yield
    finally:
        subprocess.run([*ctl, "clear_policy", "-p", vhost, "reject-default"], check=True, capture_output=True)


def test_replay_without_broker_confirms_still_waits_for_them_and_keeps_what_rabbitmq_refuses(
    producer: Producer, env: dict[str, str], workdir: Path, rejecting_default: None
) -> None:
    # Given: a dead letter, RabbitMQ refusing publishes to its queue, and confirms turned off
    dead = _dead_letter(producer)
    env = {**env, "BROKER_CONFIRM_DELIVERY": "false", "SEND_RETRY_TIMEOUT_SECONDS": "1"}

    # When
    completed = _replay(env, workdir, "--all")

    # Then: the replay failed with one line, and the dead letter is still there
    assert completed.returncode == 1
    assert len(completed.stderr.splitlines()) == 1, completed.stderr
    assert completed.stderr.startswith("greenroom: could not publish 1 replayed dead letter(s) within 1s")
    kept = take_all(producer.settings.rabbitmq_url, "default.XQ")
    assert [dramatiq.Message.decode(body).message_id for body in kept] == [dead.message_id]


def test_a_replayed_message_counts_as_enqueued_at_the_replay_on_the_queue_it_died_on(
    producer: Producer, env: dict[str, str], workdir: Path
) -> None:
    # Given: a dead letter three days old whose body claims the queue "reports"
    dead = _dead_letter(producer, queue_name="reports")

    # When: replayed by a prefix of its id, as the README shows
    before = int(time.time() * 1000)
    completed = _replay(env, workdir, "--id", dead.message_id[:8])

    # Then: it is back on default (not reports), dated now, without the old run's options
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "default.XQ: replayed 1 to default"
    [body] = take_all(producer.settings.rabbitmq_url, "default")
    replayed = dramatiq.Message.decode(body)
    assert replayed.message_id == dead.message_id
    assert replayed.queue_name == "default"
    assert replayed.message_timestamp >= before
    assert "eta" not in replayed.options
    assert "greenroom_ready_at" not in replayed.options
    assert replayed.options["retries"] == 3  # kept without --fresh-retries
    assert take_all(producer.settings.rabbitmq_url, "default.XQ") == []


def test_the_queue_wait_of_a_replayed_message_starts_at_the_replay(
    start_worker: StartWorker, producer: Producer, env: dict[str, str], workdir: Path
) -> None:
    # Given: a worker, and a dead letter three days old
    worker = start_worker(processes=1, threads=2)
    dead = _dead_letter(producer)

    # When: it is replayed and runs
    assert _replay(env, workdir, "--id", dead.message_id).returncode == 0
    assert producer.result_of("echo", dead.message_id, timeout=10) == "back"

    # Then: its queue wait is that of the replay, not three days
    def wait_seconds() -> tuple[float, float]:
        _status, body = http_get(worker.url("/metrics"))
        values = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith("greenroom_task_queue_wait_seconds_") and 'actor="echo"' in line
            and ("_sum{" in line or "_count{" in line)
        }  # fmt: skip
        return values.get("greenroom_task_queue_wait_seconds_count", 0), values.get(
            "greenroom_task_queue_wait_seconds_sum", 0
        )

    wait_for(lambda: wait_seconds()[0] == 1, 10, "the replayed task's queue wait in the metrics")
    assert wait_seconds()[1] < 60


def test_unknown_and_ambiguous_ids_replay_nothing_and_exit_1(
    producer: Producer, env: dict[str, str], workdir: Path
) -> None:
    # Given: two dead letters whose ids share their first 8 characters
    first = _dead_letter(producer, "0c1f5a3e-0000-4000-8000-000000000001")
    second = _dead_letter(producer, "0c1f5a3e-1111-4000-8000-000000000002")

    # When / Then: an unknown id, an ambiguous prefix, a too short prefix, with a good id beside them
    for ids, problem in [
        (["0c1f5a3e-0000-4000-8000-000000000003", first.message_id], "matches no dead letter"),
        (["0c1f5a3e", first.message_id], "matches 2 dead letters"),
        (["0c1f5a3", first.message_id], "matches no dead letter"),
    ]:
        completed = _replay(env, workdir, "--id", *ids)
        assert completed.returncode == 1
        assert completed.stdout == ""
        assert completed.stderr.startswith(f"greenroom: id {ids[0]!r} {problem} in default.XQ"), (
            completed.stderr
        )
        assert len(completed.stderr.splitlines()) == 1
    assert take_all(producer.settings.rabbitmq_url, "default") == []  # nothing replayed

    # And: an unambiguous prefix replays its one dead letter
    completed = _replay(env, workdir, "--id", "0c1f5a3e-1")
    assert completed.returncode == 0, completed.stderr
    [body] = take_all(producer.settings.rabbitmq_url, "default")
    assert dramatiq.Message.decode(body).message_id == second.message_id


def test_hostile_dead_letters_are_listed_but_never_replayed(
    producer: Producer, env: dict[str, str], workdir: Path
) -> None:
    # Given: dead letters whose fields are not those of a Dramatiq message, and one good one
    good = _dead_letter(producer)
    hostile = [
        {**good.asdict(), "message_id": "x" * 10_000},
        {**good.asdict(), "actor_name": ["echo"]},
        {**good.asdict(), "options": "eta"},
        {**good.asdict(), "kwargs": [1, 2]},
        {**good.asdict(), "message_id": ["a"]},
    ]
    for body in hostile:
        _publish_raw(producer, "default.XQ", json.dumps(body).encode())
    _publish_raw(producer, "default.XQ", b"\xff not json")

    # When: listed, then all replayed
    listed = run_cli(["dlq", "list", "--queue", "default"], env, workdir)
    replayed = _replay(env, workdir, "--all")

    # Then: listing shows them all in short lines; only the good one is replayed, the others stay
    assert listed.returncode == 0, listed.stderr
    assert "default.XQ: 7 dead letter(s)" in listed.stdout
    assert listed.stdout.count("not a Dramatiq message") == 6
    assert max(len(line) for line in listed.stdout.splitlines()) < 300
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "default.XQ: replayed 1 to default"
    assert len(take_all(producer.settings.rabbitmq_url, "default.XQ")) == 6


def test_listing_escapes_what_a_dead_letter_holds_and_survives_deep_nesting(
    producer: Producer, env: dict[str, str], workdir: Path
) -> None:
    # Given: a dead letter whose id would clear the screen and forge a line, and one nested 600 deep
    good = _dead_letter(producer)
    nested: Any = 1
    for _ in range(600):
        nested = [nested]
    _publish_raw(
        producer, "default.XQ", json.dumps({**good.asdict(), "message_id": "\x1b[2J\nfake"}).encode()
    )
    _publish_raw(
        producer, "default.XQ", json.dumps({**good.asdict(), "kwargs": {"payload": nested}}).encode()
    )

    # When
    listed = run_cli(["dlq", "list", "--queue", "default"], env, workdir)

    # Then: one line per dead letter, no control character reaches the terminal
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "default.XQ: 3 dead letter(s)" and len(lines) == 4
    assert "\x1b" not in listed.stdout and "\\x1b[2J\\nfake" in listed.stdout
    assert "nested too deeply to show" in listed.stdout


def test_declined_purge_and_unknown_queue_exit_non_zero_with_one_line(
    producer: Producer, env: dict[str, str], workdir: Path
) -> None:
    _dead_letter(producer)

    declined = subprocess.run(
        ["greenroom", "dlq", "purge", "--queue", "default"],
        env=env, cwd=workdir, input="not the name\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    unknown = run_cli(["dlq", "list", "--queue", "defualt"], env, workdir)

    assert declined.returncode == 1
    assert declined.stdout == ""
    assert (
        declined.stderr == "greenroom: default.XQ: left as it was (not confirmed; --yes skips the question)\n"
    )
    assert len(take_all(producer.settings.rabbitmq_url, "default.XQ")) == 1
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("greenroom: error: --queue: no task uses queue 'defualt'")
    assert len(unknown.stderr.splitlines()) == 1
