"""RabbitMQ or Redis refusing the settings (a login, a vhost, a dead-letter queue's TTL, a
Redis database), and a worker asked for a queue no task uses: one clear line, at once,
from the worker's start, `send` and `dlq replay`.

Real RabbitMQ and Redis (the session's test vhost and database). The bench queue stands
in for any task queue: only `greenroom bench` uses it, and it deletes it when done (its
contract is loaded here; a worker runs it as the bench does, `greenroom worker
shared.bench.worker`). `greenroom dlq` knows production queues only: its test uses `reports`.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pika
import pytest

from shared.bench.recorder import BENCH_QUEUE
from shared.bench.task import BENCH_ECHO
from shared.errors import PublishError
from shared.producer import Producer
from shared.queue_arguments import explain_refusal
from shared.runtime.service_checks import check_services
from shared.settings import Settings, load_settings
from tests.support import delete_queues, run_cli, take_all

ONE_MINUTE_MS = 60_000


@pytest.fixture
def bench_xq_kept_a_minute(rabbitmq_url: str) -> Iterator[None]:
    """``greenroom-bench.XQ`` as an earlier DEAD_LETTER_TTL_SECONDS=60 left it."""
    yield from _xq_kept_a_minute(rabbitmq_url, BENCH_QUEUE)


@pytest.fixture
def reports_xq_kept_a_minute(rabbitmq_url: str) -> Iterator[None]:
    """``reports.XQ`` as an earlier DEAD_LETTER_TTL_SECONDS=60 left it."""
    yield from _xq_kept_a_minute(rabbitmq_url, "reports")


def _xq_kept_a_minute(rabbitmq_url: str, queue: str) -> Iterator[None]:
    delete_queues(rabbitmq_url, queue)
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().queue_declare(
            f"{queue}.XQ", durable=True, arguments={"x-message-ttl": ONE_MINUTE_MS}
        )
    finally:
        connection.close()
    yield
    delete_queues(rabbitmq_url, queue)


def test_check_names_the_setting_the_queue_and_both_ttls(
    settings: Settings, bench_xq_kept_a_minute: None
) -> None:
    line = check_services(settings, ["default", BENCH_QUEUE], stores_results=False)

    assert line == (
        "DEAD_LETTER_TTL_SECONDS=604800 (604800000 ms) does not match the dead-letter queue "
        "'greenroom-bench.XQ', which RabbitMQ keeps at x-message-ttl 60000 ms and cannot change: "
        "set DEAD_LETTER_TTL_SECONDS=60 again; to change it, empty that queue under the old value "
        "(DEAD_LETTER_TTL_SECONDS=60 greenroom dlq replay --queue greenroom-bench --all, "
        "or greenroom dlq purge --queue greenroom-bench) and delete it"
    )


def test_check_passes_a_matching_queue(rabbitmq_url: str, bench_xq_kept_a_minute: None) -> None:
    settings = load_settings(_env_file=None, RABBITMQ_URL=rabbitmq_url, DEAD_LETTER_TTL_SECONDS=60)

    assert check_services(settings, [BENCH_QUEUE], stores_results=False) is None


def test_check_declares_the_dead_letter_queue_a_worker_would(rabbitmq_url: str, redis_url: str) -> None:
    settings = load_settings(
        _env_file=None, RABBITMQ_URL=rabbitmq_url, REDIS_URL=redis_url, DEAD_LETTER_TTL_SECONDS=60
    )
    delete_queues(rabbitmq_url, BENCH_QUEUE)
    try:
        assert check_services(settings, [BENCH_QUEUE], stores_results=False) is None
        # Declared with the setting's TTL: declaring it so again is accepted, with another refused
        assert check_services(settings, [BENCH_QUEUE], stores_results=False) is None
        other = settings.model_copy(update={"DEAD_LETTER_TTL_SECONDS": 120})
        assert "x-message-ttl 60000 ms" in (check_services(other, [BENCH_QUEUE], stores_results=False) or "")
    finally:
        delete_queues(rabbitmq_url, BENCH_QUEUE)


def test_check_leaves_unreachable_services_to_the_worker_and_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unreachable = load_settings(
        _env_file=None, RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/%2F", REDIS_URL="redis://127.0.0.1:1/0"
    )
    assert check_services(unreachable, [BENCH_QUEUE], stores_results=True) is None
    assert caplog.records == []


def test_a_ttl_below_the_settings_minimum_is_not_offered_back() -> None:
    line = explain_refusal(
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'default.XQ' in vhost '/': "
        "received '604800000' but current is '1000'",
        604800,
    )
    assert line.endswith(
        "x-message-ttl 1000 ms and cannot change: empty that queue (greenroom dlq purge --queue default) "
        "and delete it"
    )


def test_send_fails_at_once_naming_the_setting_and_publishes_nothing(
    producer: Producer, rabbitmq_url: str, bench_xq_kept_a_minute: None
) -> None:
    started = time.monotonic()
    with pytest.raises(PublishError, match=r"DEAD_LETTER_TTL_SECONDS=604800 \(604800000 ms\) does not match"):
        producer.send(BENCH_ECHO.name, payload=1)
    with pytest.raises(PublishError, match=r"'greenroom-bench\.XQ'"):
        producer.send_many(BENCH_ECHO.name, [{"payload": 1}, {"payload": 2}])

    assert time.monotonic() - started < producer.settings.SEND_RETRY_TIMEOUT_SECONDS / 2  # not retried
    assert take_all(rabbitmq_url, BENCH_QUEUE) == []


def test_worker_refuses_to_start_with_one_line(
    service_env: dict[str, str], workdir: Path, bench_xq_kept_a_minute: None
) -> None:
    command = ["worker", "shared.bench.worker", "--queues", BENCH_QUEUE]
    completed = run_cli(command, service_env, workdir, timeout=30)

    assert completed.returncode == 2
    assert completed.stderr.startswith("greenroom: error: DEAD_LETTER_TTL_SECONDS=604800 (604800000 ms)")
    assert completed.stderr.count("\n") == 1
    assert completed.stdout == ""  # no worker started, no warnings from pika


def test_replay_under_the_new_value_says_why_and_keeps_the_dead_letter(
    service_env: dict[str, str], workdir: Path, rabbitmq_url: str, reports_xq_kept_a_minute: None
) -> None:
    dead = dramatiq.Message(
        queue_name="reports", actor_name="reports.build", args=(), kwargs={"report_id": "r1"}, options={}
    )
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().basic_publish("", "reports.XQ", dead.encode())
    finally:
        connection.close()

    env = {**service_env, "TRACING_ENABLED": "false"}
    completed = run_cli(["dlq", "replay", "--queue", "reports", "--all"], env, workdir)

    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [completed.stderr.strip()]
    assert completed.stderr.startswith(
        "greenroom: error: could not publish 1 replayed dead letter(s): DEAD_LETTER_TTL_SECONDS=604800"
    )
    kept = take_all(rabbitmq_url, "reports.XQ")
    assert [dramatiq.Message.decode(body).message_id for body in kept] == [dead.message_id]


def _with_url(service_env: dict[str, str], rabbitmq_url: str, **parts: str) -> dict[str, str]:
    """``service_env`` with the test RabbitMQ's URL changed in ``parts`` (password, vhost)."""
    url = rabbitmq_url.replace("guest:guest@", f"guest:{parts.get('password', 'guest')}@")
    if "vhost" in parts:
        url = url.rsplit("/", 1)[0] + "/" + parts["vhost"]
    return {**service_env, "RABBITMQ_URL": url, "TRACING_ENABLED": "false"}


