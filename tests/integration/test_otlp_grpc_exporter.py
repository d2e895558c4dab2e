"""greenroom's OTLP/gRPC exporter against real gRPC servers on loopback: the OTLP receiver
(the same spans as the SDK's gRPC exporter sends), and a scripted server for metadata,
compression, retries, errors and TLS."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode

from observability.otlp_grpc_exporter import TRACE_EXPORT_METHOD, otlp_grpc_span_exporter
from observability.span_exporters import build_exporter
from shared.bench.otlp_receiver import OtlpReceiver

VARIABLES = [
    f"OTEL_EXPORTER_OTLP_{scope}{name}"
    for scope in ("", "TRACES_")
    for name in ("ENDPOINT", "HEADERS", "TIMEOUT", "COMPRESSION", "CERTIFICATE", "INSECURE")
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def finished_spans() -> list[ReadableSpan]:
    """Spans of several shapes: attributes of each type, an event, a link, an error status."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("greenroom.observability.tracing", "1.0")
    producer = tracer.start_span("send default", kind=SpanKind.PRODUCER, attributes={"n": 1, "ok": True})
    producer.end()
    consumer = tracer.start_span(
        "process default",
        kind=SpanKind.CONSUMER,
        links=[Link(producer.get_span_context(), {"why": "producer"})],
        attributes={"messaging.system": "rabbitmq", "ratio": 0.5, "tags": ("a", "b")},
    )
    consumer.add_event("checkpoint", {"step": 2})
    consumer.set_status(StatusCode.ERROR, "ValueError: no")
    consumer.end()
    return list(memory.get_finished_spans())


def export_to(exporter: SpanExporter, spans: list[ReadableSpan]) -> SpanExportResult:
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def test_the_receiver_gets_what_the_sdk_grpc_exporter_sends() -> None:
    spans = finished_spans()
    requests: dict[str, list[ExportTraceServiceRequest]] = {"ours": [], "sdk": []}
    for name, make in (
        ("ours", otlp_grpc_span_exporter),
        ("sdk", lambda endpoint: OTLPSpanExporter(endpoint=endpoint)),
    ):
        with OtlpReceiver.start("grpc") as receiver:
            receiver.record = requests[name].append  # type: ignore[assignment]  # keep whole requests
            assert export_to(make(receiver.endpoint), spans) is SpanExportResult.SUCCESS
    [ours], [sdk] = requests["ours"], requests["sdk"]
    assert ours == sdk
    assert len(ours.resource_spans[0].scope_spans[0].spans) == 2


@dataclass
class Scripted:
    """A gRPC server whose Export answers with the status codes it is given, in turn (then OK)."""

    statuses: list[grpc.StatusCode] = field(default_factory=list)
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0


def _serve(state: Scripted, credentials: grpc.ServerCredentials | None = None) -> Iterator[Scripted]:
    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = {item.key: item.value for item in context.invocation_metadata()}
        state.calls.append((metadata, request))
        if state.statuses:
            context.abort(state.statuses.pop(0), "scripted")
        return bytes(ExportTraceServiceResponse().SerializeToString())

    service, method = TRACE_EXPORT_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(export)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    address = "127.0.0.1:0"
    state.port = (
        server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    )
    server.start()
    try:
        yield state
    finally:
        server.stop(grace=None)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    yield from _serve(Scripted())


def test_headers_from_the_variables_with_gzip(scripted: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization=Bearer%20s3cret,x-tenant=blue")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    spans = finished_spans()
    exporter = otlp_grpc_span_exporter(f"http://127.0.0.1:{scripted.port}")
    assert export_to(exporter, spans) is SpanExportResult.SUCCESS
    [(metadata, body)] = scripted.calls
    assert metadata["authorization"] == "Bearer s3cret"
    assert metadata["x-tenant"] == "blue"
    assert metadata["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    assert len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans) == 2


def test_unavailable_is_retried_with_the_same_request(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted.statuses += [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{scripted.port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "20")
    assert export_to(otlp_grpc_span_exporter(), finished_spans()) is SpanExportResult.SUCCESS
    assert len(scripted.calls) == 3
    assert scripted.calls[0][1] == scripted.calls[2][1]


def test_a_rejected_request_fails_at_once(scripted: Scripted, caplog: pytest.LogCaptureFixture) -> None:
    scripted.statuses.append(grpc.StatusCode.INVALID_ARGUMENT)
    exporter = otlp_grpc_span_exporter(f"http://127.0.0.1:{scripted.port}")
    assert export_to(exporter, finished_spans()) is SpanExportResult.FAILURE
    assert len(scripted.calls) == 1
    assert "INVALID_ARGUMENT" in caplog.text


def test_tls_with_the_configured_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    for state in _serve(Scripted(), credentials):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
        exporter = otlp_grpc_span_exporter(f"https://localhost:{state.port}")
        assert export_to(exporter, finished_spans()) is SpanExportResult.FAILURE  # system CAs
        assert state.calls == []
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(cert))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "5")
        exporter = otlp_grpc_span_exporter(f"https://localhost:{state.port}")
        assert export_to(exporter, finished_spans()) is SpanExportResult.SUCCESS
        assert len(state.calls) == 1


def test_build_exporter_gives_greenroom_s_grpc_exporter() -> None:
    exporter = build_exporter("grpc", "http://127.0.0.1:4317")
    try:
        assert type(exporter).__name__ == "BytesOtlpSpanExporter"
        assert isinstance(exporter, OTLPSpanExporter)
    finally:
        exporter.shutdown()
