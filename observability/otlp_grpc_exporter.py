"""OTLP/gRPC span exporter: greenroom's encoder, the SDK's gRPC exporter for the rest.

The request is the ``ExportTraceServiceRequest`` that :mod:`observability.otlp_encoding`
writes, sent as it is through a unary call on the collector's trace service
(``channel.unary_unary`` with a bytes serializer). Endpoint, TLS or insecure
credentials, OTEL_EXPORTER_OTLP_(TRACES_)HEADERS / TIMEOUT / COMPRESSION / CERTIFICATE,
retries and reconnection are those of ``opentelemetry-exporter-otlp-proto-grpc``
(through :func:`observability.opentelemetry_compat.grpc_exporter_sending_bytes`).

    exporter = otlp_grpc_span_exporter("http://collector:4317")
    provider.add_span_processor(BatchSpanProcessor(exporter))
"""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.sdk.trace.export import SpanExporter

from observability.opentelemetry_compat import grpc_exporter_sending_bytes
from observability.otlp_encoding import OtlpSpanEncoder

#: The collector's trace export method (opentelemetry/proto/collector/trace/v1/trace_service.proto).
TRACE_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _as_is(payload: bytes) -> bytes:
    return payload


class BytesTraceServiceStub:
    """The trace service's ``Export`` call on ``channel``, taking and returning serialised bytes
    (the reply, an ``ExportTraceServiceResponse``, is not decoded: nothing reads it)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Export: Any = channel.unary_unary(
            TRACE_EXPORT_METHOD, request_serializer=_as_is, response_deserializer=_as_is
        )


def otlp_grpc_span_exporter(endpoint: str | None = None) -> SpanExporter:
    """A span exporter to the OTLP/gRPC ``endpoint`` (else the OTEL_EXPORTER_OTLP_* variables').

    Raises ImportError or AttributeError when the SDK's gRPC exporter has changed the
    parts it is built from (the caller then uses the library's exporter).
    """
    exporter_class = grpc_exporter_sending_bytes(BytesTraceServiceStub, OtlpSpanEncoder().encode)
    return exporter_class(endpoint=endpoint)  # type: ignore[call-arg]