@pytest.mark.parametrize(
    ("parts", "refused"),
    [
        ({"password": "wrong-secret"}, "RabbitMQ refused the login: check the user name and password"),
        ({"vhost": "no-such-vhost"}, "RabbitMQ refused the vhost: it does not exist or this user has no"),
    ],
)
def test_worker_and_send_refused_by_rabbitmq_say_so_at_once_without_the_password(
    service_env: dict[str, str], workdir: Path, rabbitmq_url: str, parts: dict[str, str], refused: str
) -> None:
    env = _with_url(service_env, rabbitmq_url, **parts)
    host = rabbitmq_url.split("@", 1)[1].split("/", 1)[0]

    worker = run_cli(["worker", "--queues", "default"], env, workdir, timeout=30)
    started = time.monotonic()
    send = run_cli(["send", "echo", "--kwargs", '{"payload": 1}'], env, workdir, timeout=30)
    send_seconds = time.monotonic() - started

    assert worker.returncode == 2
    assert (
        worker.stderr == f"greenroom: error: RABBITMQ_URL (amqp://guest:***@{host}/"[:40] + worker.stderr[40:]
    )
    assert refused in worker.stderr
    assert worker.stderr.count("\n") == 1
    assert worker.stdout == ""
    assert send.returncode == 2  # as the worker's, for the same cause
    assert send.stderr.count("\n") == 1
    assert send.stderr.startswith("greenroom: error: could not publish message ")
    assert refused in send.stderr.splitlines()[-1]
    assert send_seconds < 5  # not retried for SEND_RETRY_TIMEOUT_SECONDS (10 s)
    assert "wrong-secret" not in worker.stderr + worker.stdout + send.stderr + send.stdout


