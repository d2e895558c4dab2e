"""greenroom's span encoder against the OpenTelemetry exporter's own, on spans of every shape."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as upstream_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from observability.otlp_encoding import VALUES_PER_KEY, OtlpSpanEncoder, encode_spans

ATTRIBUTES = {
    "text": "rabbitmq",
    "empty": "",
    "unicode": "größe ✓ 日本",
    "yes": True,
    "no": False,
    "zero": 0,
    "small": 7,
    "large": 2**40 + 3,
    "negative": -12345,
    "int64.max": 2**63 - 1,
    "int64.min": -(2**63),
    "float": 3.25,
    "float.zero": 0.0,
    "float.negative": -1e-9,
    "strings": ("a", "", "c"),
    "bools": (True, False),
    "ints": (1, -2, 300),
    "floats": (0.5, 2.0),
    "empty.sequence": (),
    "long": "x" * 300,
}


def provider(
    resource: Resource, limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource, span_limits=limits)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def remote_context(trace_state: TraceState | None = None) -> otel_context.Context:
    parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=trace_state,
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


def spans_of_every_shape() -> list[ReadableSpan]:
    main, main_spans = provider(
        Resource({"service.name": "greenroom-worker", "service.version": "0.1.0"}, schema_url="https://x/1")
    )
    other, other_spans = provider(
        Resource({"service.name": "producer", "pid": 42}),
        SpanLimits(max_attributes=2, max_events=1, max_links=1),
    )
    worker = main.get_tracer("greenroom.observability.tracing", "1.2", schema_url="https://s/1")
    user = main.get_tracer("user.code", attributes={"scope.attr": "v"})
    bare = main.get_tracer("")

    with (
        worker.start_as_current_span("send default", kind=SpanKind.PRODUCER, attributes=ATTRIBUTES),
        user.start_as_current_span("inner") as inner,
    ):
        inner.add_event("checkpoint", {"n": 1, "ok": True})
        inner.add_event("")
        inner.set_status(Status(StatusCode.OK))
    state = TraceState([("vendor", "abc"), ("other", "1")])
    consumer = worker.start_span(
        "process default",
        context=remote_context(state),
        kind=SpanKind.CONSUMER,
        links=[Link(trace.get_current_span(remote_context()).get_span_context(), {"link.kind": "producer"})],
        attributes={"messaging.system": "rabbitmq"},
    )
    try:
        raise ValueError("boom ✗")
    except ValueError as error:
        consumer.record_exception(error)
        consumer.set_status(Status(StatusCode.ERROR, "ValueError: boom ✗"))
    consumer.end()
    bare.start_span("unnamed scope", kind=SpanKind.SERVER).end()
    main.get_tracer("client").start_span("client", kind=SpanKind.CLIENT).end()

    limited = other.get_tracer("limited")
    span = limited.start_span(
        "limited",
        attributes={"a": 1, "b": 2, "c": 3},
        links=[Link(trace.get_current_span(remote_context()).get_span_context()) for _ in range(3)],
    )
    for number in range(3):
        span.add_event(f"event {number}")
    span.end()
    return [*main_spans.get_finished_spans(), *other_spans.get_finished_spans()]


def decoded(payload: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(payload)


def test_decodes_to_what_the_upstream_encoder_builds() -> None:
    spans = spans_of_every_shape()
    expected = upstream_encode_spans(spans)
    assert decoded(encode_spans(spans)) == expected
    # Every shape above is really there (an empty comparison would prove nothing).
    flat = [s for rs in expected.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(expected.resource_spans) == 2
    assert len(flat) == 6
    assert {s.name for s in flat} >= {"send default", "inner", "process default", "limited"}


def test_each_span_alone_matches_too() -> None:
    for span in spans_of_every_shape():
        assert decoded(encode_spans([span])) == upstream_encode_spans([span]), span.name


def test_cached_parts_are_reused_without_changing_the_output() -> None:
    spans = spans_of_every_shape()
    encoder = OtlpSpanEncoder()
    first = encoder.encode(spans)
    assert encoder.encode(spans) == first
    assert decoded(encoder.encode(spans * 3)) == upstream_encode_spans(spans * 3)


def test_no_spans_is_an_empty_request() -> None:
    assert encode_spans([]) == b""
    assert decoded(b"") == upstream_encode_spans([])


def test_an_int_beyond_int64_is_dropped_with_a_log_line_like_upstream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracer_provider, exporter = provider(Resource({"service.name": "x"}))
    tracer_provider.get_tracer("t").start_span("big", attributes={"big": 2**64, "kept": 1}).end()
    spans = exporter.get_finished_spans()
    with caplog.at_level(logging.ERROR):
        payload = encode_spans(spans)
    assert decoded(payload) == upstream_encode_spans(spans)
    attributes = decoded(payload).resource_spans[0].scope_spans[0].spans[0].attributes
    assert [pair.key for pair in attributes] == ["kept"]
    assert "'big' not exported" in caplog.text


def test_ids_do_not_fill_the_cache_and_shared_values_stay_cached() -> None:
    tracer_provider, exporter = provider(Resource({"service.name": "ids"}))
    tracer = tracer_provider.get_tracer("ids")
    for number in range(VALUES_PER_KEY * 20):
        tracer.start_span(
            "process default", attributes={"message.id": f"id-{number}", "system": "rabbitmq"}
        ).end()
    spans = exporter.get_finished_spans()
    encoder = OtlpSpanEncoder()
    assert decoded(encoder.encode(spans)) == upstream_encode_spans(spans)

    by_key = [key for key, _, _ in encoder._pairs]
    assert by_key.count("message.id") == VALUES_PER_KEY
    assert ("system", str, "rabbitmq") in encoder._pairs
