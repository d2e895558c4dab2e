"""The CONSUMER span of a task, made for a fraction of what the SDK's span costs.

The OpenTelemetry SDK builds every span through general machinery: each
attribute validated into a ``BoundedAttributes``, links re-wrapped, a lock,
and a second, read-only copy of the span when it ends. A worker makes one
such span per task, with attributes greenroom itself wrote; that machinery
was its largest single cost. Recording and exporting a task's span took
263,000 instructions with the SDK's span and takes 156,000 with this class
(callgrind, one task's middleware path in isolation); in a busy worker the
CPU per task fell by about 11%.

:func:`start_consumer_span` follows the SDK tracer's rules (the configured
sampler decides, the configured id generator makes the ids, the span
processors see the span start and end) and returns a :class:`ConsumerSpan`:
a recording span whose API (``set_attribute``, ``add_event``,
``record_exception``, ``set_status`` ...) behaves as the SDK's, and which is
itself the finished ``ReadableSpan`` the processors and exporters receive.
What a task's code adds is validated and bounded by the span limits exactly
as the SDK does it.

>>> span = start_consumer_span(tracer, "process default", parent=context, attributes=..., links=...)
>>> span.end()
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

logger = logging.getLogger("greenroom.tracing")


class ConsumerSpan(trace.Span, ReadableSpan):
    """A recording CONSUMER span; once ended, it is the ReadableSpan that gets exported."""

    def __init__(
        self,
        *,
        tracer: SdkTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, types.AnyValue],
        links: tuple[Link, ...],
    ) -> None:
        ReadableSpan.__init__(
            self,
            name=name,
            context=context,
            parent=parent,
            resource=tracer.resource,
            attributes=attributes,
            links=links,
            kind=SpanKind.CONSUMER,
            start_time=time_ns(),
            instrumentation_scope=tracer._instrumentation_scope,
        )
        self._limits: SpanLimits = tracer._span_limits
        self._processor = tracer.span_processor
        self._lock = threading.Lock()

    # What exporters read (the SDK's properties test ``isinstance`` against an abstract
    # class: about 1 us of every exported span) ------------------------------------------

    @property
    def dropped_attributes(self) -> int:
        attributes = self._attributes
        return attributes.dropped if type(attributes) is BoundedAttributes else 0

    @property
    def dropped_events(self) -> int:
        events = self._events
        return events.dropped if type(events) is BoundedList else 0

    @property
    def dropped_links(self) -> int:
        links = self._links
        return links.dropped if type(links) is BoundedList else 0

    # What a task's code may do with its current span -----------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]  # always set here

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        with self._lock:
            if self._ended("Setting attribute on ended span."):
                return
            if not isinstance(self._attributes, BoundedAttributes):  # from now on, the SDK's rules
                self._attributes = BoundedAttributes(
                    self._limits.max_span_attributes,
                    self._attributes,
                    immutable=False,
                    max_value_len=self._limits.max_span_attribute_length,
                )
            self._attributes[key] = value

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        frozen = self._frozen(self._limits.max_event_attributes, attributes)
        with self._lock:
            if self._ended("Calling add_event on an ended span."):
                return
            self._events = _bounded(self._events, self._limits.max_events)
            self._events.append(Event(name=name, attributes=frozen, timestamp=timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not _keeps(context, attributes):
            return
        frozen = self._frozen(self._limits.max_link_attributes, attributes)
        with self._lock:
            if self._ended("Calling add_link on an ended span."):
                return
            self._links = _bounded(self._links, self._limits.max_links)
            self._links.append(Link(context, frozen))

    def update_name(self, name: str) -> None:
        with self._lock:
            if not self._ended("Calling update_name on an ended span."):
                self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK: UNSET is ignored, and so is everything once the status is OK."""
        if self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                logger.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`", description
                )
            self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """An ``exception`` event with the attributes the SDK gives it."""
        module, qualname = type(exception).__module__, type(exception).__qualname__
        fields: dict[str, types.AnyValue] = {
            EXCEPTION_TYPE: f"{module}.{qualname}" if module and module != "builtins" else qualname,
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exception)),
            EXCEPTION_ESCAPED: str(escaped),
        }
        if attributes:
            fields.update(attributes)
        self.add_event("exception", fields, timestamp)

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._ended("Calling end() on an ended span."):
                return
            self._end_time = end_time if end_time is not None else time_ns()
        self._processor.on_end(self)

    def _apply_limits(self) -> None:
        """Bound the starting attributes and links as the SDK would, when the limits are
        tight enough to matter (by default they never are: 128 attributes, 128 links)."""
        limits = self._limits
        maximum = limits.max_span_attributes
        if limits.max_span_attribute_length is not None or (
            maximum is not None and len(self._attributes or ()) > maximum
        ):
            self._attributes = BoundedAttributes(
                maximum, self._attributes, immutable=False, max_value_len=limits.max_span_attribute_length
            )
        if limits.max_links is not None and len(self._links) > limits.max_links:
            self._links = _bounded(self._links, limits.max_links)

    def _frozen(self, maximum: int | None, attributes: types.Attributes) -> BoundedAttributes:
        """An event's or link's attributes, bounded as the SDK bounds them."""
        return BoundedAttributes(
            maximum, attributes, max_value_len=self._limits.max_attribute_length, immutable=True
        )

    def _ended(self, warning: str) -> bool:
        if self._end_time is None:
            return False
        logger.warning(warning)
        return True


def _keeps(context: SpanContext, attributes: types.Attributes) -> bool:
    """As the SDK: a link to nothing (an invalid context, no attributes or trace state) is not kept."""
    return bool(context and (context.is_valid or attributes or context.trace_state))


def _bounded(items: Sequence[Any], maximum: int | None) -> BoundedList[Any]:
    """``items`` as the SDK's BoundedList (made on first use: most spans never need one)."""
    return items if isinstance(items, BoundedList) else BoundedList.from_seq(maximum, items)


#: What start_consumer_span reads from an SDK tracer; a tracer without them gets the SDK's spans.
_TRACER_PARTS = (
    "sampler",
    "id_generator",
    "span_processor",
    "resource",
    "_span_limits",
    "_instrumentation_scope",
)


def sdk_tracer(provider: trace.TracerProvider, name: str) -> SdkTracer | None:
    """``provider``'s tracer ``name`` when consumer spans can be made here, else None.

    None (use the SDK's own spans) for a provider that is not the SDK's, a
    disabled tracer or one lacking a part this module reads (another SDK
    version), or with the SDK's internal metrics on (they count the spans
    the SDK starts itself).
    """
    tracer = provider.get_tracer(name)
    if not isinstance(tracer, SdkTracer) or not all(hasattr(tracer, part) for part in _TRACER_PARTS):
        return None
    if not getattr(tracer, "_is_enabled", lambda: True)():
        return None
    if os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, "").strip().lower() == "true":
        return None
    return tracer


def start_consumer_span(
    tracer: SdkTracer,
    name: str,
    *,
    parent: otel_context.Context,
    attributes: dict[str, types.AnyValue],
    links: Sequence[Link],
) -> trace.Span:
    """Start the CONSUMER span ``name`` as the SDK tracer would: sampled by its sampler,
    ids from its id generator, a child of the span in ``parent`` if there is one."""
    parent_span = trace.get_current_span(parent).get_span_context()
    if parent_span.is_valid:
        trace_id, random_trace_id = parent_span.trace_id, parent_span.trace_flags.random_trace_id
    else:
        trace_id, random_trace_id = (
            tracer.id_generator.generate_trace_id(),
            tracer.id_generator.is_trace_id_random(),
        )
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
    if sampling.decision is Decision.DROP:
        return NonRecordingSpan(context)
    span = ConsumerSpan(
        tracer=tracer,
        name=name,
        context=context,
        parent=parent_span if parent_span.is_valid else None,
        attributes=dict(sampling.attributes or {}),
        links=tuple(link for link in links if _keeps(link.context, link.attributes)),
    )
    span._apply_limits()
    # Processors are typed for the SDK's Span; ConsumerSpan offers the same API.
    tracer.span_processor.on_start(span, parent_context=parent)  # type: ignore[arg-type]
    return span
