"""`greenroom bench` is correct with a small N (figures are not asserted: speed is not a test)."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest

from tests.support import run_cli


def test_bench_runs_both_sides_writes_json_and_leaves_no_queue(
    rabbitmq_url: str, service_env: dict[str, str], workdir: Path, clean_queues: None
) -> None:
    report_path = workdir / "bench.json"
    # A retention other than Dramatiq's: both sides still share the bench's dead-letter queue
    env = {**service_env, "DEAD_LETTER_TTL_SECONDS": "3600"}
    completed = run_cli(
        [
            *("bench", "--messages", "200", "--processes", "1", "--threads", "2", "--rounds", "2"),
            *("--json", str(report_path)),
        ],
        env,
        workdir,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    # The progress went to stderr, the table to stdout
    assert "bare: draining 200 tasks" in completed.stderr
    assert completed.stdout.splitlines()[1].startswith("drain throughput (tasks/s)")

    report = json.loads(report_path.read_text())
    for side in ("bare", "greenroom"):
        figures = report[side]
        assert figures["drain_tasks_per_second"] > 0
        assert figures["startup_seconds"] > 0
        assert figures["peak_rss_mib"] > 10
        assert figures["worker_cpu_ms_per_task"] >= 0
        assert set(figures["queue_wait_ms"]) == {"p50", "p95", "p99"}
        assert figures["queue_wait_ms"]["p99"] >= figures["queue_wait_ms"]["p50"] > 0
    assert [len(report["rounds"][side]) for side in ("bare", "greenroom")] == [2, 2]
    for run in (*report["rounds"]["bare"], *report["rounds"]["greenroom"]):  # queue wait measured each round
        assert run["queue_wait_ms"]["p99"] >= run["queue_wait_ms"]["p50"] > 0
    assert set(report["bare"]["send_per_second"]) == {"send_confirmed", "send_unconfirmed"}
    assert set(report["greenroom"]["send_per_second"]) == {"send_confirmed", "send_many_confirmed"}
    assert set(report["ratios"]) >= {
        "drain_throughput",
        "worker_cpu_per_task",
        "queue_wait_p99",
        "startup",
        "peak_rss",
    }
    assert report["spans_received"] > 400  # greenroom's tasks were traced and exported, producer and consumer

    # No bench queue is left behind
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        for name in ("greenroom-bench", "greenroom-bench.DQ", "greenroom-bench.XQ"):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                connection.channel().queue_declare(name, passive=True)
    finally:
        connection.close()
