"""A real Prometheus scrapes a real worker, a real beat (and RabbitMQ's plugin): every dashboard
and rule expression is executed through Prometheus' HTTP API and returns data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.errors import TaskFailed
from shared.producer import Producer
from tests.e2e.conftest import StartWorker
from tests.support import REPO, Beat, Process, Worker, forget_beat_state, free_port, http_get, wait_for

OBSERVABILITY = REPO / "observability"
RABBITMQ_METRICS_PORT = 15692

#: Alert expressions that return nothing in this test's healthy traffic, and why.
EXPECTED_EMPTY = {
    "GreenroomQueueWaitSLOBreached": "p95 queue wait stays far below its 30 s SLO; promtool tests it firing",
    "GreenroomBacklogGrowingWhileSaturated": "workers are not saturated here; promtool tests cover firing",
    "GreenroomWorkerDown": "the worker is up; promtool tests cover firing",
    "GreenroomDegraded": "every fast path builds here; promtool tests cover firing",
    "GreenroomScheduleStalled": "the heartbeat ticks every second; promtool tests cover firing",
    "GreenroomHeartbeatMissing": "the worker completes every heartbeat; promtool tests cover firing",
    "GreenroomBeatNoLeader": "the beat leads; promtool tests cover firing",
}


@pytest.fixture(scope="module")
def rabbitmq_prometheus_plugin() -> Iterator[None]:
    """Enable RabbitMQ's rabbitmq_prometheus plugin for the test; disable it again if it was off."""
    enabled = subprocess.run(
        ["rabbitmq-plugins", "list", "-e", "-q", "rabbitmq_prometheus"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    was_enabled = "rabbitmq_prometheus" in enabled
    if not was_enabled:
        subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_prometheus"], capture_output=True, check=True)
    wait_for(lambda: _answers(f"http://127.0.0.1:{RABBITMQ_METRICS_PORT}/metrics"), 30, "rabbitmq_prometheus")
    yield
    if not was_enabled:
        subprocess.run(
            ["rabbitmq-plugins", "disable", "rabbitmq_prometheus"], capture_output=True, check=True
        )


def _answers(url: str) -> bool:
    try:
        return http_get(url)[0] == 200
    except OSError:
        return False


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        reply = json.loads(body)
        assert status == 200, reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return list(data["result"])


@pytest.fixture
def prometheus(
    tmp_path: Path, worker: Worker, beat: Beat, rabbitmq_prometheus_plugin: None
) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: apt-get install prometheus (CI installs it)"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(OBSERVABILITY / "prometheus" / "rules" / "*.yml")],
        "scrape_configs": [
            {
                "job_name": "greenroom-worker-default",
                "static_configs": [{"targets": [f"127.0.0.1:{worker.metrics_port}"]}],
            },
            {
                "job_name": "greenroom-beat",
                "static_configs": [{"targets": [f"127.0.0.1:{beat.metrics_port}"]}],
            },
            {"job_name": "rabbitmq", "static_configs": [{"targets": [f"127.0.0.1:{RABBITMQ_METRICS_PORT}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = Process(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
        ],
        {"PATH": "/usr/bin:/bin"},
        tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/-/ready"), 30, "Prometheus to be ready")
        yield Prometheus(url)
    finally:
        process.stop()


@pytest.fixture
def worker(start_worker: StartWorker) -> Worker:
    return start_worker(processes=2, threads=4)


@pytest.fixture
def beat(service_env: dict[str, str], workdir: Path, redis_url: str, worker: Worker) -> Iterator[Beat]:
    """One `greenroom beat`, its heartbeat every second (the worker runs the heartbeat tasks)."""
    forget_beat_state(redis_url)
    process = Beat({**service_env, "BEAT_HEARTBEAT_SECONDS": "1"}, workdir)
    try:
        yield process.wait_ready()
    finally:
        process.stop()
        forget_beat_state(redis_url)


def _dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for path in sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if target["datasource"]["uid"] == "prometheus":
                    found.append((f"{path.stem} / {panel['title']} / {target['refId']}", target["expr"]))
    return found


def _variable_queries() -> list[tuple[str, str]]:
    found = []
    for path in sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json")):
        for variable in json.loads(path.read_text())["templating"]["list"]:
            found.append((f"{path.stem} / ${variable['name']}", variable["query"]["query"]))
    return found


def _rules() -> list[tuple[str, str]]:
    found = []
    for path in sorted((OBSERVABILITY / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("record") or rule["alert"], rule["expr"]))
    return found


def _concrete(expr: str) -> str:
    """Grafana's variables as Grafana would fill them with "All" selected."""
    return expr.replace("$__rate_interval", "1m").replace("$queue", ".*").replace("$actor", ".*")


def test_every_dashboard_and_rule_expression_returns_data(
    prometheus: Prometheus, worker: Worker, producer: Producer
) -> None:
    # Given: Prometheus sees the three targets before any traffic (so gauges have a "before"),
    # the beat leading
    wait_for(lambda: len([r for r in prometheus.query("up == 1")]) == 3, 30, "the scrape targets up")
    wait_for(lambda: bool(prometheus.query("greenroom_beat_leader == 1")), 30, "the beat to lead")
    time.sleep(2)  # two scrapes of the quiet state: the dead-letter delta needs a baseline

    # When: successes, failures, retries and a report
    handles = producer.send_many("echo", [{"payload": n, "delay_ms": n % 5 * 20} for n in range(40)])
    failing = [producer.send("fail") for _ in range(3)]
    flaky = producer.send("reports.sync_inventory", source="s", fail_first=2)
    report = producer.send("reports.build", report_id="q", rows=1000)
    assert [h.result(timeout=30) for h in handles] == list(range(40))
    for handle in failing:
        with pytest.raises(TaskFailed):
            handle.result(timeout=10)
    flaky.result(timeout=20)
    report.result(timeout=20)
    wait_for(
        lambda: bool(prometheus.query('greenroom_tasks_total{outcome="retry"}')), 30, "the retries scraped"
    )

    # Then: every expression returns data (polling while rules catch up)
    expressions = [*_dashboard_expressions(), *_rules()]
    assert len(expressions) > 25
    pending = {name: expr for name, expr in expressions if name not in EXPECTED_EMPTY}

    def all_have_data() -> bool:
        for name in list(pending):
            if prometheus.query(_concrete(pending[name])):
                del pending[name]
        return not pending

    try:
        wait_for(all_have_data, 30, "every expression to return data", interval=1)
    except AssertionError:
        pytest.fail(f"expressions without data: {json.dumps(pending, indent=2)}")
    for name, expr in expressions:
        if name in EXPECTED_EMPTY:
            assert prometheus.query(_concrete(expr)) == [], f"{name} fired unexpectedly"

    # And: template variables list the real queues and actors
    for name, query in _variable_queries():
        metric_selector, label = _parse_label_values(_concrete(query))
        values = prometheus.api(f"label/{label}/values", **{"match[]": metric_selector})
        assert values, name
    assert {"default", "reports"} <= set(prometheus.api("label/queue/values"))

    # And: exemplars with trace ids reached Prometheus
    now = time.time()
    exemplars = prometheus.api(
        "query_exemplars", query="greenroom_task_duration_seconds_bucket", start=str(now - 300), end=str(now)
    )
    trace_ids = {e["labels"]["trace_id"] for series in exemplars for e in series["exemplars"]}
    assert trace_ids
    assert all(len(trace_id) == 32 for trace_id in trace_ids)


def _parse_label_values(query: str) -> tuple[str, str]:
    """label_values(selector, label) -> (selector, label)."""
    inner = query.removeprefix("label_values(").removesuffix(")")
    selector, label = inner.rsplit(",", 1)
    return selector.strip(), label.strip()
