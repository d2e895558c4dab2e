"""When greenroom's span export and consumer spans cannot be built, spans still reach a real
OTLP receiver through the library's public exporter and SDK spans, with one ERROR line per
component and greenroom_degraded."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import warnings

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.worker import Worker
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from observability.consumer_span import FALLBACK_COMPONENT as CONSUMER_SPANS
from observability.span_exporters import FALLBACK_COMPONENTS, OtlpProtocol
from observability.tracer_provider import configure_tracer_provider, shutdown_tracer_provider
from observability.tracing import Tracing
from shared.bench.otlp_receiver import OtlpReceiver

#: The modules that import observability.opentelemetry_compat, imported afresh in these tests.
FAST_PATH_MODULES = (
    "observability.otlp_http_exporter",
    "observability.http_transport",
    "observability.otlp_grpc_exporter",
)


@pytest.fixture
def broken_compat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing observability.opentelemetry_compat raises ImportError from now on."""
    monkeypatch.setitem(sys.modules, "observability.opentelemetry_compat", None)
    for name in FAST_PATH_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr("observability.fallbacks._reported", {})


def _endpoint(receiver: OtlpReceiver) -> str:
    return receiver.endpoint if receiver.protocol == "grpc" else f"{receiver.endpoint}/v1/traces"


def _traced_tasks(provider: TracerProvider, count: int) -> None:
    """``count`` messages sent and processed through the Tracing middleware on a stub broker."""
    broker = StubBroker(middleware=[Tracing(tracer_provider=provider)])
    broker.emit_after("process_boot")

    @dramatiq.actor(queue_name="default", broker=broker)
    def echo(n: int) -> None:
        pass

    for n in range(count):
        echo.send(n)
    worker = Worker(broker, worker_timeout=50)
    worker.start()
    broker.join("default")
    worker.join()
    worker.stop()


# The library's http exporter leaves its keep-alive connection to the receiver to the garbage
# collector: reaped at the end of the test, its ResourceWarning is not this test's subject.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_arrive_through_the_library_exporter_with_an_error_line_and_the_gauge(
    protocol: OtlpProtocol, broken_compat: None, caplog: pytest.LogCaptureFixture
) -> None:
    with OtlpReceiver.start(protocol) as receiver:
        with caplog.at_level(logging.ERROR, logger="greenroom.degraded"):
            provider = configure_tracer_provider(
                default_service_name="greenroom-worker",
                service_version="0.1.0",
                process_type="test",
                protocol=protocol,
                endpoint=_endpoint(receiver),
            )
        [processor] = provider._active_span_processor._span_processors
        exporter = processor.span_exporter  # type: ignore[attr-defined]  # a BatchSpanProcessor
        assert type(exporter) is (GrpcExporter if protocol == "grpc" else HttpExporter)
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        _traced_tasks(provider, 5)
        assert shutdown_tracer_provider(provider, timeout_seconds=10)
        assert {type(span) for span in memory.get_finished_spans()} == {ReadableSpan}  # the SDK's own copies
        spans = receiver.spans()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()  # here, not in whichever later test the collector would run in

    lines = {r.getMessage().split(":")[0]: r for r in caplog.records if r.name == "greenroom.degraded"}
    assert sorted(lines) == sorted([FALLBACK_COMPONENTS[protocol], CONSUMER_SPANS]), caplog.text
    for component, line in lines.items():
        assert line.levelno == logging.ERROR
        expected = f"{component}: fast path unavailable, using the library's public path"
        assert line.getMessage().startswith(expected)
        assert "opentelemetry_compat halted" in line.getMessage()  # the ImportError's own words
        assert REGISTRY.get_sample_value("greenroom_degraded", {"component": component}) == 1
    assert sorted(s.kind for s in spans) == ["CONSUMER"] * 5 + ["PRODUCER"] * 5
    assert all(s.attributes["messaging.system"] == "rabbitmq" for s in spans)


def test_an_upgraded_library_falls_back_in_a_fresh_process() -> None:
    """As after an upgrade: opentelemetry-sdk reports a version outside the tested series."""
    with OtlpReceiver.start("http/protobuf") as receiver:
        probe = textwrap.dedent(
            f"""
            import logging, sys
            logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="%(levelname)s %(message)s")
            import importlib.metadata
            installed = importlib.metadata.version
            upgraded = {{"opentelemetry-sdk": "1.46.0"}}
            importlib.metadata.version = lambda name: upgraded.get(name) or installed(name)
            from observability.tracer_provider import configure_tracer_provider, shutdown_tracer_provider
            provider = configure_tracer_provider(
                default_service_name="greenroom-worker", service_version="0", process_type="probe",
                protocol="http/protobuf", endpoint="{receiver.endpoint}/v1/traces")
            provider.get_tracer("probe").start_span("after the upgrade").end()
            print("exported", shutdown_tracer_provider(provider, timeout_seconds=10))
            """
        )
        completed = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
        )
        spans = receiver.spans()
    lines = completed.stdout.splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    assert len(errors) == 1, completed.stdout
    assert "OTLP http/protobuf span export: fast path unavailable" in errors[0]
    assert "opentelemetry-sdk 1.46.0 is installed; this code was written against 1.45.2" in errors[0]
    assert lines[-1] == "exported True"
    assert [s.name for s in spans] == ["after the upgrade"]
