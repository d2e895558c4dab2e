"""OTLP/HTTP span exporter that encodes with :mod:`observability.otlp_encoding`.

It is the exporter from ``opentelemetry-exporter-otlp-proto-http`` in every
respect (OTEL_EXPORTER_OTLP_* endpoint, headers, TLS, compression, timeout,
retries with backoff, request-size limit, its own metrics) except how a batch
of spans becomes bytes, which costs about a tenth of the CPU.

>>> provider.add_span_processor(BatchSpanProcessor(OtlpHttpSpanExporter()))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError, _is_request_too_large
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

from observability.otlp_encoding import encode_spans

logger = logging.getLogger("greenroom.tracing")


class OtlpHttpSpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter`` (HTTP/protobuf) with greenroom's span encoder."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            logger.warning("Span exporter already shut down; %d spans dropped.", len(spans))
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                payload = encode_spans(spans)
            except Exception as error:  # a span the encoder cannot represent: drop the batch, say why
                logger.error("Failed to encode %d spans: %s", len(spans), error)
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(payload, self._max_request_size):
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
