"""Create, flush and shut down the OpenTelemetry TracerProvider of one process.

The caller passes the endpoint, protocol, sampler, service name and batch
limits (greenroom takes them from its settings, so a value from ``.env`` is in
effect too). The OTLP exporters still read the variables the caller does not
pass (OTEL_EXPORTER_OTLP_(TRACES_)HEADERS / TIMEOUT / COMPRESSION / CERTIFICATE),
and OTEL_RESOURCE_ATTRIBUTES is merged into the resource, as the specification
defines them.

Create the provider in the process that will export: a BatchSpanProcessor's
thread does not survive fork, so worker processes call this after Dramatiq
has forked them.

    provider = configure_tracer_provider(
        default_service_name="greenroom-worker", service_version="0.1.0",
        process_type="reports", protocol="http/protobuf")
    shutdown_tracer_provider(provider, timeout_seconds=5)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import dramatiq
from dramatiq.middleware import Middleware
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from observability import opentelemetry_compat
from observability.fallbacks import report_fallback
from observability.span_exporters import DropWhileUnreachable, OtlpProtocol, build_exporter

logger = logging.getLogger("greenroom.tracing")


#: Resource attribute naming the process type (Procfile / compose service).
PROCESS_TYPE_ATTRIBUTE = "greenroom.process.type"


#: Spans per export request unless OTEL_BSP_MAX_EXPORT_BATCH_SIZE is set (the SDK's is 512:
#: a busy worker then holds more finished spans at once; see docs/benchmarks.md).
EXPORT_BATCH_SIZE = 128


@dataclass(frozen=True)
class BatchLimits:
    """The BatchSpanProcessor's limits (OTEL_BSP_*); None means the default.

    The defaults are the SDK's, except the export batch: ``EXPORT_BATCH_SIZE``,
    or the queue size if that is smaller.

    >>> BatchLimits(max_queue_size=64).export_batch_size
    64
    """

    max_queue_size: int | None = None
    schedule_delay_millis: int | None = None
    max_export_batch_size: int | None = None
    export_timeout_millis: int | None = None

    @property
    def queue_size(self) -> int:
        return self.max_queue_size or 2048

    @property
    def export_batch_size(self) -> int:
        return self.max_export_batch_size or min(EXPORT_BATCH_SIZE, self.queue_size)

    def processor(self, exporter: SpanExporter) -> BatchSpanProcessor:
        """A BatchSpanProcessor with these limits (the SDK reads no OTEL_BSP_* variable then)."""
        return BatchSpanProcessor(
            exporter,
            max_queue_size=self.queue_size,
            schedule_delay_millis=self.schedule_delay_millis or 5000,
            max_export_batch_size=self.export_batch_size,
            export_timeout_millis=self.export_timeout_millis or 30000,
        )


#: OTEL_TRACES_SAMPLER values and the samplers they name (ratio samplers take the argument).
_SAMPLERS: dict[str, Callable[[float], Sampler]] = {
    "always_on": lambda _: ALWAYS_ON,
    "always_off": lambda _: ALWAYS_OFF,
    "traceidratio": TraceIdRatioBased,
    "parentbased_always_on": lambda _: ParentBased(ALWAYS_ON),
    "parentbased_always_off": lambda _: ParentBased(ALWAYS_OFF),
    "parentbased_traceidratio": lambda ratio: ParentBased(TraceIdRatioBased(ratio)),
}


def build_sampler(name: str | None, argument: float | None) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER ``name`` (default ``parentbased_always_on``) names,
    with OTEL_TRACES_SAMPLER_ARG ``argument`` as the ratio (default 1.0), as the SDK reads them.

    >>> build_sampler("traceidratio", 0.25).get_description()
    'TraceIdRatioBased{0.25}'
    """
    return _SAMPLERS[name or "parentbased_always_on"](1.0 if argument is None else argument)


def build_resource(
    *, default_service_name: str, service_version: str, process_type: str, service_name: str | None = None
) -> Resource:
    """Resource with service.version and the process type; ``service_name`` (OTEL_SERVICE_NAME),
    else a service.name in OTEL_RESOURCE_ATTRIBUTES, wins over ``default_service_name``."""
    attributes: dict[str, str] = {SERVICE_VERSION: service_version, PROCESS_TYPE_ATTRIBUTE: process_type}
    if service_name:
        attributes[SERVICE_NAME] = service_name
    resource = Resource.create(attributes)
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    return resource


def configure_tracer_provider(
    *,
    default_service_name: str,
    service_version: str,
    process_type: str,
    protocol: OtlpProtocol,
    endpoint: str | None = None,
    service_name: str | None = None,
    sampler: Sampler | None = None,
    batch_limits: BatchLimits | None = None,
    drop_while_unreachable: bool = False,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Create the process's TracerProvider (batching to OTLP) and make it the global one.

    ``drop_while_unreachable`` (short-lived processes) wraps the exporter in
    :class:`DropWhileUnreachable`. The SDK's own exit hook is off (it may wait
    30 s for an unreachable collector); callers flush with
    :func:`shutdown_tracer_provider`.
    """
    provider = TracerProvider(
        sampler=sampler or build_sampler(None, None),
        resource=build_resource(
            default_service_name=default_service_name,
            service_version=service_version,
            process_type=process_type,
            service_name=service_name,
        ),
        shutdown_on_exit=False,
    )
    if opentelemetry_compat.MESSAGING_NAMES in opentelemetry_compat.UNAVAILABLE:
        names = opentelemetry_compat.MESSAGING_NAMES
        report_fallback(names, opentelemetry_compat.UNAVAILABLE[names])
    exporter = exporter or build_exporter(protocol, endpoint)
    if drop_while_unreachable and endpoint is not None:
        exporter = DropWhileUnreachable(exporter, endpoint=endpoint)
    provider.add_span_processor((batch_limits or BatchLimits()).processor(exporter))
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

    The composition root (``shared.broker.middleware_stack``, through
    ``shared.telemetry.tracing_middleware``) puts it right after ``Tracing`` on workers.
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
