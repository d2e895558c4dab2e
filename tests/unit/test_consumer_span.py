"""ConsumerSpan against the SDK's own span: the same inputs and the same calls
must export the same OTLP span (ids and times aside), call the processors' on_start,
_on_ending and on_end as often, and count the same span metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from observability.consumer_span import ConsumerSpanTracer, sdk_tracer, start_consumer_span
from observability.opentelemetry_compat import ConsumerSpan

ATTRIBUTES = {
    "messaging.system": "rabbitmq",
    "messaging.operation.name": "process",
    "messaging.destination.name": "default",
    "messaging.message.id": "a6f9c3e2-1111-2222-3333-444455556666",
    "dramatiq.message.retries": 2,
}


def producer_context(flags: int = TraceFlags.SAMPLED) -> otel_context.Context:
    producer = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState([("vendor", "x")]),
    )
    return trace.set_span_in_context(NonRecordingSpan(producer))


def setup(
    sampler: Sampler | None = None, limits: SpanLimits | None = None
) -> tuple[ConsumerSpanTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = sdk_tracer(provider, "greenroom.observability.tracing")
    assert tracer is not None
    assert isinstance(tracer.tracer, SdkTracer)
    return tracer, exporter


def both(
    parent: otel_context.Context,
    *,
    then: Callable[[trace.Span], Any] = lambda span: None,
    **setup_options: Any,
) -> tuple[ReadableSpan, ReadableSpan]:
    """The SDK's span and a ConsumerSpan, made and used the same way, as exported."""
    tracer, exporter = setup(**setup_options)
    producer = trace.get_current_span(parent).get_span_context()
    links = [Link(producer)] if producer.is_valid else []
    sdk = tracer.tracer.start_span(
        "process default", parent, SpanKind.CONSUMER, dict(ATTRIBUTES), list(links)
    )
    ours = start_consumer_span(
        tracer, "process default", parent=parent, attributes=dict(ATTRIBUTES), links=links
    )
    assert isinstance(ours, ConsumerSpan)
    for span in (sdk, ours):
        then(span)
        span.end()
    exported_sdk, exported_ours = exporter.get_finished_spans()
    return exported_sdk, exported_ours


def normalised(span: ReadableSpan) -> Any:
    """The span's OTLP message without what differs between two spans by nature: its own
    id and times (the trace id differs too when each span starts its own trace)."""
    message = encode_spans([span]).resource_spans[0].scope_spans[0].spans[0]
    message.span_id = b""
    message.start_time_unix_nano = message.end_time_unix_nano = 0
    for event in message.events:
        event.time_unix_nano = 0
    return message


def assert_same(sdk: ReadableSpan, ours: ReadableSpan, *, same_trace: bool = True) -> None:
    expected, actual = normalised(sdk), normalised(ours)
    if not same_trace:
        assert expected.trace_id != actual.trace_id
        expected.trace_id = actual.trace_id = b""
    assert actual == expected
    assert ours.resource is sdk.resource
    assert ours.instrumentation_scope == sdk.instrumentation_scope


def test_a_child_of_the_producer_span_with_its_link() -> None:
    sdk, ours = both(producer_context())
    assert_same(sdk, ours)
    assert ours.parent is not None and ours.parent.span_id == 0xB7AD6B7169203331
    assert [link.context.span_id for link in ours.links] == [0xB7AD6B7169203331]
    assert ours.context is not None and ours.context.trace_state == TraceState([("vendor", "x")])


def test_a_new_trace_that_links_to_the_producer() -> None:
    link_only = otel_context.Context()
    tracer, exporter = setup()
    producer = trace.get_current_span(producer_context()).get_span_context()
    sdk = tracer.tracer.start_span(
        "process default", link_only, SpanKind.CONSUMER, dict(ATTRIBUTES), [Link(producer)]
    )
    ours = start_consumer_span(
        tracer, "process default", parent=link_only, attributes=dict(ATTRIBUTES), links=[Link(producer)]
    )
    sdk.end()
    ours.end()
    exported_sdk, exported_ours = exporter.get_finished_spans()
    assert_same(exported_sdk, exported_ours, same_trace=False)
    assert exported_ours.parent is None


def test_a_root_span_when_no_context_came_with_the_message() -> None:
    sdk, ours = both(otel_context.Context())
    assert_same(sdk, ours, same_trace=False)


def test_what_a_task_does_with_its_span_is_recorded_as_by_the_sdk() -> None:
    def task(span: trace.Span) -> None:
        span.set_attribute("order.id", 42)
        span.set_attributes({"order.lines": ("a", "b"), "messaging.system": "overridden"})
        span.add_event("checkpoint", {"n": 2})
        span.add_link(SpanContext(0x1, 0x2, is_remote=True), {"why": "fan-in"})
        span.add_link(SpanContext(0, 0, is_remote=False))  # a link to nothing: not kept
        span.update_name("process default (renamed)")
        try:
            raise ValueError("nope")
        except ValueError as error:
            span.record_exception(error)
        span.set_status(StatusCode.ERROR, "ValueError: nope")
        span.set_status(StatusCode.UNSET)  # ignored, as by the SDK

    sdk, ours = both(producer_context(), then=task)
    assert_same(sdk, ours)
    assert ours.attributes is not None and ours.attributes["order.id"] == 42
    assert [event.name for event in ours.events] == ["checkpoint", "exception"]
    assert ours.status.status_code is StatusCode.ERROR


