"""The production stack, checked without a Docker engine: docker-compose config,
referenced files, collector routing, Grafana provisioning, Kubernetes manifests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.settings import Settings
from tests.support import GREENROOM, REPO

SECRETS = {"RABBITMQ_PASSWORD": "compose-test-secret", "GRAFANA_ADMIN_PASSWORD": "grafana-test-secret"}
WORKER_SERVICES = {"worker-default": "default", "worker-reports": "reports"}


def _compose(*files: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: apt-get install docker-compose (CI installs it)"
    args = [binary, "--project-directory", str(REPO)]
    for name in files:
        args += ["-f", str(REPO / name)]
    base = {"PATH": "/usr/bin:/bin", "HOME": str(REPO)}
    return subprocess.run(
        [*args, "config"], capture_output=True, text=True, env={**base, **(env or {})}, timeout=60
    )


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    completed = _compose("docker-compose.yml", "docker-compose.override.yml", env=SECRETS)
    assert completed.returncode == 0, completed.stderr
    return dict(yaml.safe_load(completed.stdout))


def test_compose_without_secrets_refuses_to_start() -> None:
    completed = _compose("docker-compose.yml")
    assert completed.returncode != 0
    assert "set RABBITMQ_PASSWORD" in completed.stderr


def test_production_file_alone_is_valid_and_publishes_only_grafana_on_localhost() -> None:
    completed = _compose("docker-compose.yml", env=SECRETS)
    assert completed.returncode == 0, completed.stderr
    services = yaml.safe_load(completed.stdout)["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert list(published) == ["grafana"]
    assert all(
        str(port).startswith("127.0.0.1:") or port.get("host_ip") == "127.0.0.1"
        for port in published["grafana"]
    )


def test_every_service_of_the_stack_is_there(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == {
        "rabbitmq", "redis", "worker-default", "worker-reports", "beat", "producer",
        "otel-collector", "tempo", "prometheus", "grafana",
    }  # fmt: skip


def test_development_ports_are_bound_to_localhost(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)


def _mount(volume: str | dict[str, Any]) -> tuple[str, str]:
    """(source, target) of a volume in either of compose's syntaxes."""
    if isinstance(volume, dict):
        return str(volume.get("source", "")), str(volume["target"])
    source, target = volume.split(":")[:2]
    return source, target


def test_mounted_files_exist_in_the_repository(stack: dict[str, Any]) -> None:
    binds = [_mount(v)[0] for s in stack["services"].values() for v in s.get("volumes", [])]
    binds = [source for source in binds if source.startswith("/")]  # named volumes have no path
    assert len(binds) >= 8
    for source in binds:
        assert Path(source).exists(), source
        assert Path(source).resolve().is_relative_to(REPO)