def test_check_names_redis_refusals_when_the_worker_stores_results(rabbitmq_url: str, redis_url: str) -> None:
    def settings_with(url: str) -> Settings:
        return load_settings(_env_file=None, RABBITMQ_URL=rabbitmq_url, REDIS_URL=url)

    host = redis_url.removeprefix("redis://").split("/", 1)[0]
    wrong_login = settings_with(f"redis://bob:wrong-secret@{host}/0")
    no_such_database = settings_with(f"redis://{host}/99")

    assert check_services(wrong_login, ["default"], stores_results=True) == (
        f"REDIS_URL (redis://bob:***@{host}/0): Redis refused the login: check the user name and password"
    )
    assert check_services(no_such_database, ["default"], stores_results=True) == (
        f"REDIS_URL (redis://{host}/99): Redis refused it: DB index is out of range"
    )
    assert check_services(wrong_login, [BENCH_QUEUE], stores_results=False) is None  # never asks Redis


def test_worker_storing_results_refuses_to_start_when_redis_refuses_the_login(
    service_env: dict[str, str], workdir: Path, redis_url: str
) -> None:
    host = redis_url.removeprefix("redis://").split("/", 1)[0]
    env = {**service_env, "REDIS_URL": f"redis://bob:wrong-secret@{host}/0", "TRACING_ENABLED": "false"}

    completed = run_cli(["worker", "--queues", "default"], env, workdir, timeout=30)

    assert completed.returncode == 2
    assert completed.stderr == (
        f"greenroom: error: REDIS_URL (redis://bob:***@{host}/0): Redis refused the login: "
        "check the user name and password\n"
    )


def test_worker_for_a_queue_no_task_uses_refuses_to_start(service_env: dict[str, str], workdir: Path) -> None:
    completed = run_cli(["worker", "--queues", "default", "defualt"], service_env, workdir, timeout=30)

    assert completed.returncode == 2
    assert completed.stderr == (
        "greenroom: error: WORKER_QUEUES (or --queues): no task uses queue 'defualt' "
        "(queues with tasks: default, reports)\n"
    )


@pytest.fixture
def user_without_configure_permission(rabbitmq_url: str) -> Iterator[str]:
    """The URL of a user who may read and write the test vhost but declare nothing there."""
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    user, password = f"greenroom-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    subprocess.run(["rabbitmqctl", "-q", "add_user", user, password], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, "^$", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield rabbitmq_url.replace("guest:guest@", f"{user}:{password}@")
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], check=True, capture_output=True)


def test_check_names_a_permission_the_user_lacks(
    user_without_configure_permission: str, redis_url: str, bench_xq_kept_a_minute: None
) -> None:
    settings = load_settings(
        _env_file=None,
        RABBITMQ_URL=user_without_configure_permission,
        REDIS_URL=redis_url,
        DEAD_LETTER_TTL_SECONDS=60,  # the queue's own: only the permission is missing
    )

    existing = check_services(settings, [BENCH_QUEUE], stores_results=False)
    missing = check_services(settings, ["reports"], stores_results=False)  # not declared in this test

    for line, queue in ((existing, "greenroom-bench.XQ"), (missing, "reports.XQ")):
        assert line is not None
        assert line.startswith("RABBITMQ_URL (amqp://greenroom-test-")
        assert ":***@" in line
        assert f"RabbitMQ refused this user: ACCESS_REFUSED - access to queue '{queue}'" in line
