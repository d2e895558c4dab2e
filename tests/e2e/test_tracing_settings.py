"""The OTEL_* settings greenroom declares are in effect wherever they come from (.env
too), and a command with no collector to export to exits at once with one line."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from shared.bench.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support import Worker, free_port, run_cli, wait_for

SEND_ECHO = ["send", "echo", "--kwargs", '{"payload": 1}']


def _without_otel(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if not key.startswith("OTEL_")}


def _write_dotenv(workdir: Path, **values: str) -> None:
    (workdir / ".env").write_text("".join(f"{name}={value}\n" for name, value in values.items()))


def _spans_of(receiver: OtlpReceiver, message_id: str, kind: str) -> list[ReceivedSpan]:
    return [
        span
        for span in receiver.spans()
        if span.kind == kind and span.attributes.get("messaging.message.id") == message_id
    ]


def test_endpoint_and_service_name_from_dotenv_are_in_effect(
    otlp_receiver: OtlpReceiver, service_env: dict[str, str], workdir: Path, clean_queues: None
) -> None:
    # Given the endpoint only in .env (the SDK reads only the process environment)
    service = f"greenroom-dotenv-{uuid.uuid4().hex[:8]}"
    _write_dotenv(workdir, OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint, OTEL_SERVICE_NAME=service)
    env = _without_otel(service_env)
    shown = json.loads(run_cli(["config"], env, workdir).stdout)
    assert shown["OTEL_EXPORTER_OTLP_ENDPOINT"] == otlp_receiver.endpoint

    # When a command sends a task
    completed = run_cli(SEND_ECHO, env, workdir)

    # Then its span reaches that endpoint, under that service name (it is flushed before exit)
    assert completed.returncode == 0, completed.stderr
    [span] = _spans_of(otlp_receiver, completed.stdout.strip(), "PRODUCER")
    assert span.resource["service.name"] == service
    assert completed.stderr == ""


def test_a_worker_exports_to_the_endpoint_in_dotenv(
    otlp_receiver: OtlpReceiver, service_env: dict[str, str], workdir: Path, clean_queues: None
) -> None:
    # Given a worker whose only OTLP endpoint is in .env
    _write_dotenv(workdir, OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint)
    env = _without_otel(service_env)
    worker = Worker(env, workdir, processes=1, threads=2, queues=["default"])
    try:
        worker.wait_ready()

        # When it processes a task
        message_id = run_cli(SEND_ECHO, env, workdir).stdout.strip()
        worker.wait_for_task_events(1)

        # Then its consumer span arrives there (within the worker's export interval)
        wait_for(
            lambda: bool(_spans_of(otlp_receiver, message_id, "CONSUMER")), 15, "the worker's consumer span"
        )
    finally:
        worker.stop()


def test_sampler_from_dotenv_is_in_effect(
    otlp_receiver: OtlpReceiver, service_env: dict[str, str], workdir: Path, clean_queues: None
) -> None:
    # Given the receiver's endpoint in the environment and OTEL_TRACES_SAMPLER=always_off in .env
    _write_dotenv(workdir, OTEL_TRACES_SAMPLER="always_off")
    assert service_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == otlp_receiver.endpoint

    # When a command sends a task and exits (after flushing what it would export)
    completed = run_cli(SEND_ECHO, service_env, workdir)

    # Then no span of it was exported
    assert completed.returncode == 0, completed.stderr
    assert _spans_of(otlp_receiver, completed.stdout.strip(), "PRODUCER") == []


def _warnings(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines()]
    return [line for line in lines if line["level"] in ("WARNING", "ERROR", "CRITICAL")]


def test_send_without_a_collector_exits_at_once_with_one_line(
    service_env: dict[str, str], workdir: Path, clean_queues: None
) -> None:
    # Given tracing on and nothing listening at the OTLP endpoint
    env = {**service_env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}

    # When greenroom send runs
    started = time.monotonic()
    completed = run_cli(SEND_ECHO, env, workdir)
    elapsed = time.monotonic() - started

    # Then it gives up on its spans at once (a functional bound: the retries took 5.8 s) with one line
    assert completed.returncode == 0, completed.stderr
    assert elapsed < 3, f"greenroom send took {elapsed:.1f}s"
    [warning] = _warnings(completed.stderr)
    assert warning["message"].startswith("Spans not exported: no OTLP collector accepts connections at")
    assert len(completed.stderr.splitlines()) == 1, completed.stderr
