"""Create, flush and shut down the OpenTelemetry TracerProvider of one process.

The SDK reads its own environment variables here, as the specification
defines them: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT / HEADERS / TIMEOUT,
OTEL_TRACES_SAMPLER(_ARG), OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME,
OTEL_BSP_*. The caller picks the protocol and the defaults.

Create the provider in the process that will export: a BatchSpanProcessor's
thread does not survive fork, so worker processes call this after Dramatiq
has forked them.

>>> provider = configure_tracer_provider(
...     default_service_name="greenroom-worker", service_version="0.1.0",
...     process_type="reports", protocol="http/protobuf")
>>> shutdown_tracer_provider(provider, timeout_seconds=5)
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.request
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit

import dramatiq
from dramatiq.middleware import Middleware
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

logger = logging.getLogger("greenroom.tracing")

OtlpProtocol = Literal["grpc", "http/protobuf"]

#: Resource attribute naming the process type (Procfile / compose service).
PROCESS_TYPE_ATTRIBUTE = "greenroom.process.type"


#: Variables naming a ``requests`` session factory for OTLP/HTTP (the library's exporter handles them).
CREDENTIAL_PROVIDER_VARIABLES = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
)


def build_exporter(protocol: OtlpProtocol) -> SpanExporter:
    """The OTLP span exporter for ``protocol``; endpoint and headers come from OTEL_* variables.

    For http/protobuf it is greenroom's light exporter, except where only the
    library's ``requests``-based one can do the job: an HTTP(S)_PROXY that
    applies to the endpoint, or a credential-provider session.
    """
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from observability.otlp_http_exporter import OtlpHttpSpanExporter, traces_endpoint

    if _proxied(traces_endpoint()) or any(os.environ.get(name) for name in CREDENTIAL_PROVIDER_VARIABLES):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    return OtlpHttpSpanExporter()


def _proxied(url: str) -> bool:
    """Whether the proxy variables (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY) send
    ``url`` through a proxy."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxied = parts.scheme in proxies or "all" in proxies
    return proxied and not urllib.request.proxy_bypass(parts.hostname or "")


#: Spans per export request unless OTEL_BSP_MAX_EXPORT_BATCH_SIZE (or OTEL_BSP_MAX_QUEUE_SIZE)
#: is set. With the SDK's 512 a busy worker holds more finished spans at once (a batch
#: being sent while the next fills): `greenroom bench` measured a peak RSS of 48.9 MiB
#: per worker process with 512 and 46.6 MiB with 128 (N=8000, P=2, T=8), the same CPU.
EXPORT_BATCH_SIZE = 128


def _export_batch_size() -> int | None:
    """greenroom's default batch size, or None to let the SDK read its OTEL_BSP_* variables."""
    if os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE"):
        return None
    return EXPORT_BATCH_SIZE


def build_resource(*, default_service_name: str, service_version: str, process_type: str) -> Resource:
    """Resource with service.version and the process type; OTEL_SERVICE_NAME and a
    service.name in OTEL_RESOURCE_ATTRIBUTES win over ``default_service_name``."""
    resource = Resource.create({SERVICE_VERSION: service_version, PROCESS_TYPE_ATTRIBUTE: process_type})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    return resource


def configure_tracer_provider(
    *,
    default_service_name: str,
    service_version: str,
    process_type: str,
    protocol: OtlpProtocol,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Create the process's TracerProvider (batching to OTLP) and make it the global one.

    The SDK's own exit hook is off (it may wait 30 s for an unreachable
    collector); callers flush with :func:`shutdown_tracer_provider`.
    """
    provider = TracerProvider(
        resource=build_resource(
            default_service_name=default_service_name,
            service_version=service_version,
            process_type=process_type,
        ),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(
        BatchSpanProcessor(exporter or build_exporter(protocol), max_export_batch_size=_export_batch_size())
    )
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracer_provider(provider: TracerProvider, *, timeout_seconds: float) -> bool:
    """Export pending spans and stop, waiting at most ``timeout_seconds``.

    The SDK's own shutdown may block for 30 s on an unreachable collector; a
    stopping worker cannot wait that long. Returns False if time ran out
    (the spans still queued are then lost, and a warning says so).
    """
    done = threading.Event()

    def shutdown() -> None:
        provider.shutdown()
        done.set()

    threading.Thread(target=shutdown, name="greenroom-tracing-shutdown", daemon=True).start()
    if done.wait(timeout_seconds):
        return True
    logger.warning("Span export did not finish within %.1fs; pending spans are dropped.", timeout_seconds)
    return False


class TracerProviderLifecycle(Middleware):
    """Creates the TracerProvider in each worker process once Dramatiq has forked
    it, and flushes it when the worker shuts down (bounded by ``flush_timeout_seconds``).

    >>> broker.add_middleware(TracerProviderLifecycle(factory=make_provider, flush_timeout_seconds=5))
    """

    def __init__(self, *, factory: Callable[[], TracerProvider], flush_timeout_seconds: float) -> None:
        self.factory = factory
        self.flush_timeout_seconds = flush_timeout_seconds
        self.provider: TracerProvider | None = None

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        self.provider = self.factory()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.provider is None:
            return
        if shutdown_tracer_provider(self.provider, timeout_seconds=self.flush_timeout_seconds):
            logger.info("Spans flushed.")
        self.provider = None
