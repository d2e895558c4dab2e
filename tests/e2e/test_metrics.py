"""A real `greenroom worker` serves /metrics, /healthz and /readyz; counters match known traffic."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.errors import TaskFailed
from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import Worker, free_port, http_get, run_cli, wait_for

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def _samples(worker: Worker, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    status, body = http_get(worker.url("/metrics"))
    assert status == 200
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name
    }


def _tasks_total(worker: Worker, actor: str, outcome: str) -> float:
    key = (
        ("actor", actor),
        ("outcome", outcome),
        ("queue", "default" if actor in ("echo", "fail") else "reports"),
    )
    return _samples(worker, "greenroom_tasks_total").get(key, 0.0)


def test_health_endpoints_follow_the_worker_lifecycle(start_worker: StartWorker, producer: Producer) -> None:
    # Given: a started worker
    worker = start_worker(processes=2, threads=2)  # returns once /readyz answers 200

    # Then
    assert http_get(worker.url("/healthz")) == (200, "ok\n")
    assert http_get(worker.url("/nothing-else"))[0] == 404
    assert http_get(worker.url("/metrics?x=1"))[0] == 200

    # When: SIGTERM while tasks are still running
    producer.send_many("echo", [{"payload": n, "delay_ms": 2000} for n in range(4)])
    wait_for(lambda: producer.broker.get_queue_message_counts("default")[0] == 0, 10, "tasks to be taken")
    worker.signal(signal.SIGTERM)

    # Then: not ready while draining, then gone, exit 0
    wait_for(lambda: http_get(worker.url("/readyz")) == (503, "shutting down\n"), 5, "readiness to drop")
    assert worker.wait(timeout=30) == 0, worker.output()


def test_counters_equal_known_traffic_summed_across_processes(
    start_worker: StartWorker, producer: Producer
) -> None:
    # Given: two worker processes
    worker = start_worker(processes=2, threads=4)

    # When: 30 successes, 3 failures, and one task that retries twice then succeeds
    handles = producer.send_many("echo", [{"payload": n} for n in range(30)])
    failing = [producer.send("fail") for _ in range(3)]
    flaky = producer.send("reports.sync_inventory", source="s", fail_first=2)
    assert [h.result(timeout=20) for h in handles] == list(range(30))
    for handle in failing:
        with pytest.raises(TaskFailed):
            handle.result(timeout=10)
    assert flaky.result(timeout=20)["attempts"] == 3
    worker.wait_for_task_events(36)

    # Then: exact counts, summed over both processes' files (each process applies its
    # figures within the metrics flush interval, 0.1 s)
    expected = {
        ("echo", "success"): 30,
        ("fail", "failure"): 3,
        ("reports.sync_inventory", "retry"): 2,
        ("reports.sync_inventory", "success"): 1,
    }

    def counted() -> dict[tuple[str, str], float]:
        return {(actor, outcome): _tasks_total(worker, actor, outcome) for actor, outcome in expected}

    wait_for(lambda: counted() == expected, 5, "every outcome in the metrics")
    by_pid = {e["message_id"] for e in worker.task_events()}
    assert len(by_pid) == 34
    durations = _samples(worker, "greenroom_task_duration_seconds_count")
    assert durations[(("actor", "echo"), ("queue", "default"))] == 30
    waits = _samples(worker, "greenroom_task_queue_wait_seconds_count")
    assert waits[(("actor", "reports.sync_inventory"), ("queue", "reports"))] == 3
    assert _samples(worker, "greenroom_worker_capacity") == {(): 8.0}
    assert _samples(worker, "greenroom_tasks_in_progress")[(("actor", "echo"), ("queue", "default"))] == 0
    queue_messages = _samples(worker, "greenroom_queue_messages")
    assert queue_messages[(("queue", "default"), ("state", "dead_letter"))] == 3
    assert queue_messages[(("queue", "default"), ("state", "ready"))] == 0
    assert list(_samples(worker, "greenroom_build_info")) == [(("version", "0.1.0"),)]


def test_in_progress_counts_a_running_task_then_drops_to_zero(
    start_worker: StartWorker, producer: Producer
) -> None:
    worker = start_worker(processes=1, threads=2)
    series = (("actor", "echo"), ("queue", "default"))

    handle = producer.send("echo", payload=1, delay_ms=1500)
    wait_for(
        lambda: _samples(worker, "greenroom_tasks_in_progress").get(series) == 1, 5, "the task in progress"
    )
    assert handle.result(timeout=10) == 1
    wait_for(
        lambda: _samples(worker, "greenroom_tasks_in_progress").get(series) == 0, 5, "nothing in progress"
    )


def test_histograms_carry_trace_id_exemplars_in_openmetrics(
    start_worker: StartWorker, producer: Producer
) -> None:
    worker = start_worker(processes=1, threads=2)
    handle = producer.send("echo", payload=1)
    handle.result(timeout=10)

    def exemplar_lines() -> list[str]:
        status, body = http_get(worker.url("/metrics"), accept=OPENMETRICS)
        assert status == 200
        return [
            line
            for line in body.splitlines()
            if line.startswith("greenroom_task_duration") and " # {" in line
        ]

    wait_for(lambda: bool(exemplar_lines()), 10, "an exemplar on the duration histogram")
    [line] = exemplar_lines()
    [event] = worker.wait_for_task_events(1)
    assert f'trace_id="{event["trace_id"]}"' in line
    assert "trace_id" not in http_get(worker.url("/metrics"))[1]  # the classic text format has none


def test_two_process_types_on_one_host_do_not_clash(
    start_worker: StartWorker, producer: Producer, service_env: dict[str, str], workdir: object
) -> None:
    default = start_worker(processes=1, threads=2, queues=["default"])
    reports = start_worker(processes=1, threads=2, queues=["reports"])
    producer.send("echo", payload=1).result(timeout=10)
    producer.send("reports.build", report_id="r", rows=100).result(timeout=10)
    wait_for(lambda: _tasks_total(reports, "reports.build", "success") == 1, 5, "reports metrics")
    assert _tasks_total(default, "echo", "success") == 1
    assert _tasks_total(reports, "echo", "success") == 0
    assert _tasks_total(default, "reports.build", "success") == 0

    # A third worker on a port already taken stops at once with one line
    env = {**service_env, "METRICS_PORT": str(default.metrics_port)}
    completed = run_cli(["worker"], env, workdir)  # type: ignore[arg-type]
    assert completed.returncode == 2
    assert completed.stderr.startswith(
        f"greenroom: error: METRICS_PORT {default.metrics_port} on 127.0.0.1 is in use"
    )


def _assert_bounded_json(worker: Worker) -> None:
    """Every stdout line of the worker is one JSON object shorter than 16 KiB."""
    for number, line in enumerate(worker.snapshot(), 1):
        assert len(line.encode()) < 16 * 1024, f"stdout line {number} is {len(line.encode())} bytes"
        assert isinstance(json.loads(line), dict), (
            f"stdout line {number} is not a JSON object: {line[:200]!r}"
        )


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _abort(connection: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a scraper that gives up does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def test_aborted_scrapes_and_many_held_connections_write_only_json_lines(start_worker: StartWorker) -> None:
    # Given
    worker = start_worker(processes=1, threads=2)

    # When: 50 scrapes aborted as the answer is written, then 1,100 connections held and closed
    for _ in range(50):
        connection = _connect(worker.metrics_port)
        connection.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        _abort(connection)
    held = []
    try:
        for _ in range(1100):
            held.append(_connect(worker.metrics_port))
    finally:
        for connection in held:
            _abort(connection)

    # Then: the server still answers, and wrote nothing but bounded JSON lines
    wait_for(lambda: http_get(worker.url("/healthz")) == (200, "ok\n"), 15, "the server to answer again")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output()
    _assert_bounded_json(worker)
    assert worker.stderr_lines == []


def test_an_idle_connection_is_closed_by_the_server(start_worker: StartWorker) -> None:
    # Given: clients that connect and send nothing, more than the server answers at once
    worker = start_worker(processes=1, threads=2)
    idle = [_connect(worker.metrics_port) for _ in range(40)]
    try:
        # Then: the server closes each within its connection timeout (5 s) and answers again
        for connection in idle:
            connection.settimeout(20)
            with contextlib.suppress(ConnectionResetError):  # closed at once: every slot was taken
                assert connection.recv(1) == b""
        assert http_get(worker.url("/readyz")) == (200, "ok\n")
    finally:
        for connection in idle:
            connection.close()


def test_a_worker_restarted_at_once_gets_its_metrics_port_back(
    start_worker: StartWorker, service_env: dict[str, str]
) -> None:
    # Given: a worker whose metrics port has answered requests (the server closes first: TIME_WAIT)
    first = start_worker(processes=1, threads=2)
    for _ in range(5):
        assert http_get(first.url("/metrics"))[0] == 200

    # When: it stops and starts again at once on the same port
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0, first.output()
    second = start_worker(processes=1, threads=2, env={"METRICS_PORT": str(first.metrics_port)})

    # Then
    assert http_get(second.url("/readyz")) == (200, "ok\n")


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("METRICS_DIR", "/proc/forbidden", "METRICS_DIR: cannot write metric files in '/proc/forbidden/"),
        ("METRICS_HOST", "no-such-host.invalid", "METRICS_HOST 'no-such-host.invalid' does not resolve"),
        ("METRICS_HOST", "192.0.2.1", "METRICS_HOST '192.0.2.1' is not an address of this machine"),
    ],
)
def test_a_bad_metrics_setting_stops_the_worker_with_one_line(
    service_env: dict[str, str], workdir: Path, setting: str, value: str, says: str
) -> None:
    completed = run_cli(
        ["worker"], {**service_env, setting: value, "METRICS_PORT": str(free_port())}, workdir
    )
    assert completed.returncode == 2, completed.stderr
    [line] = completed.stderr.splitlines()
    assert line.startswith(f"greenroom: error: {says}"), line


#: What the worker's interpreter is given in place of the libraries' private parts (as an upgrade
#: that moved them would), each with the component its fallback names.
BROKEN_FAST_PATHS = {
    "dead-letter queue arguments": "del dramatiq.brokers.rabbitmq.RabbitmqBroker._declare_xq_queue",
    "json line encoding": "json.encoder.c_make_encoder = None",  # a Python without the C encoder
}


def test_a_fast_path_that_cannot_be_built_is_an_error_line_and_greenroom_degraded_on_metrics(
    start_worker: StartWorker, producer: Producer, tmp_path: Path
) -> None:
    # Given: a worker whose interpreter starts with those private parts gone
    site = tmp_path / "broken-site"
    site.mkdir()
    breaking = ["import json.encoder", "import dramatiq.brokers.rabbitmq", *BROKEN_FAST_PATHS.values()]
    (site / "sitecustomize.py").write_text("\n".join(breaking) + "\n")
    worker = start_worker(processes=2, threads=2, env={"PYTHONPATH": str(site)})

    # When: it runs a task on the public paths
    assert producer.send("echo", payload=7).result(timeout=20) == 7

    # Then: one ERROR line per fallback and process, and greenroom_degraded on /metrics for each
    errors = [line for line in worker.json_lines() if line.get("logger") == "greenroom.degraded"]
    assert {line["component"] for line in errors} == set(BROKEN_FAST_PATHS), worker.output()
    assert all(line["level"] == "ERROR" and "public path" in line["message"] for line in errors)
    assert _samples(worker, "greenroom_degraded") == {
        (("component", component),): 1.0 for component in BROKEN_FAST_PATHS
    }
