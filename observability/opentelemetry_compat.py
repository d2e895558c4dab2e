"""The private parts of the OpenTelemetry packages that greenroom uses, and nothing else.

Written against opentelemetry-api, -sdk, -proto, -exporter-otlp, -exporter-otlp-proto-common,
-exporter-otlp-proto-http and -exporter-otlp-proto-grpc 1.45.2, and
opentelemetry-exporter-otlp-common, -exporter-http-transport and -semantic-conventions
0.66b2 (see constraints.txt). tests/unit/test_opentelemetry_compat.py fails when one of
those packages changes what this module relies on.

Each part stands on its own (the first two are built when this module is imported,
the others when first used):

- the messaging semantic-convention names (``semconv._incubating``); without them the
  names are the specification's strings, which the test compares with the library's;
- the OTLP/HTTP client parts (``_OTLPHTTPClient``, its transport interface, the
  ``_resolve_*`` helpers, request-size check and exporter metrics), for
  :mod:`observability.otlp_http_exporter`;
- :func:`grpc_exporter_sending_bytes`, for :mod:`observability.otlp_grpc_exporter`;
- :func:`tracer_parts` and :class:`ConsumerSpan`, for :mod:`observability.consumer_span`.

A part that cannot be built (a name moved, or an installed version outside the
release series above) raises ImportError or AttributeError where it is used (an
import-time part is also recorded in :data:`UNAVAILABLE`), and the caller falls back to
the library's public exporter or the SDK's spans (:func:`observability.fallbacks.report_fallback`
says so, loudly).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from time import time_ns
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind
from opentelemetry.util import types

logger = logging.getLogger("greenroom.tracing")

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


# Consumer spans -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TracerParts:
    """What an SDK Tracer keeps to itself and a consumer span made beside it needs."""

    limits: SpanLimits
    scope: InstrumentationScope
    is_enabled: Callable[[], bool]
    #: Counts a started span in the SDK's span metrics; returns what counts its end.
    start_span_metrics: Callable[[SpanContext | None, Decision], Callable[[], None]]


def tracer_parts(tracer: SdkTracer) -> TracerParts:
    """``tracer``'s limits, scope, enabled switch and span metrics.

    Raises AttributeError if the SDK moved them, IncompatibleOpenTelemetry outside the
    SDK release series :class:`ConsumerSpan` was written against.
    """
    check_versions({name: WRITTEN_AGAINST[name] for name in ("opentelemetry-api", "opentelemetry-sdk")})
    return TracerParts(
        limits=tracer._span_limits,
        scope=tracer._instrumentation_scope,
        is_enabled=tracer._is_enabled,
        start_span_metrics=tracer._tracer_metrics.start_span,
    )


class ConsumerSpan(SdkSpan):
    """The SDK's Span, made for less: three things differ, none visible to its users.

    - The attributes it starts with stay the dict given (greenroom wrote them); they
      become the SDK's ``BoundedAttributes`` (validation, limits) on the first change,
      or at once when the span limits are tight enough to matter.
    - The links it starts with stay the tuple given (the caller drops links to nothing,
      as the SDK does), until a link is added or the limit matters.
    - ``end`` gives the processors the span itself instead of a read-only copy (an
      ended span takes no change); it calls the span metrics and ``_on_ending`` as the SDK does.
    """

    def __init__(
        self,
        *,
        tracer: SdkTracer,
        parts: TracerParts,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, types.AnyValue],
        links: tuple[Link, ...],
        record_end_metrics: Callable[[], None],
    ) -> None:
        super().__init__(
            name=name,
            context=context,
            parent=parent,
            sampler=tracer.sampler,
            resource=tracer.resource,
            kind=SpanKind.CONSUMER,
            span_processor=tracer.span_processor,
            limits=parts.limits,
            instrumentation_scope=parts.scope,
            record_end_metrics=record_end_metrics,
        )
        limits = parts.limits
        maximum = limits.max_span_attributes
        self._attributes: Any = attributes
        if limits.max_span_attribute_length is not None or (
            maximum is not None and len(attributes) > maximum
        ):
            self._bound_attributes()
        self._links: Any = links
        if limits.max_links is not None and len(links) > limits.max_links:
            self._links = BoundedList.from_seq(limits.max_links, links)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        self._bound_attributes()
        super().set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        self._bound_attributes()
        super().set_attributes(attributes)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        with self._lock:
            if type(self._links) is not BoundedList:
                self._links = BoundedList.from_seq(self._limits.max_links, self._links)
        super().add_link(context, attributes)

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            if type(self._attributes) is BoundedAttributes:
                self._attributes._immutable = True
        if self._record_end_metrics:
            self._record_end_metrics()
        self._span_processor._on_ending(self)
        self._span_processor.on_end(self)

    def _bound_attributes(self) -> None:
        with self._lock:
            if type(self._attributes) is dict and self._end_time is None:
                self._attributes = BoundedAttributes(
                    self._limits.max_span_attributes,
                    self._attributes,
                    immutable=False,
                    max_value_len=self._limits.max_span_attribute_length,
                )
