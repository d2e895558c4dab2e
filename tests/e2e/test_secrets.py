"""Secrets never appear in logs, `greenroom config`, metrics or spans: checked by grepping
everything a worker printed while using a password-protected RabbitMQ user."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shared.bench.otlp_receiver import OtlpReceiver
from shared.errors import TaskFailed
from shared.producer import Producer
from shared.settings import load_settings
from tests.e2e.conftest import StartWorker
from tests.support import http_get, run_cli


@pytest.fixture
def protected_url(rabbitmq_url: str) -> Iterator[str]:
    """A RabbitMQ user with a random password, on the test vhost."""
    user, password = f"greenroom-{secrets.token_hex(4)}", secrets.token_hex(16)
    vhost = urlsplit(rabbitmq_url).path.lstrip("/")
    subprocess.run(["rabbitmqctl", "-q", "add_user", user, password], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], check=True, capture_output=True)


def test_password_appears_nowhere(
    protected_url: str,
    start_worker: StartWorker,
    redis_url: str,
    service_env: dict[str, str],
    workdir: Path,
    otlp_receiver: OtlpReceiver,
    clean_queues: None,
) -> None:
    password = str(urlsplit(protected_url).password)
    env = {**service_env, "RABBITMQ_URL": protected_url, "LOG_LEVEL": "DEBUG"}

    # A worker at DEBUG, doing work that succeeds, fails and retries
    worker = start_worker(processes=1, threads=2, env={"RABBITMQ_URL": protected_url, "LOG_LEVEL": "DEBUG"})
    producer = Producer(load_settings(_env_file=None, RABBITMQ_URL=protected_url, REDIS_URL=redis_url))
    try:
        producer.send("echo", payload=1).result(timeout=10)
        producer.send("reports.sync_inventory", source="s", fail_first=1).result(timeout=20)
        with pytest.raises(TaskFailed):
            producer.send("fail").result(timeout=10)
        metrics = (
            http_get(worker.url("/metrics"))[1]
            + http_get(worker.url("/metrics"), accept="application/openmetrics-text")[1]
        )
    finally:
        producer.close()
    worker.signal()
    assert worker.wait(timeout=30) == 0

    # The CLI: config, check (also with a wrong password), send
    outputs = [run_cli(["config"], env, workdir), run_cli(["check"], env, workdir)]
    wrong = {**env, "RABBITMQ_URL": protected_url.replace(password, "not-" + password)}
    failed_check = run_cli(["check"], wrong, workdir)
    assert failed_check.returncode == 2  # RabbitMQ refuses the login
    outputs += [failed_check, run_cli(["send", "echo", "--kwargs", '{"payload": 2}', "--wait"], env, workdir)]

    everything = "\n".join(
        [worker.output(), metrics, *(o.stdout + o.stderr for o in outputs), repr(otlp_receiver.spans())]
    )
    assert len(worker.snapshot()) > 20  # DEBUG output was really produced
    assert password not in everything
    assert "***@127.0.0.1" in everything  # the URLs that are shown are redacted
