"""The tracer provider takes its OTEL_* values from the caller (greenroom's settings), and a
short-lived process drops its spans at once, with one warning, while no collector listens."""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, sampling
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from observability.span_exporters import DropWhileUnreachable, connection_problem
from observability.tracer_provider import EXPORT_BATCH_SIZE, BatchLimits, build_sampler
from shared.settings import Settings, load_settings
from shared.telemetry import provider_factory
from tests.support import free_port


class Recording(SpanExporter):
    """Counts the batches it is given."""

    def __init__(self) -> None:
        self.batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches += 1
        return SpanExportResult.SUCCESS


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listening() -> Iterator[str]:
    """An endpoint where a socket accepts connections."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1/traces"


@pytest.fixture
def closed() -> str:
    return f"http://127.0.0.1:{free_port()}/v1/traces"


def test_batch_limits_default_to_greenroom_batch_within_the_sdk_queue() -> None:
    assert BatchLimits().queue_size == 2048
    assert BatchLimits().export_batch_size == EXPORT_BATCH_SIZE == 128
    assert BatchLimits(max_queue_size=64).export_batch_size == 64  # the SDK refuses a batch above the queue
    assert BatchLimits(max_export_batch_size=500).export_batch_size == 500


def test_batch_limits_make_a_processor_the_sdk_accepts() -> None:
    processor = BatchLimits(max_queue_size=64, schedule_delay_millis=10, export_timeout_millis=50).processor(
        Recording()
    )
    processor.shutdown()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    "name",
    [
        None,
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ],
)
@pytest.mark.parametrize("argument", [None, 0.25])
def test_sampler_is_the_one_the_sdk_reads_from_the_same_variables(
    monkeypatch: pytest.MonkeyPatch, name: str | None, argument: float | None
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    if name is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    if argument is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", str(argument))
    expected = sampling._get_from_env_or_default()
    assert build_sampler(name, argument).get_description() == expected.get_description()


def test_every_otel_setting_reaches_the_provider(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for field in Settings.model_fields:
        monkeypatch.delenv(field, raising=False)
    settings = load_settings(
        _env_file=None,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318",
        OTEL_SERVICE_NAME="billing",
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.5",
        OTEL_BSP_MAX_QUEUE_SIZE="100",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_BSP_EXPORT_TIMEOUT="3000",
    )
    factory = provider_factory(settings, "worker")
    assert isinstance(factory, functools.partial)
    given = factory.keywords
    assert given["endpoint"] == "http://collector:4318/v1/traces"
    assert given["service_name"] == "billing"
    assert given["sampler"].get_description() == "TraceIdRatioBased{0.5}"
    assert given["batch_limits"] == BatchLimits(
        max_queue_size=100, schedule_delay_millis=200, max_export_batch_size=10, export_timeout_millis=3000
    )
    assert given["drop_while_unreachable"] is False
    producer = provider_factory(settings, "producer")
    assert isinstance(producer, functools.partial)
    assert producer.keywords["drop_while_unreachable"] is True


@pytest.mark.parametrize(
    ("values", "endpoint"),
    [
        ({}, "http://localhost:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http://localhost:4317"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "http://c:4317",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x",
            },
            "http://t/x",
        ),
    ],
)
def test_traces_endpoint_as_the_sdk_resolves_it(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], endpoint: str
) -> None:
    for field in Settings.model_fields:
        monkeypatch.delenv(field, raising=False)
    assert load_settings(_env_file=None, **values).otlp_traces_endpoint == endpoint


def test_connection_problem(listening: str, closed: str) -> None:
    assert connection_problem(listening, 1.0) is None
    assert "refused" in (connection_problem(closed, 1.0) or "")


def test_drop_while_unreachable_warns_once_per_outage(
    closed: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner, clock = Recording(), Clock()
    exporter = DropWhileUnreachable(inner, endpoint=closed, recheck_seconds=5, clock=clock)
    with caplog.at_level(logging.WARNING, logger="greenroom.tracing"):
        results = [exporter.export([]) for _ in range(3)]
        clock.now += 6  # checked again: still down, no second line
        results.append(exporter.export([]))
    assert results == [SpanExportResult.FAILURE] * 4
    assert inner.batches == 0
    [record] = caplog.records
    assert record.getMessage().startswith(
        f"Spans not exported: no OTLP collector accepts connections at {closed}"
    )


def test_drop_while_unreachable_exports_once_the_collector_listens(listening: str) -> None:
    inner, clock = Recording(), Clock()
    exporter = DropWhileUnreachable(inner, endpoint=f"http://127.0.0.1:{free_port()}", clock=clock)
    assert exporter.export([]) is SpanExportResult.FAILURE
    exporter.endpoint = listening  # the collector comes up
    assert exporter.export([]) is SpanExportResult.FAILURE  # within recheck_seconds: not tried
    clock.now += exporter.recheck_seconds
    assert exporter.export([]) is SpanExportResult.SUCCESS
    assert inner.batches == 1
