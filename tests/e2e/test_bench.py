"""`greenroom bench` is correct with a small N (figures are not asserted: speed is not a test)."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest

from shared.bench.queues import BENCH_QUEUE_NAMES
from shared.cli import build_parser
from tests.support import delete_queues, run_cli, take_all


def test_bench_runs_both_sides_writes_json_and_leaves_no_queue(
    rabbitmq_url: str, service_env: dict[str, str], workdir: Path, clean_queues: None
) -> None:
    report_path = workdir / "bench.json"
    # A retention other than Dramatiq's: both sides still share the bench's dead-letter queue
    env = {**service_env, "DEAD_LETTER_TTL_SECONDS": "3600"}
    completed = run_cli(
        [
            *("bench", "--messages", "200", "--processes", "1", "--threads", "2", "--rounds", "1"),
            # gRPC here; every other tracing test exports over http/protobuf, the default
            *("--otlp-protocol", "grpc", "--json", str(report_path)),
        ],
        env,
        workdir,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    # The progress went to stderr, the table to stdout, its header naming the protocol
    assert "bare: draining 200 tasks" in completed.stderr
    assert "greenroom: draining 200 async tasks" in completed.stderr
    header, first_row, *rows = completed.stdout.splitlines()
    assert header.startswith("greenroom traces: OTLP grpc") and header.split()[-3:] == [
        "bare",
        "greenroom",
        "ratio",
    ]
    assert first_row.startswith("drain throughput (tasks/s)")
    # the async actor's rows under the sync task's, each with bare, greenroom and ratio figures
    assert rows[0].startswith("drain throughput, async (tasks/s)") and len(rows[0].split()) == 7
    assert rows[2].startswith("worker CPU per task, async (ms)") and len(rows[2].split()) == 9

    report = json.loads(report_path.read_text())
    assert report["options"]["otlp_protocol"] == "grpc"
    for side in ("bare", "greenroom"):
        figures = report[side]
        assert figures["drain_tasks_per_second"] > 0
        assert figures["startup_seconds"] > 0
        assert figures["peak_rss_mib"] > 10
        assert figures["worker_cpu_ms_per_task"] >= 0
        assert figures["async_drain_tasks_per_second"] > 0
        assert figures["async_worker_cpu_ms_per_task"] >= 0
        assert set(figures["queue_wait_ms"]) == {"p50", "p95", "p99"}
        assert figures["queue_wait_ms"]["p99"] >= figures["queue_wait_ms"]["p50"] > 0
    assert [len(report["rounds"][side]) for side in ("bare", "greenroom")] == [1, 1]
    for run in (*report["rounds"]["bare"], *report["rounds"]["greenroom"]):  # queue wait measured each round
        assert run["queue_wait_ms"]["p99"] >= run["queue_wait_ms"]["p50"] > 0
    assert set(report["bare"]["send_per_second"]) == {"send_confirmed", "send_unconfirmed"}
    assert set(report["greenroom"]["send_per_second"]) == {"send_confirmed", "send_many_confirmed"}
    assert set(report["ratios"]) >= {
        "drain_throughput",
        "worker_cpu_per_task",
        "async_drain_throughput",
        "async_worker_cpu_per_task",
        "queue_wait_p99",
        "startup",
        "peak_rss",
    }
    # greenroom's tasks were traced and exported, producer and consumer, over gRPC only (the
    # receiver speaks the protocol asked for): every drained task, sync and async
    assert report["spans_received"] > 200
    assert report["consumer_spans_received"] >= 2 * (100 + 200 + 2)

    _assert_no_bench_queue(rabbitmq_url)


def test_bench_refuses_to_touch_a_bench_queue_it_did_not_create(
    rabbitmq_url: str, service_env: dict[str, str], workdir: Path
) -> None:
    # Given a greenroom-bench.XQ that holds someone's dead letter
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().queue_declare("greenroom-bench.XQ", durable=True)
        connection.channel().basic_publish("", "greenroom-bench.XQ", b"not the bench's")
    finally:
        connection.close()
    try:
        # When the bench is run
        temporary = workdir / "tmp"
        temporary.mkdir()
        env = {**service_env, "TMPDIR": str(temporary)}
        completed = run_cli(["bench", "--messages", "40", "--rounds", "1"], env, workdir, timeout=60)

        # Then it refuses with one line naming the queue, and leaves the queue and its message alone
        assert completed.returncode == 1
        assert completed.stderr.splitlines() == [
            "greenroom: bench failed: queue greenroom-bench.XQ (1 message) already exists in this vhost, "
            "and the bench deletes only queues it created: "
            "delete it (rabbitmqctl delete_queue -p VHOST NAME) or run the bench on another vhost"
        ]
        assert completed.stdout == ""
        assert take_all(rabbitmq_url, "greenroom-bench.XQ") == [b"not the bench's"]
        _assert_no_bench_queue(rabbitmq_url, names=BENCH_QUEUE_NAMES[:2])  # nor declared the others
    finally:
        delete_queues(rabbitmq_url, "greenroom-bench")


def _assert_no_bench_queue(rabbitmq_url: str, names: tuple[str, ...] = BENCH_QUEUE_NAMES) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        for name in names:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                connection.channel().queue_declare(name, passive=True)
    finally:
        connection.close()


def test_the_bench_exports_over_http_protobuf_unless_told_otherwise() -> None:
    assert build_parser().parse_args(["bench"]).otlp_protocol == "http/protobuf"
