"""The private parts of the OpenTelemetry packages that greenroom uses, and nothing else.

Written against opentelemetry-api, -sdk, -proto, -exporter-otlp, -exporter-otlp-proto-common,
-exporter-otlp-proto-http and -exporter-otlp-proto-grpc 1.45.2, and
opentelemetry-exporter-otlp-common, -exporter-http-transport and -semantic-conventions
0.66b2 (see constraints.txt). tests/unit/test_opentelemetry_compat.py fails when one of
those packages changes what this module relies on.

Each part is built when this module is imported, on its own:

- the messaging semantic-convention names (``semconv._incubating``); without them the
  names are the specification's strings, which the test compares with the library's;
- the OTLP/HTTP client parts (``_OTLPHTTPClient``, its transport interface, the
  ``_resolve_*`` helpers, request-size check and exporter metrics), for
  :mod:`observability.otlp_http_exporter`;
- :func:`grpc_exporter_sending_bytes`, for :mod:`observability.otlp_grpc_exporter`.

A part that cannot be built (a name moved, or an installed version outside the
release series above) is recorded in :data:`UNAVAILABLE`; importing one of its names
then raises ImportError, and the caller falls back to the library's public exporter
(:func:`observability.fallbacks.report_fallback` says so, loudly).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter

#: The distributions this module was written against, with the versions tested.
WRITTEN_AGAINST = {
    "opentelemetry-api": "1.45.2",
    "opentelemetry-sdk": "1.45.2",
    "opentelemetry-proto": "1.45.2",
    "opentelemetry-exporter-otlp-proto-common": "1.45.2",
    "opentelemetry-exporter-otlp-proto-http": "1.45.2",
    "opentelemetry-exporter-otlp-common": "0.66b2",
    "opentelemetry-exporter-http-transport": "0.66b2",
    "opentelemetry-semantic-conventions": "0.66b2",
}
#: The gRPC exporter's distribution, checked only when gRPC is used.
GRPC_WRITTEN_AGAINST = {"opentelemetry-exporter-otlp-proto-grpc": "1.45.2"}

#: The parts of this module that could not be built, with the reason for each.
UNAVAILABLE: dict[str, str] = {}

#: The names of the parts, as :func:`observability.fallbacks.report_fallback` reports them.
MESSAGING_NAMES = "messaging semantic conventions"
OTLP_HTTP_EXPORT = "OTLP http/protobuf span export"
OTLP_GRPC_EXPORT = "OTLP grpc span export"


class IncompatibleOpenTelemetry(ImportError):
    """An installed OpenTelemetry distribution is outside the release series this module knows."""


def release_series(version: str) -> str:
    """``major.minor`` of a version: ``1.45.2`` -> ``1.45``, ``0.66b2`` -> ``0.66``.

    >>> release_series("0.66b2")
    '0.66'
    """
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match[1]}.{match[2]}" if match else version


def check_versions(expected: dict[str, str]) -> None:
    """Raise IncompatibleOpenTelemetry unless each distribution is in its expected release series."""
    for distribution, tested in expected.items():
        try:
            installed = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError as error:
            raise IncompatibleOpenTelemetry(f"{distribution} is not installed") from error
        if release_series(installed) != release_series(tested):
            raise IncompatibleOpenTelemetry(
                f"{distribution} {installed} is installed; this code was written against {tested}"
            )


def _unavailable(part: str, error: Exception) -> None:
    UNAVAILABLE[part] = f"{type(error).__name__}: {error}"


# Messaging semantic conventions -------------------------------------------------------

try:
    from opentelemetry.semconv._incubating.attributes import messaging_attributes as _messaging

    MESSAGING_SYSTEM: str = _messaging.MESSAGING_SYSTEM
    MESSAGING_OPERATION_TYPE: str = _messaging.MESSAGING_OPERATION_TYPE
    MESSAGING_OPERATION_NAME: str = _messaging.MESSAGING_OPERATION_NAME
    MESSAGING_DESTINATION_NAME: str = _messaging.MESSAGING_DESTINATION_NAME
    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY: str = _messaging.MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY
    MESSAGING_MESSAGE_ID: str = _messaging.MESSAGING_MESSAGE_ID
    MESSAGING_BATCH_MESSAGE_COUNT: str = _messaging.MESSAGING_BATCH_MESSAGE_COUNT
    RABBITMQ: str = _messaging.MessagingSystemValues.RABBITMQ.value
    OPERATION_TYPE_SEND: str = _messaging.MessagingOperationTypeValues.SEND.value
    OPERATION_TYPE_PROCESS: str = _messaging.MessagingOperationTypeValues.PROCESS.value
except (ImportError, AttributeError) as error:
    _unavailable(MESSAGING_NAMES, error)
    MESSAGING_SYSTEM = "messaging.system"
    MESSAGING_OPERATION_TYPE = "messaging.operation.type"
    MESSAGING_OPERATION_NAME = "messaging.operation.name"
    MESSAGING_DESTINATION_NAME = "messaging.destination.name"
    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"
    MESSAGING_MESSAGE_ID = "messaging.message.id"
    MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
    RABBITMQ = "rabbitmq"
    OPERATION_TYPE_SEND = "send"
    OPERATION_TYPE_PROCESS = "process"


# OTLP/HTTP client ---------------------------------------------------------------------

try:
    check_versions(WRITTEN_AGAINST)
    from opentelemetry.exporter.http.transport import _base as _transport
    from opentelemetry.exporter.otlp.common import _exporter_metrics
    from opentelemetry.exporter.otlp.common import http as _otlp_http
    from opentelemetry.exporter.otlp.proto.http import _common as _http_common
    from opentelemetry.semconv._incubating.attributes import otel_attributes as _otel_attributes

    BaseHTTPResult = _transport.BaseHTTPResult
    BaseHTTPTransport = _transport.BaseHTTPTransport
    OtlpHttpClient = _otlp_http._OTLPHTTPClient
    DEFAULT_MAX_REQUEST_SIZE: int = _http_common._DEFAULT_MAX_REQUEST_SIZE
    RequestPayloadTooLargeError = _http_common.RequestPayloadTooLargeError
    is_request_too_large = _http_common._is_request_too_large
    resolve_compression = _http_common._resolve_compression
    resolve_endpoint = _http_common._resolve_endpoint
    resolve_headers = _http_common._resolve_headers
    resolve_timeout = _http_common._resolve_timeout
    create_exporter_metrics = _exporter_metrics.create_exporter_metrics
    OTLP_HTTP_SPAN_EXPORTER = _otel_attributes.OtelComponentTypeValues.OTLP_HTTP_SPAN_EXPORTER
except (ImportError, AttributeError) as error:
    _unavailable(OTLP_HTTP_EXPORT, error)


def sdk_internal_metrics_enabled() -> bool:
    """OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, read as the exporters read it."""
    return os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, "").strip().lower() == "true"


def http_exporter_metrics(endpoint: str) -> Any:
    """The SDK's own metrics of an OTLP/HTTP span exporter (no-ops unless internal metrics are on)."""
    return create_exporter_metrics(
        OTLP_HTTP_SPAN_EXPORTER, "traces", endpoint, None, sdk_internal_metrics_enabled()
    )


