"""Wire OpenTelemetry tracing from Settings into workers and producer processes.

Workers get a TracerProvider per process after Dramatiq forks them (through
``TracerProviderLifecycle``); a producer process gets one on first use, unless
the host application has already installed its own, which is then respected.

Every OTEL_* value the settings declare (endpoint, protocol, service name,
sampler, OTEL_BSP_*) is passed to the SDK from the settings, so one read from
``.env`` is in effect as ``greenroom config`` shows it.
"""

from __future__ import annotations

import atexit
import functools
import threading
from collections.abc import Callable
from typing import Literal

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from observability.tracer_provider import (
    BatchLimits,
    TracerProviderLifecycle,
    build_sampler,
    configure_tracer_provider,
    shutdown_tracer_provider,
)
from observability.tracing import Tracing
from shared import __version__
from shared.settings import Settings

Role = Literal["worker", "producer", "beat"]

_producer_setup_lock = threading.Lock()


def provider_factory(settings: Settings, role: Role) -> Callable[[], TracerProvider]:
    """A function that creates this process's provider from the settings.

    A producer process drops its spans while the collector is unreachable (one
    warning) instead of retrying: a command then exits at once without one.
    """
    return functools.partial(
        configure_tracer_provider,
        default_service_name=f"greenroom-{role}",
        service_version=__version__,
        process_type=settings.PROCESS_TYPE or role,
        protocol=settings.otlp_traces_protocol,
        endpoint=settings.otlp_traces_endpoint,
        service_name=settings.OTEL_SERVICE_NAME,
        sampler=build_sampler(settings.OTEL_TRACES_SAMPLER, settings.OTEL_TRACES_SAMPLER_ARG),
        batch_limits=BatchLimits(
            max_queue_size=settings.OTEL_BSP_MAX_QUEUE_SIZE,
            schedule_delay_millis=settings.OTEL_BSP_SCHEDULE_DELAY,
            max_export_batch_size=settings.OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
            export_timeout_millis=settings.OTEL_BSP_EXPORT_TIMEOUT,
        ),
        drop_while_unreachable=role != "worker",
    )


def tracing_middleware(
    settings: Settings, role: Role, tracer_provider: trace.TracerProvider | None = None
) -> list[Tracing | TracerProviderLifecycle]:
    """The tracing middleware for a broker (empty when tracing is off): ``Tracing``, and on
    a worker ``TracerProviderLifecycle`` after it. ``shared.broker.middleware_stack`` puts
    them first on a producer, right after ``BatchedWorkerLogs`` on a worker.

    With ``tracer_provider`` the spans go there instead of the global provider (and no
    lifecycle middleware is added).
    """
    if not settings.tracing_active:
        return []
    tracing = Tracing(tracer_provider=tracer_provider, new_trace_per_task=settings.TRACING_NEW_TRACE_PER_TASK)
    if role == "producer" or tracer_provider is not None:
        return [tracing]
    lifecycle = TracerProviderLifecycle(
        factory=provider_factory(settings, role), flush_timeout_seconds=settings.TRACING_FLUSH_TIMEOUT_SECONDS
    )
    return [tracing, lifecycle]


def ensure_producer_tracing(settings: Settings, *, role: Role = "producer") -> None:
    """Install a TracerProvider in a producer process (``role``: or the beat) unless one is
    already there.

    Its spans are flushed when the process exits, waiting at most
    TRACING_FLUSH_TIMEOUT_SECONDS for a collector that answers slowly; with none
    listening, it gives up after one connection attempt (at most a second) and
    one warning.
    """
    if not settings.tracing_active:
        return
    with _producer_setup_lock:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            provider = provider_factory(settings, role)()
            atexit.register(
                shutdown_tracer_provider, provider, timeout_seconds=settings.TRACING_FLUSH_TIMEOUT_SECONDS
            )
