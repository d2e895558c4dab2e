"""What observability.opentelemetry_compat relies on in the OpenTelemetry packages is still there
and behaves as it did (these fail when an upgrade changes it)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect

import pytest
from opentelemetry.exporter.otlp.common.http import Compression
from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin

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


def test_a_missing_private_name_makes_its_part_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.common import http

    monkeypatch.delattr(http, "_OTLPHTTPClient")
    saved = dict(compat.UNAVAILABLE)
    try:
        importlib.reload(compat)
        assert "_OTLPHTTPClient" in compat.UNAVAILABLE[compat.OTLP_HTTP_EXPORT]
        assert compat.MESSAGING_NAMES not in compat.UNAVAILABLE
    finally:
        monkeypatch.undo()
        importlib.reload(compat)
    assert saved == compat.UNAVAILABLE
