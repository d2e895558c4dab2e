"""The OTLP span exporter of a process: greenroom's fast one, else the library's, loudly.

For either protocol the fast exporter encodes spans with :mod:`observability.otlp_encoding`
(:mod:`observability.otlp_http_exporter`, :mod:`observability.otlp_grpc_exporter`). When
it cannot be built (the OpenTelemetry packages changed a private part it relies on, see
:mod:`observability.opentelemetry_compat`) the process uses the library's public
``OTLPSpanExporter`` instead and says so: one ERROR line and ``greenroom_degraded``.

:class:`DropWhileUnreachable` wraps an exporter for short-lived processes.

    exporter = DropWhileUnreachable(build_exporter("http/protobuf", url), endpoint=url)
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Literal
from urllib.parse import urlsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from observability.fallbacks import report_fallback

logger = logging.getLogger("greenroom.tracing")

OtlpProtocol = Literal["grpc", "http/protobuf"]

#: Variables naming a ``requests`` session factory for OTLP/HTTP (the library's exporter handles them).
CREDENTIAL_PROVIDER_VARIABLES = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
)

#: The component names report_fallback gives, by protocol (as opentelemetry_compat names them).
FALLBACK_COMPONENTS = {"http/protobuf": "OTLP http/protobuf span export", "grpc": "OTLP grpc span export"}


def build_exporter(protocol: OtlpProtocol, endpoint: str | None = None) -> SpanExporter:
    """The OTLP span exporter for ``protocol``, sending to ``endpoint`` (for OTLP/HTTP the
    full URL, ``.../v1/traces``); without one, the OTEL_EXPORTER_OTLP_* variables say where.

    The library's exporter is used where only it can do the job (for http/protobuf: an
    HTTP(S)_PROXY that applies to the endpoint, or a credential-provider session), and
    where greenroom's cannot be built (reported by :func:`report_fallback`).
    """
    component = FALLBACK_COMPONENTS[protocol]
    try:
        return _fast_exporter(protocol, endpoint)
    except (ImportError, AttributeError) as error:
        report_fallback(component, _unavailable_reason(component) or f"{type(error).__name__}: {error}")
        return library_exporter(protocol, endpoint)


def _unavailable_reason(component: str) -> str | None:
    """Why opentelemetry_compat could not build ``component``, if it says."""
    try:
        compat = importlib.import_module("observability.opentelemetry_compat")
    except ImportError:
        return None
    reason: str | None = compat.UNAVAILABLE.get(component)
    return reason


def library_exporter(protocol: OtlpProtocol, endpoint: str | None = None) -> SpanExporter:
    """The exporter of ``opentelemetry-exporter-otlp`` for ``protocol``."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=endpoint)


def _fast_exporter(protocol: OtlpProtocol, endpoint: str | None) -> SpanExporter:
    # Looked up at each call (not imported at the top) so that a part that cannot be
    # built is an ImportError here, where the fallback is.
    if protocol == "grpc":
        grpc_module = importlib.import_module("observability.otlp_grpc_exporter")
        exporter: SpanExporter = grpc_module.otlp_grpc_span_exporter(endpoint)
        return exporter
    http_module = importlib.import_module("observability.otlp_http_exporter")
    endpoint = endpoint or http_module.traces_endpoint()
    if _proxied(endpoint) or any(os.environ.get(name) for name in CREDENTIAL_PROVIDER_VARIABLES):
        return library_exporter(protocol, endpoint)
    exporter = http_module.OtlpHttpSpanExporter(endpoint=endpoint)
    return exporter


def _proxied(url: str) -> bool:
    """Whether the proxy variables (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY) send
    ``url`` through a proxy."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxied = parts.scheme in proxies or "all" in proxies
    return proxied and not urllib.request.proxy_bypass(parts.hostname or "")


class DropWhileUnreachable(SpanExporter):
    """Drops span batches while nothing accepts a connection at the collector's address,
    with one warning per outage, instead of the exporter's retries and a warning per
    batch and retry.

    For short-lived processes (``greenroom send``, ``check``, ``dlq``): without a
    collector they exit at once instead of waiting out the retries. Before each batch
    it opens (and closes) a TCP connection to the endpoint, waiting at most
    ``connect_timeout_seconds``; after a failure it drops batches without trying for
    ``recheck_seconds``. An endpoint reached through a proxy is not checked.

    ``exporter = DropWhileUnreachable(build_exporter("http/protobuf", url), endpoint=url)``
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        endpoint: str,
        connect_timeout_seconds: float = 1.0,
        recheck_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.exporter = exporter
        self.endpoint = endpoint
        self.connect_timeout_seconds = connect_timeout_seconds
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self._down_until: float | None = None  # set while the collector is unreachable

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._down_until is not None and self.clock() < self._down_until:
            return SpanExportResult.FAILURE
        problem = (
            None
            if _proxied(self.endpoint)
            else connection_problem(self.endpoint, self.connect_timeout_seconds)
        )
        if problem is None:
            self._down_until = None
            return self.exporter.export(spans)
        if self._down_until is None:
            logger.warning(
                "Spans not exported: no OTLP collector accepts connections at %s (%s); "
                "this process drops its spans while it is unreachable.",
                self.endpoint,
                problem,
            )
        self._down_until = self.clock() + self.recheck_seconds
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def connection_problem(endpoint: str, timeout_seconds: float) -> str | None:
    """Why a TCP connection to ``endpoint``'s host and port fails (None if it opens).

    >>> connection_problem("http://127.0.0.1:9/v1/traces", 1.0)
    '[Errno 111] Connection refused'
    """
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=timeout_seconds).close()
    except OSError as error:
        return str(error) or type(error).__name__
    return None
