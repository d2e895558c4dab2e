"""The CONSUMER span of a task, started as the SDK's tracer starts a span.

:func:`start_consumer_span` follows the SDK tracer's rules (the configured sampler
decides, the configured id generator makes the ids, a disabled tracer makes none,
the SDK's span metrics count it, the span processors see it start, end and
``_on_ending``) and returns a :class:`observability.opentelemetry_compat.ConsumerSpan`:
the SDK's own span class, which keeps the attributes and links greenroom gives it
as they are until a task's code changes them (then bounded by the span limits as
the SDK bounds them), and gives the processors itself when it ends.

    tracer = sdk_tracer(provider, "greenroom.observability.tracing")
    span = start_consumer_span(tracer, "process default", parent=context, attributes=..., links=...)
    span.end()
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.util import types

from observability.fallbacks import report_fallback

if TYPE_CHECKING:
    from observability.opentelemetry_compat import ConsumerSpan, TracerParts

#: The component report_fallback names when consumer spans are the SDK's own.
FALLBACK_COMPONENT = "consumer spans"


@dataclass(frozen=True, slots=True)
class ConsumerSpanTracer:
    """An SDK tracer, the parts of it that consumer spans need, and their class."""

    tracer: SdkTracer
    parts: TracerParts
    span_class: type[ConsumerSpan]


def sdk_tracer(provider: trace.TracerProvider, name: str) -> ConsumerSpanTracer | None:
    """``provider``'s tracer ``name`` when consumer spans can be made here, else None (use
    the tracer's own spans): a provider that is not the SDK's, or an SDK whose private parts
    :mod:`observability.opentelemetry_compat` no longer finds (reported by report_fallback)."""
    tracer = provider.get_tracer(name)
    if not isinstance(tracer, SdkTracer):
        return None
    try:
        # Looked up here, not imported at the top: a part that cannot be built is an
        # ImportError or AttributeError here, where the fallback is.
        opentelemetry_compat = importlib.import_module("observability.opentelemetry_compat")
        parts = opentelemetry_compat.tracer_parts(tracer)
        return ConsumerSpanTracer(tracer, parts, opentelemetry_compat.ConsumerSpan)
    except (ImportError, AttributeError) as error:
        report_fallback(FALLBACK_COMPONENT, f"{type(error).__name__}: {error}")
        return None


def start_consumer_span(
    sdk: ConsumerSpanTracer,
    name: str,
    *,
    parent: otel_context.Context,
    attributes: dict[str, types.AnyValue],
    links: Sequence[Link],
) -> trace.Span:
    """Start the CONSUMER span ``name`` as the SDK tracer would: sampled by its sampler,
    ids from its id generator, a child of the span in ``parent`` if there is one."""
    tracer, parts = sdk.tracer, sdk.parts
    current = trace.get_current_span(parent).get_span_context()
    if not parts.is_enabled():
        return NonRecordingSpan(current)
    parent_span = current if current.is_valid else None
    if parent_span is not None:
        trace_id, random_trace_id = parent_span.trace_id, parent_span.trace_flags.random_trace_id
    else:
        trace_id = tracer.id_generator.generate_trace_id()
        random_trace_id = tracer.id_generator.is_trace_id_random()
    sampling = tracer.sampler.should_sample(parent, trace_id, name, SpanKind.CONSUMER, attributes, links)
    flags = TraceFlags.SAMPLED if sampling.decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
    if random_trace_id:
        flags |= TraceFlags.RANDOM_TRACE_ID
    context = SpanContext(
        trace_id,
        tracer.id_generator.generate_span_id(),
        is_remote=False,
        trace_flags=TraceFlags(flags),
        trace_state=sampling.trace_state,
    )
    record_end_metrics = parts.start_span_metrics(parent_span, sampling.decision)
    if sampling.decision is Decision.DROP:
        return NonRecordingSpan(context)
    span = sdk.span_class(
        tracer=tracer,
        parts=parts,
        name=name,
        context=context,
        parent=parent_span,
        attributes=dict(sampling.attributes or {}),
        links=tuple(link for link in links if _keeps(link.context, link.attributes)),
        record_end_metrics=record_end_metrics,
    )
    span.start(parent_context=parent)
    return span


def _keeps(context: SpanContext, attributes: types.Attributes) -> bool:
    """As the SDK: a link to nothing (an invalid context, no attributes or trace state) is not kept."""
    return bool(context and (context.is_valid or attributes or context.trace_state))