def test_an_ok_status_is_final_and_ended_spans_take_nothing(caplog: pytest.LogCaptureFixture) -> None:
    def task(span: trace.Span) -> None:
        span.set_status(StatusCode.OK)
        span.set_status(StatusCode.ERROR, "too late")

    sdk, ours = both(producer_context(), then=task)
    assert_same(sdk, ours)
    assert isinstance(ours, ConsumerSpan)
    ours.set_attribute("late", True)
    ours.end()
    assert not ours.is_recording()
    assert ours.attributes is not None and "late" not in ours.attributes
    assert "ended span" in caplog.text


def test_tight_limits_bound_attributes_links_and_events_as_the_sdk_does() -> None:
    limits = SpanLimits(max_span_attributes=3, max_links=0, max_events=1, max_span_attribute_length=4)

    def task(span: trace.Span) -> None:
        span.set_attribute("extra", "long value")
        span.add_event("one")
        span.add_event("two")

    sdk, ours = both(producer_context(), then=task, limits=limits)
    assert_same(sdk, ours)
    assert (ours.dropped_attributes, ours.dropped_links, ours.dropped_events) == (3, 1, 1)


def test_the_sampler_decides() -> None:
    tracer, exporter = setup(sampler=ALWAYS_OFF)
    span = start_consumer_span(tracer, "process default", parent=producer_context(), attributes={}, links=[])
    assert not span.is_recording() and not span.get_span_context().trace_flags.sampled
    span.end()

    tracer, exporter = setup(sampler=ParentBased(ALWAYS_OFF))
    unsampled_parent = producer_context(flags=TraceFlags.DEFAULT)
    span = start_consumer_span(tracer, "process default", parent=unsampled_parent, attributes={}, links=[])
    assert not span.is_recording()
    sampled = start_consumer_span(
        tracer, "process default", parent=producer_context(), attributes={}, links=[]
    )
    assert sampled.is_recording()
    sampled.end()
    assert len(exporter.get_finished_spans()) == 1


def test_only_the_sdk_tracer_gets_consumer_spans() -> None:
    assert sdk_tracer(trace.NoOpTracerProvider(), "x") is None
    assert sdk_tracer(TracerProvider(), "x") is not None


class Calls(SpanProcessor):
    """Records each call the span processors get, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self.calls.append(("on_start", span.name, span.is_recording()))

    def _on_ending(self, span: Span) -> None:
        self.calls.append(("_on_ending", span.name, span.end_time is not None))

    def on_end(self, span: ReadableSpan) -> None:
        self.calls.append(("on_end", span.name, span.end_time is not None))


def test_processors_see_start_ending_and_end_as_with_the_sdk() -> None:
    seen = []
    for make in ("sdk", "ours"):
        calls = Calls()
        provider = TracerProvider()
        provider.add_span_processor(calls)
        tracer = sdk_tracer(provider, "greenroom.observability.tracing")
        assert tracer is not None
        if make == "sdk":
            span = tracer.tracer.start_span("process default", producer_context(), SpanKind.CONSUMER)
        else:
            span = start_consumer_span(
                tracer, "process default", parent=producer_context(), attributes={}, links=[]
            )
        span.end()
        seen.append(calls.calls)
    assert seen[0] == seen[1]
    assert [name for name, _, _ in seen[1]] == ["on_start", "_on_ending", "on_end"]


def _span_metrics(reader: InMemoryMetricReader) -> dict[tuple[str, frozenset[Any]], float]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        (metric.name, frozenset((point.attributes or {}).items())): point.value  # type: ignore[union-attr]
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        for point in metric.data.data_points
    }


def test_span_metrics_count_consumer_spans_as_sdk_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    counted = []
    for make in ("sdk", "ours"):
        reader = InMemoryMetricReader()
        provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF), meter_provider=MeterProvider([reader]))
        tracer = sdk_tracer(provider, "greenroom.observability.tracing")
        assert tracer is not None
        open_spans = []
        for parent in (producer_context(), producer_context(TraceFlags.DEFAULT), producer_context()):
            if make == "sdk":
                span = tracer.tracer.start_span("process default", parent, SpanKind.CONSUMER)
            else:
                span = start_consumer_span(tracer, "process default", parent=parent, attributes={}, links=[])
            open_spans.append(span)
        open_spans[0].end()
        counted.append(_span_metrics(reader))
    assert counted[0] == counted[1]
    live = {key: value for key, value in counted[1].items() if key[0] == "otel.sdk.span.live"}
    assert list(live.values()) == [1]  # two sampled spans started, one ended
    assert sum(v for k, v in counted[1].items() if k[0] == "otel.sdk.span.started") == 3


def test_without_the_compat_parts_the_sdk_spans_are_used_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from observability import opentelemetry_compat

    def moved(tracer: SdkTracer) -> None:
        raise AttributeError("'Tracer' object has no attribute '_span_limits'")

    monkeypatch.setattr(opentelemetry_compat, "tracer_parts", moved)
    monkeypatch.setattr("observability.fallbacks._reported", {})
    assert sdk_tracer(TracerProvider(), "x") is None
    assert "consumer spans: fast path unavailable" in caplog.text
    assert "_span_limits" in caplog.text