@pytest.mark.parametrize(("service", "queue"), WORKER_SERVICES.items())
def test_worker_services_are_scalable_graceful_and_configured(
    stack: dict[str, Any], service: str, queue: str
) -> None:
    worker = stack["services"][service]
    assert worker["command"] == ["worker", "--queues", queue]
    assert "ports" not in worker and "container_name" not in worker  # `--scale` needs both absent
    environment = worker["environment"]
    unknown = [k for k in environment if k not in Settings.model_fields and not k.startswith("OTEL_")]
    assert unknown == []
    assert "compose-test-secret" in environment["RABBITMQ_URL"]
    assert _seconds(worker["stop_grace_period"]) > float(environment["WORKER_SHUTDOWN_TIMEOUT_SECONDS"]) + 5
    for dependency in ("rabbitmq", "redis"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"
    assert "healthcheck" in stack["services"][dependency]


def test_beat_runs_two_replicas_with_the_workers_environment(stack: dict[str, Any]) -> None:
    beat = stack["services"]["beat"]
    worker = stack["services"]["worker-default"]
    assert beat["command"] == ["beat"]
    assert beat["deploy"]["replicas"] == 2
    assert "ports" not in beat and "container_name" not in beat  # replicas need both absent
    assert beat["image"] == worker["image"]
    assert beat["depends_on"] == worker["depends_on"]
    environment = beat["environment"]
    worker_only = {"PROCESS_TYPE", "WORKER_PROCESSES", "WORKER_THREADS"}
    shared = {k: v for k, v in worker["environment"].items() if k not in worker_only}
    assert shared.items() <= environment.items()
    assert environment["PROCESS_TYPE"] == "beat"
    own = set(environment) - set(shared) - {"PROCESS_TYPE"}
    assert own == {"BEAT_HEARTBEAT_SECONDS", "BEAT_CATCHUP_SECONDS", "BEAT_LEASE_SECONDS"}
    defaults = Settings.model_fields
    assert {name: float(environment[name]) for name in own} == {name: defaults[name].default for name in own}
    assert _seconds(beat["stop_grace_period"]) > 5  # the span flush


def test_service_commands_are_real_greenroom_commands(stack: dict[str, Any]) -> None:
    for name in [*WORKER_SERVICES, "beat", "producer"]:
        command = stack["services"][name]["command"]
        completed = subprocess.run(
            [GREENROOM, command[0], "--help"], capture_output=True, text=True, timeout=30
        )
        assert completed.returncode == 0, (name, completed.stderr)
        for option in (part for part in command[1:] if part.startswith("--")):
            assert option in completed.stdout, (name, option)


def test_rabbitmq_enables_management_and_prometheus_plugins(stack: dict[str, Any]) -> None:
    plugins = (REPO / "deploy" / "rabbitmq" / "enabled_plugins").read_text()
    assert re.fullmatch(r"\[rabbitmq_management,rabbitmq_prometheus\]\.\n", plugins)
    targets = yaml.safe_load((REPO / "observability" / "prometheus" / "prometheus.yml").read_text())
    rabbit = [job for job in targets["scrape_configs"] if job["job_name"] == "rabbitmq"]
    assert rabbit[0]["static_configs"][0]["targets"] == ["rabbitmq:15692"]


def test_prometheus_scrapes_every_worker_service_by_dns(stack: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "observability" / "prometheus" / "prometheus.yml").read_text())
    discovered = {
        name
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert discovered == {*WORKER_SERVICES, "beat"}
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {f"greenroom-{name}" for name in discovered} <= jobs
    command = stack["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command


def test_collector_receives_otlp_and_routes_traces_to_tempo(stack: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "observability" / "otel-collector" / "config.yaml").read_text())
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    for component in traces["processors"]:
        assert component in config["processors"]
    [exporter] = traces["exporters"]
    host, port = config["exporters"][exporter]["endpoint"].split(":")
    assert host == "tempo"
    assert "tempo" in stack["services"]
    tempo = yaml.safe_load((REPO / "observability" / "tempo" / "tempo.yaml").read_text())
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(f":{port}")
    endpoint = stack["services"]["worker-default"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "http://otel-collector:4318"


def test_grafana_provisioning_points_at_dashboards_that_exist(stack: dict[str, Any]) -> None:
    grafana = stack["services"]["grafana"]
    mounts = {target: Path(source) for source, target in map(_mount, grafana["volumes"])}
    provider = yaml.safe_load(
        (mounts["/etc/grafana/provisioning"] / "dashboards" / "dashboards.yml").read_text()
    )
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert sorted(p.name for p in mounts[dashboards_path].glob("*.json")) == [
        "greenroom-overview.json",
        "greenroom-task.json",
    ]
    environment = grafana["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def _seconds(duration: Any) -> float:
    if isinstance(duration, int | float):
        return float(duration) / 1e9 if duration > 10_000 else float(duration)
    match = re.fullmatch(r"(\d+)(ms|s|m)", str(duration))
    assert match, duration
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


# Kubernetes -----------------------------------------------------------------------------

PROBE = {
    "type": "object",
    "required": ["httpGet"],
    "properties": {"httpGet": {"type": "object", "required": ["path", "port"]}},
}
DEPLOYMENT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "apps/v1"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "template"],
            "properties": {
                "template": {
                    "type": "object",
                    "required": ["metadata", "spec"],
                    "properties": {
                        "metadata": {
                            "type": "object",
                            "required": ["labels", "annotations"],
                            "properties": {
                                "annotations": {
                                    "type": "object",
                                    "required": [
                                        "prometheus.io/scrape",
                                        "prometheus.io/port",
                                        "prometheus.io/path",
                                    ],
                                }
                            },
                        },
                        "spec": {
                            "type": "object",
                            "required": ["terminationGracePeriodSeconds", "containers"],
                            "properties": {
                                "terminationGracePeriodSeconds": {"type": "integer", "minimum": 1},
                                "containers": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": [
                                            "name",
                                            "image",
                                            "args",
                                            "readinessProbe",
                                            "livenessProbe",
                                            "ports",
                                        ],
                                        "properties": {"readinessProbe": PROBE, "livenessProbe": PROBE},
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"]},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "rabbitmq"},
                            "metadata": {
                                "type": "object",
                                "required": ["queueName", "mode", "value"],
                                "properties": {"mode": {"enum": ["QueueLength", "MessageRate"]}},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((REPO / "deploy" / "kubernetes").glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def _shutdown_timeout() -> float:
    [config] = [d for d in _manifests() if d["kind"] == "ConfigMap"]
    return float(config["data"]["WORKER_SHUTDOWN_TIMEOUT_SECONDS"])


@pytest.mark.parametrize("queue", WORKER_SERVICES.values())
def test_kubernetes_deployment_and_keda_scaler_per_process_type(queue: str) -> None:
    manifests = _manifests()
    [deployment] = [
        d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"].endswith(queue)
    ]
    [scaler] = [d for d in manifests if d["kind"] == "ScaledObject" and d["metadata"]["name"].endswith(queue)]
    jsonschema.validate(deployment, DEPLOYMENT_SCHEMA)
    jsonschema.validate(scaler, SCALED_OBJECT_SCHEMA)

    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["worker", "--queues", queue]
    assert pod["spec"]["terminationGracePeriodSeconds"] > _shutdown_timeout() + 5
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    metrics_port = pod["metadata"]["annotations"]["prometheus.io/port"]
    assert [p["containerPort"] for p in container["ports"]] == [int(metrics_port)]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert scaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaler["spec"]["triggers"][0]["metadata"]["queueName"] == queue
    [auth] = [d for d in manifests if d["kind"] == "TriggerAuthentication"]
    assert scaler["spec"]["triggers"][0]["authenticationRef"]["name"] == auth["metadata"]["name"]


def test_kubernetes_beat_runs_two_replicas_with_probes_and_a_disruption_budget() -> None:
    manifests = _manifests()
    [deployment] = [
        d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"] == "greenroom-beat"
    ]
    jsonschema.validate(deployment, DEPLOYMENT_SCHEMA)
    assert deployment["spec"]["replicas"] == 2
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in manifests if d["kind"] == "ScaledObject"}
    assert "greenroom-beat" not in scaled  # more replicas are standbys, not throughput

    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["beat"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    metrics_port = pod["metadata"]["annotations"]["prometheus.io/port"]
    assert [p["containerPort"] for p in container["ports"]] == [int(metrics_port)]
    assert pod["spec"]["terminationGracePeriodSeconds"] > 5  # the span flush
    [worker] = [
        d for d in manifests if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("default")
    ]
    assert container["envFrom"] == worker["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert env["PROCESS_TYPE"] == "beat"
    assert all(name in Settings.model_fields for name in env)
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()

    [budget] = [d for d in manifests if d["kind"] == "PodDisruptionBudget"]
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_kubernetes_config_holds_only_known_non_secret_settings() -> None:
    [config] = [d for d in _manifests() if d["kind"] == "ConfigMap"]
    assert all(k in Settings.model_fields or k.startswith("OTEL_") for k in config["data"])
    assert not {"RABBITMQ_URL", "REDIS_URL"} & set(config["data"])