# OTLP/gRPC exporter -------------------------------------------------------------------


def grpc_exporter_sending_bytes(
    stub: Callable[[Any], Any], encode: Callable[[Sequence[ReadableSpan]], bytes]
) -> type[SpanExporter]:
    """The SDK's gRPC span exporter, sending ``encode(spans)`` through ``stub(channel).Export``.

    Everything else (endpoint, insecure/TLS credentials, headers, timeout, compression,
    retries with backoff and RetryInfo, a new channel after UNAVAILABLE, shutdown and
    the exporter's metrics) is the SDK's own. Its hooks: ``_translate_data`` builds the
    request and ``_stub`` (made into ``_client`` on ``_channel``) sends it. Raises
    ImportError or AttributeError when the SDK has changed them.
    """
    check_versions(GRPC_WRITTEN_AGAINST)
    from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    for hook in ("_translate_data", "_initialize_channel_and_stub", "_export"):
        getattr(OTLPExporterMixin, hook)

    class BytesOtlpSpanExporter(OTLPSpanExporter):
        """The SDK's gRPC span exporter with greenroom's encoder."""

        def __init__(self, endpoint: str | None = None) -> None:
            super().__init__(endpoint=endpoint)
            self._stub = stub
            self._client = stub(self._channel)

        def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]
            return encode(data)

    return BytesOtlpSpanExporter
