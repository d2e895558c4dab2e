"""What observability.opentelemetry_compat relies on in the OpenTelemetry packages is still there
and behaves as it did (these fail when an upgrade changes it)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import subprocess
import sys

import pytest
from opentelemetry.exporter.otlp.common.http import Compression
from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision

from observability import opentelemetry_compat as compat
from observability.otlp_grpc_exporter import BytesTraceServiceStub, otlp_grpc_span_exporter


def test_every_part_is_built_against_the_installed_packages() -> None:
    assert compat.UNAVAILABLE == {}
    compat.check_versions(compat.WRITTEN_AGAINST | compat.GRPC_WRITTEN_AGAINST)
    for distribution, tested in (compat.WRITTEN_AGAINST | compat.GRPC_WRITTEN_AGAINST).items():
        installed = importlib.metadata.version(distribution)
        assert compat.release_series(installed) == compat.release_series(tested), distribution


def test_a_version_outside_the_release_series_is_refused() -> None:
    with pytest.raises(compat.IncompatibleOpenTelemetry, match=r"written against 1\.46\.0"):
        compat.check_versions({"opentelemetry-sdk": "1.46.0"})
    with pytest.raises(compat.IncompatibleOpenTelemetry, match="not installed"):
        compat.check_versions({"opentelemetry-no-such-distribution": "1.45.2"})
    assert issubclass(compat.IncompatibleOpenTelemetry, ImportError)  # callers catch ImportError


def test_messaging_names_are_the_specification_strings() -> None:
    assert (
        compat.MESSAGING_SYSTEM,
        compat.MESSAGING_OPERATION_TYPE,
        compat.MESSAGING_OPERATION_NAME,
        compat.MESSAGING_DESTINATION_NAME,
        compat.MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
        compat.MESSAGING_MESSAGE_ID,
        compat.MESSAGING_BATCH_MESSAGE_COUNT,
        compat.RABBITMQ,
        compat.OPERATION_TYPE_SEND,
        compat.OPERATION_TYPE_PROCESS,
    ) == (
        "messaging.system",
        "messaging.operation.type",
        "messaging.operation.name",
        "messaging.destination.name",
        "messaging.rabbitmq.destination.routing_key",
        "messaging.message.id",
        "messaging.batch.message_count",
        "rabbitmq",
        "send",
        "process",
    )


def test_the_http_client_and_its_transport_interface_keep_their_shape() -> None:
    assert compat.BaseHTTPTransport.__abstractmethods__ == {"request", "is_connection_error", "close"}
    assert compat.BaseHTTPResult.__abstractmethods__ == {"content", "headers"}
    assert [f.name for f in dataclasses.fields(compat.BaseHTTPResult)] == ["status_code", "reason", "error"]
    parameters = inspect.signature(compat.OtlpHttpClient).parameters
    assert {"transport", "endpoint", "kind", "timeout", "compression", "headers", "logger"} <= set(parameters)
    assert list(inspect.signature(compat.OtlpHttpClient.export).parameters) == ["self", "data"]
    assert list(inspect.signature(compat.OtlpHttpClient.shutdown).parameters) == ["self"]


def test_the_resolve_helpers_read_the_variables_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENDPOINT", "HEADERS", "TIMEOUT", "COMPRESSION"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_TRACES_{name}", raising=False)
    assert compat.resolve_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "v1/traces") == (
        "http://localhost:4318/v1/traces"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")
    assert (
        compat.resolve_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "v1/traces")
        == "http://c:4318/v1/traces"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=1,b=x%20y")
    headers = compat.resolve_headers(None, "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    assert headers["a"] == "1" and headers["b"] == "x y"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    assert compat.resolve_timeout("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") == 10.0
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2.5")
    assert compat.resolve_timeout("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") == 2.5
    assert compat.resolve_compression("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION") is Compression.NONE
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    assert compat.resolve_compression("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION") is Compression.GZIP


def test_request_size_limit_and_exporter_metrics() -> None:
    assert compat.DEFAULT_MAX_REQUEST_SIZE == 64 * 1024 * 1024
    assert compat.is_request_too_large(b"xyz", 2)
    assert not compat.is_request_too_large(b"xyz", 3)
    assert not compat.is_request_too_large(b"xyz", 0)  # 0: no limit
    assert issubclass(compat.RequestPayloadTooLargeError, Exception)
    with compat.http_exporter_metrics("http://c:4318/v1/traces").export_operation(3) as result:
        result.error = ValueError("x")
        result.error_attrs = {"http.response.status_code": 500}


def test_the_grpc_exporter_hooks_are_where_the_adapter_puts_its_stub() -> None:
    for hook in ("_translate_data", "_initialize_channel_and_stub", "_export"):
        assert callable(getattr(OTLPExporterMixin, hook))
    source = inspect.getsource(OTLPExporterMixin._export)
    assert "self._client.Export(" in source and "request=self._translate_data(data)" in source
    assert "self._client = self._stub(self._channel)" in inspect.getsource(
        OTLPExporterMixin._initialize_channel_and_stub
    )
    exporter = otlp_grpc_span_exporter("http://127.0.0.1:4317")
    try:
        assert isinstance(exporter._client, BytesTraceServiceStub)  # type: ignore[attr-defined]
        exporter._initialize_channel_and_stub()  # type: ignore[attr-defined]  # as after UNAVAILABLE
        assert isinstance(exporter._client, BytesTraceServiceStub)  # type: ignore[attr-defined]
        assert exporter._translate_data([]) == b""  # type: ignore[attr-defined]
    finally:
        exporter.shutdown()


def test_a_missing_private_name_makes_its_part_unavailable() -> None:
    probe = (
        "from opentelemetry.exporter.otlp.common import http\n"
        "del http._OTLPHTTPClient\n"
        "from observability import opentelemetry_compat as compat\n"
        "print(sorted(compat.UNAVAILABLE), compat.UNAVAILABLE[compat.OTLP_HTTP_EXPORT])\n"
        "from observability.otlp_http_exporter import OtlpHttpSpanExporter\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert completed.stdout.startswith("['OTLP http/protobuf span export'] AttributeError:")
    assert "_OTLPHTTPClient" in completed.stdout
    assert "ImportError: cannot import name" in completed.stderr  # the fast path cannot be built


def test_the_sdk_span_still_works_as_consumer_span_expects() -> None:
    tracer = TracerProvider().get_tracer("x")
    assert isinstance(tracer, SdkTracer)
    span = tracer.start_span("s")
    for name in ("_attributes", "_links", "_lock", "_end_time", "_start_time", "_span_processor", "_limits"):
        assert hasattr(span, name), name
    assert hasattr(span, "_record_end_metrics")
    span.end()
    # ConsumerSpan.end states Span.end again (less the read-only copy): fail when the SDK changes it.
    end = inspect.getsource(SdkSpan.end)
    for statement in (
        "self._end_time = end_time if end_time is not None else time_ns()",
        "self._attributes._immutable = True",
        "self._record_end_metrics()",
        "self._span_processor._on_ending(self)",
        "self._span_processor.on_end(self._readable_span())",
    ):
        assert statement in end, statement
    assert "self._attributes[key] = value" in inspect.getsource(SdkSpan.set_attribute)
    assert "self._attributes._set_items(attributes)" in inspect.getsource(SdkSpan.set_attributes)
    assert "self._links.append(link)" in inspect.getsource(sdk_trace)  # in _add_link


def test_tracer_parts_are_the_tracer_s_own() -> None:
    provider = TracerProvider(span_limits=SpanLimits(max_links=3))
    tracer = provider.get_tracer("greenroom", "1.0")
    assert isinstance(tracer, SdkTracer)
    parts = compat.tracer_parts(tracer)
    assert parts.limits.max_links == 3
    assert parts.scope.name == "greenroom" and parts.scope.version == "1.0"
    assert parts.is_enabled() is True
    end_metrics = parts.start_span_metrics(None, Decision.RECORD_AND_SAMPLE)
    assert callable(end_metrics)
    end_metrics()
