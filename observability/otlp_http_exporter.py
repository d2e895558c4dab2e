"""OTLP/HTTP span exporter: greenroom's encoder, OpenTelemetry's client, a light transport.

It behaves as the exporter of ``opentelemetry-exporter-otlp-proto-http``
and reads the same variables (OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, HEADERS,
TIMEOUT, COMPRESSION, CERTIFICATE, CLIENT_CERTIFICATE, CLIENT_KEY); sending,
retries with backoff and Retry-After, and compression are the library's own
OTLP client (reached through :mod:`observability.opentelemetry_compat`). Two parts differ:

- spans become bytes through :mod:`observability.otlp_encoding`;
- requests go through :class:`observability.http_transport.StdlibHttpTransport`,
  so neither ``requests`` nor the protobuf runtime is loaded.

    provider.add_span_processor(BatchSpanProcessor(OtlpHttpSpanExporter()))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

from observability.http_transport import StdlibHttpTransport
from observability.opentelemetry_compat import (
    DEFAULT_MAX_REQUEST_SIZE,
    BaseHTTPTransport,
    OtlpHttpClient,
    RequestPayloadTooLargeError,
    http_exporter_metrics,
    is_request_too_large,
    resolve_compression,
    resolve_endpoint,
    resolve_headers,
    resolve_timeout,
)
from observability.otlp_encoding import OtlpSpanEncoder

logger = logging.getLogger("greenroom.tracing")


def traces_endpoint() -> str:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces."""
    return resolve_endpoint(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "v1/traces")


class OtlpHttpSpanExporter(SpanExporter):
    """Spans to an OTLP/HTTP endpoint, configured by the OTEL_EXPORTER_OTLP_* variables.

    ``endpoint`` (the full URL, ``.../v1/traces``) replaces the endpoint variables;
    ``transport`` replaces the standard-library one (tests); ``max_request_size``
    (bytes before compression, 0 for no limit) defaults to the library's 64 MiB.
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        transport: BaseHTTPTransport | None = None,
        max_request_size: int | None = None,
    ) -> None:
        endpoint = endpoint or traces_endpoint()
        self._client = OtlpHttpClient(
            transport=transport or StdlibHttpTransport(verify=_tls_verify(), cert=_client_certificate()),
            endpoint=endpoint,
            kind="spans",
            timeout=resolve_timeout(OTEL_EXPORTER_OTLP_TRACES_TIMEOUT),
            compression=resolve_compression(OTEL_EXPORTER_OTLP_TRACES_COMPRESSION),
            headers=resolve_headers(None, OTEL_EXPORTER_OTLP_TRACES_HEADERS),
            logger=logger,
        )
        self._max_request_size = DEFAULT_MAX_REQUEST_SIZE if max_request_size is None else max_request_size
        self._metrics = http_exporter_metrics(endpoint)
        self._encoder = OtlpSpanEncoder()
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            logger.warning("Span exporter already shut down; %d spans dropped.", len(spans))
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                payload = self._encoder.encode(spans)
            except Exception as error:  # a span the encoder cannot represent: drop the batch, say why
                logger.error("Failed to encode %d spans: %s", len(spans), error)
                result.error = error
                return SpanExportResult.FAILURE
            if is_request_too_large(payload, self._max_request_size):
                logger.warning(
                    "Dropping %d spans: %d bytes exceed the %d-byte request limit.",
                    len(spans),
                    len(payload),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"span request of {len(payload)} bytes exceeds {self._max_request_size} bytes"
                )
                return SpanExportResult.FAILURE
            sent = self._client.export(payload)
            if not sent.success:
                result.error = sent.error
                if sent.status_code is not None:
                    result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._client.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here (the BatchSpanProcessor holds the spans)."""
        return True


def _tls_verify() -> bool | str:
    """The CA file to trust (OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE), else the system's CAs."""
    return (
        os.environ.get(OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE)
        or os.environ.get(OTEL_EXPORTER_OTLP_CERTIFICATE)
        or True
    )


def _client_certificate() -> str | tuple[str, str] | None:
    """The client certificate (and key) for mTLS, as the library resolves them."""
    environ = os.environ
    certificate = environ.get(OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE) or environ.get(
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE
    )
    key = environ.get(OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY) or environ.get(OTEL_EXPORTER_OTLP_CLIENT_KEY)
    if certificate and key:
        return certificate, key
    return certificate or None
