"""Grafana dashboards and provisioning: valid against Grafana's dashboard model, datasources by uid."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from observability.messaging_spans import (
    ACTOR_ATTRIBUTE,
    CANCELLED_ATTRIBUTE,
    WORKFLOW_ID_ATTRIBUTE,
    WORKFLOW_KIND_ATTRIBUTE,
    WORKFLOW_STEP_ATTRIBUTE,
)
from tests.support import REPO, metric_families

GRAFANA = REPO / "observability" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = REPO / "observability" / "prometheus" / "rules"
#: What Prometheus appends to a family's name in the series it exposes.
SERIES_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _provisioned_datasource_uids() -> dict[str, str]:
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yml").read_text())
    return {source["uid"]: source["type"] for source in config["datasources"]}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def test_there_is_an_overview_and_a_drill_down() -> None:
    assert [path.name for path in DASHBOARDS] == ["greenroom-overview.json", "greenroom-task.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_follows_grafanas_model(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys()
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "heatmap", "table", "gauge", "bargauge"}
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_datasources_are_referenced_by_provisioned_uid(path: Path) -> None:
    provisioned = _provisioned_datasource_uids()
    dashboard = json.loads(path.read_text())
    references = [panel["datasource"] for panel in _panels(dashboard) if panel["type"] != "row"]
    references += [t["datasource"] for panel in _panels(dashboard) for t in panel.get("targets", [])]
    references += [variable["datasource"] for variable in dashboard["templating"]["list"]]
    for reference in references:
        assert provisioned[reference["uid"]] == reference["type"], reference


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_no_hard_coded_instance_or_host(path: Path) -> None:
    text = path.read_text()
    assert "instance=" not in text.replace(" ", "")
    assert not re.search(r"localhost|127\.0\.0\.1|:\d{4,5}\b", text)


def test_queue_and_actor_template_variables() -> None:
    for path in DASHBOARDS:
        names = [variable["name"] for variable in json.loads(path.read_text())["templating"]["list"]]
        assert names == ["queue", "actor"], path.name


def test_latency_panels_request_exemplars_and_prometheus_links_them_to_tempo() -> None:
    overview = json.loads((GRAFANA / "dashboards" / "greenroom-overview.json").read_text())
    latency = [p for p in _panels(overview) if p["title"] in ("Task duration", "Queue wait")]
    assert len(latency) == 2
    assert all(target.get("exemplar") for panel in latency for target in panel["targets"])
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yml").read_text())
    [prometheus] = [s for s in config["datasources"] if s["uid"] == "prometheus"]
    assert prometheus["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "tempo"}
    ]


def test_dashboard_provider_points_at_the_dashboards_folder() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    [provider] = config["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_drill_down_lists_a_workflows_steps_by_the_attributes_spans_carry() -> None:
    drill_down = json.loads((GRAFANA / "dashboards" / "greenroom-task.json").read_text())
    [panel] = [p for p in _panels(drill_down) if p["title"] == "Workflow steps"]
    [target] = panel["targets"]
    assert target["queryType"] == "traceql" and target["tableType"] == "spans"
    query = target["query"]
    for attribute in (
        WORKFLOW_ID_ATTRIBUTE,
        WORKFLOW_KIND_ATTRIBUTE,
        WORKFLOW_STEP_ATTRIBUTE,
        ACTOR_ATTRIBUTE,
        CANCELLED_ATTRIBUTE,
    ):
        assert f"span.{attribute}" in query, attribute
    assert '=~ "$actor"' in query


def _prometheus_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
        if target["datasource"]["uid"] == "prometheus"
    ]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_query_only_metrics_and_recording_rules_that_exist(path: Path) -> None:
    families = set(metric_families())
    assert {"greenroom_tasks", "greenroom_beat_ticks", "greenroom_beat_leader"} <= families
    rules = "\n".join(rule_file.read_text() for rule_file in RULES.glob("*.yml"))
    for title, expr in _prometheus_expressions(json.loads(path.read_text())):
        for name in re.findall(r"\bgreenroom_[a-z_]+\b", expr):
            base = next((name.removesuffix(s) for s in SERIES_SUFFIXES if name.endswith(s)), name)
            assert name in families or base in families, f"{title}: {name} is no greenroom metric"
        for rule in re.findall(r"\bgreenroom:[a-z_0-9]+:[a-z_0-9]+\b", expr):
            assert f"record: {rule}" in rules, f"{title}: no recording rule {rule}"


def test_the_overview_has_an_open_beat_row_covering_every_beat_metric() -> None:
    overview = json.loads((GRAFANA / "dashboards" / "greenroom-overview.json").read_text())
    rows = [panel for panel in overview["panels"] if panel["type"] == "row"]
    [beat_row] = [row for row in rows if row["title"].startswith("Beat")]
    # Open, so its panels are top-level (tests/e2e/test_prometheus.py runs top-level panels' queries).
    assert beat_row["collapsed"] is False and beat_row["panels"] == []
    below = [p for p in overview["panels"] if p["gridPos"]["y"] > beat_row["gridPos"]["y"]]
    assert below and all(panel["type"] != "row" for panel in below), "the Beat row is the last row"
    queried = " ".join(expr for _title, expr in _prometheus_expressions({"panels": below}))
    for metric in (
        "greenroom_beat_ticks_total",
        "greenroom_beat_tick_lag_seconds_bucket",
        "greenroom_beat_last_sent_timestamp_seconds",
        "greenroom_beat_next_tick_timestamp_seconds",
        "greenroom_beat_leader",
        "greenroom_beat_heartbeat_completed_timestamp_seconds",
    ):
        assert metric in queried, metric
    assert "by (schedule, outcome)" in queried
    assert "histogram_quantile(0.5," in queried and "histogram_quantile(0.95," in queried
