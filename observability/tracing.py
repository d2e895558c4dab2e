"""OpenTelemetry tracing for Dramatiq messages: a PRODUCER span per publish, a
CONSUMER span per processing attempt, one trace from producer to worker.

Span names and attributes follow the OpenTelemetry messaging semantic
conventions (``send <queue>`` / ``process <queue>``, messaging.system=rabbitmq
...). The W3C trace context (and baggage) travels in one message option,
:data:`TRACE_CONTEXT_OPTION`, written with the globally configured propagator.

The composition root (``shared.broker.middleware_stack``) puts this middleware
first on a producer and second on a worker, after ``BatchedWorkerLogs`` (which
only writes log lines). Its ``before_*`` hooks therefore run before those of
every middleware below it and its ``after_*`` hooks after them, so the consumer
span is current while Retries re-enqueues a failed message (the retry gets a
producer span inside the same trace) and while TaskLogging writes the per-task
log line (the line carries the trace id).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from observability.messaging_spans import (
    ACTOR_ATTRIBUTE,
    CANCELLED_ATTRIBUTE,
    RETRIES_ATTRIBUTE,
    SKIPPED_ATTRIBUTE,
    WORKFLOW_ID_ATTRIBUTE,
    WORKFLOW_KIND_ATTRIBUTE,
    WORKFLOW_STEP_ATTRIBUTE,
    SpanShapes,
    record_error,
    schedule_attributes,
    send_option_attributes,
)
from observability.opentelemetry_compat import MESSAGING_MESSAGE_ID
from observability.task_logging import was_cancelled
from observability.trace_carriers import NO_CONTEXT, ProducerContexts, QuotedHeaderExcerpts

#: The message option that carries the W3C trace context (and baggage) headers.
TRACE_CONTEXT_OPTION = "greenroom_trace_context"
#: The message option of a workflow step: ``{"id": ..., "kind": "pipeline" or "group", "step": n}``.
WORKFLOW_OPTION = "greenroom_workflow"

_INSTRUMENTATION = "greenroom.observability.tracing"

#: Inside Tracing.publishing_batch: the trace context every message of the batch carries.
_batch_carrier: ContextVar[dict[str, str] | None] = ContextVar("greenroom_batch_carrier", default=None)


@dataclass(slots=True)
class _OpenSpan:
    message_id: str
    span: Span
    token: object


class Tracing(Middleware):
    """Producer and consumer spans for every message.

    Parameters:
      tracer_provider: where spans go; the global provider when None (even
        one installed later, such as a worker's after fork).
      new_trace_per_task: start each consumer span in a new trace that only
        *links* to the producer span (for heavy fan-out), instead of making
        it the producer span's child.
    """

    def __init__(
        self, *, tracer_provider: TracerProvider | None = None, new_trace_per_task: bool = False
    ) -> None:
        # With no provider this is a proxy that follows the global provider once
        # one is installed (worker processes install theirs after fork).
        self.tracer: Tracer = trace.get_tracer(_INSTRUMENTATION, tracer_provider=tracer_provider)
        self.new_trace_per_task = new_trace_per_task
        self._tracer_provider = tracer_provider
        self._consumer_spans: tuple[TracerProvider | None, Callable[..., Span] | None] = (None, None)
        self._publishing: dict[int, _OpenSpan] = {}
        self._processing: dict[int, _OpenSpan] = {}
        self.producer_contexts = ProducerContexts()
        self._shapes = SpanShapes()
        QuotedHeaderExcerpts.install()

    @property
    def open_spans(self) -> int:
        """Spans started and not yet ended (0 whenever no message is in flight)."""
        return len(self._publishing) + len(self._processing)

    # Producer side --------------------------------------------------------------

    @contextmanager
    def publishing_batch(
        self, queue_name: str, count: int, options: Mapping[str, Any] | None = None
    ) -> Iterator[None]:
        """One PRODUCER span ``send <queue>`` around publishing ``count`` messages together
        (sent with the same ``options``: a priority or a delay become span attributes).

        Its context is the creation context injected into every message of the
        batch (the messaging conventions' "publish" span, no per-message
        "create" span), so each consumer span is its child and links to it.

            with tracing.publishing_batch("default", len(messages)):
                publish(messages)
        """
        parent = otel_context.get_current()
        name, attributes = self._shapes.batch(queue_name, count)
        attributes.update(send_option_attributes(options or {}, _now_ms()))
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes)
        span_context = trace.set_span_in_context(span, parent)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=span_context)
        token = otel_context.attach(span_context)
        batch = _batch_carrier.set(carrier)
        try:
            yield
        except BaseException as error:
            record_error(span, error)
            raise
        finally:
            _batch_carrier.reset(batch)
            _detach(token)
            span.end()

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        batch = _batch_carrier.get()
        if batch is not None:
            message.options[TRACE_CONTEXT_OPTION] = dict(batch)
            return
        thread = threading.get_ident()
        pending = self._publishing.get(thread)
        if pending is not None and pending.message_id == message.message_id:
            pending.span.add_event("publish retried")  # Dramatiq's connection-retry loop: same publish
            return
        if pending is not None:
            # The previous publish on this thread raised before after_enqueue.
            self.abandon_publish(ConnectionError("publish did not complete"))

        parent = _parent_for_publish(message)
        name, attributes = self._shapes.producer(
            message.queue_name, message_id=message.message_id, actor_name=message.actor_name
        )
        attributes.update(send_option_attributes(message.options, _now_ms()))
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes)
        span_context = trace.set_span_in_context(span, parent)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=span_context)
        message.options[TRACE_CONTEXT_OPTION] = carrier
        self._publishing[thread] = _OpenSpan(message.message_id, span, otel_context.attach(span_context))

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        if _batch_carrier.get() is not None:
            return
        pending = self._publishing.pop(threading.get_ident(), None)
        if pending is None:
            return
        _detach(pending.token)
        pending.span.end()

    def abandon_publish(self, error: BaseException) -> None:
        """End this thread's unfinished producer span as failed (the publish raised)."""
        pending = self._publishing.pop(threading.get_ident(), None)
        if pending is None:
            return
        _detach(pending.token)
        record_error(pending.span, error)
        pending.span.end()

    # Consumer side --------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        producer = self.producer_contexts.read(message.options.get(TRACE_CONTEXT_OPTION))
        parent = NO_CONTEXT if self.new_trace_per_task else producer.context
        name, attributes = self._shapes.consumer(message.queue_name)
        attributes[MESSAGING_MESSAGE_ID] = message.message_id
        attributes[ACTOR_ATTRIBUTE] = message.actor_name
        attributes[RETRIES_ATTRIBUTE] = int(message.options.get("retries", 0))
        workflow = message.options.get(WORKFLOW_OPTION)
        if isinstance(workflow, dict):  # checked on arrival (shared.runtime.option_checks)
            attributes[WORKFLOW_ID_ATTRIBUTE] = workflow["id"]
            attributes[WORKFLOW_KIND_ATTRIBUTE] = workflow["kind"]
            attributes[WORKFLOW_STEP_ATTRIBUTE] = workflow["step"]
        attributes.update(schedule_attributes(message.options))
        start_consumer_span = self._consumer_span_starter()
        if start_consumer_span is not None:
            span = start_consumer_span(name, parent=parent, attributes=attributes, links=producer.links)
        else:
            span = self.tracer.start_span(
                name, context=parent, kind=SpanKind.CONSUMER, links=producer.links, attributes=attributes
            )
        # Baggage from the producer stays available inside the task, even with a new trace.
        token = otel_context.attach(trace.set_span_in_context(span, producer.context))
        self._processing[threading.get_ident()] = _OpenSpan(message.message_id, span, token)

    def _consumer_span_starter(self) -> Callable[..., Span] | None:
        """:func:`observability.consumer_span.start_consumer_span` for this provider's SDK
        tracer (looked up once per provider), or None to use the tracer's own spans."""
        provider = self._tracer_provider or trace.get_tracer_provider()
        cached_for, starter = self._consumer_spans
        if cached_for is not provider:
            # Imported here: a producer process need not load the SDK for this module.
            from observability.consumer_span import sdk_tracer, start_consumer_span

            tracer = sdk_tracer(provider, _INSTRUMENTATION)
            starter = None if tracer is None else functools.partial(start_consumer_span, tracer)
            self._consumer_spans = (provider, starter)
        return starter

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        current = self._processing.pop(threading.get_ident(), None)
        if current is None:
            return
        if exception is not None and was_cancelled(message):
            current.span.set_attribute(CANCELLED_ATTRIBUTE, True)
        elif exception is not None:
            record_error(current.span, exception)
        _detach(current.token)
        current.span.end()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        current = self._processing.pop(threading.get_ident(), None)
        if current is None:
            return
        if current.span.is_recording():
            current.span.set_attribute(SKIPPED_ATTRIBUTE, True)
            if was_cancelled(message):
                current.span.set_attribute(CANCELLED_ATTRIBUTE, True)
            if message.failed:
                current.span.set_status(Status(StatusCode.ERROR, "skipped and dead-lettered"))
        _detach(current.token)
        current.span.end()


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (lowercase hex, as Tempo expects) inside a span."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True


def _parent_for_publish(message: dramatiq.Message[Any]) -> otel_context.Context:
    """The current span if there is one (a task sending a task, a retry, a
    pipeline step); else the context the message already carries (a delayed
    message moved to its queue, a dead letter replayed); else a new trace."""
    current = otel_context.get_current()
    if trace.get_current_span(current).get_span_context().is_valid:
        return current
    carried = message.options.get(TRACE_CONTEXT_OPTION)
    return propagate.extract(carried) if carried else current


def _now_ms() -> int:
    return int(time.time() * 1000)


def _detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]
