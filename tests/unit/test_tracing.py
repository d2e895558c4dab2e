"""Tracing middleware: span names, kinds, attributes, parents, links, errors, retries, no leaks.

StubBroker and an in-memory exporter: this is the middleware's logic; the
cross-process behaviour over real OTLP is tested in tests/e2e/test_tracing.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, Retries, SkipMessage
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from observability.trace_carriers import ProducerContexts
from observability.tracing import TRACE_CONTEXT_OPTION, TraceContextFilter, Tracing


class SkipMarked(Middleware):
    """Skips messages whose kwargs say so (to exercise after_skip_message)."""

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:  # type: ignore[type-arg]
        if message.kwargs.get("skip"):
            raise SkipMessage("skipped on purpose")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _broker(provider: TracerProvider, *, new_trace_per_task: bool = False) -> tuple[StubBroker, Tracing]:
    tracing = Tracing(tracer_provider=provider, new_trace_per_task=new_trace_per_task)
    broker = StubBroker(
        middleware=[tracing, SkipMarked(), Retries(max_retries=1, min_backoff=1, max_backoff=1)]
    )
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    return broker, tracing


@pytest.fixture
def stub(provider: TracerProvider) -> Iterator[tuple[StubBroker, Tracing]]:
    broker, tracing = _broker(provider)
    yield broker, tracing
    broker.close()


def _run(broker: StubBroker) -> None:
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        for queue in list(broker.queues):
            if not queue.endswith((".DQ", ".XQ")):
                broker.join(queue, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def _by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


def test_producer_span_names_kind_attributes_and_injected_context(
    stub: tuple[StubBroker, Tracing], exporter: InMemorySpanExporter
) -> None:
    broker, _ = stub

    @dramatiq.actor(queue_name="reports", actor_name="reports.build")
    def build() -> None:
        pass

    message = build.send()

    [span] = exporter.get_finished_spans()
    assert span.name == "send reports"
    assert span.kind is SpanKind.PRODUCER
    assert span.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "reports",
        "messaging.rabbitmq.destination.routing_key": "reports",
        "messaging.message.id": message.message_id,
        "dramatiq.actor.name": "reports.build",
    }
    carried = broker.queues["reports"].get_nowait()
    traceparent = dramatiq.Message.decode(carried).options[TRACE_CONTEXT_OPTION]["traceparent"]
    assert traceparent.split("-")[1] == format(span.context.trace_id, "032x")
    assert traceparent.split("-")[2] == format(span.context.span_id, "016x")


def test_a_publish_retry_does_not_create_a_second_producer_span(
    stub: tuple[StubBroker, Tracing], exporter: InMemorySpanExporter
) -> None:
    # Given: Dramatiq's enqueue loop calls before_enqueue once per connection attempt
    broker, tracing = stub
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})

    # When
    tracing.before_enqueue(broker, message, None)
    first_context = dict(message.options[TRACE_CONTEXT_OPTION])
    tracing.before_enqueue(broker, message, None)
    tracing.after_enqueue(broker, message, None)

    # Then
    [span] = exporter.get_finished_spans()
    assert [event.name for event in span.events] == ["publish retried"]
    assert message.options[TRACE_CONTEXT_OPTION] == first_context
    assert tracing.open_spans == 0


def test_a_failed_publish_ends_its_span_as_an_error(
    stub: tuple[StubBroker, Tracing], exporter: InMemorySpanExporter
) -> None:
    broker, tracing = stub
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})

    tracing.before_enqueue(broker, message, None)
    tracing.abandon_publish(ConnectionError("broker gone"))

    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "ConnectionError"
    assert tracing.open_spans == 0
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_batch_is_one_producer_span_whose_context_every_message_carries(
    stub: tuple[StubBroker, Tracing], exporter: InMemorySpanExporter
) -> None:
    broker, tracing = stub

    @dramatiq.actor(queue_name="default", actor_name="echo")
    def echo(n: int) -> None:
        pass

    with tracing.publishing_batch("default", 3):
        messages = [echo.send(n) for n in range(3)]
    assert tracing.open_spans == 0
    _run(broker)

    spans = exporter.get_finished_spans()
    [batch] = _by_kind(spans, SpanKind.PRODUCER)
    consumers = _by_kind(spans, SpanKind.CONSUMER)
    assert batch.name == "send default"
    assert batch.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "default",
        "messaging.rabbitmq.destination.routing_key": "default",
        "messaging.batch.message_count": 3,
    }
    assert sorted(str((c.attributes or {})["messaging.message.id"]) for c in consumers) == sorted(
        m.message_id for m in messages
    )
    for consumer in consumers:
        assert consumer.context.trace_id == batch.context.trace_id
        assert consumer.parent is not None and consumer.parent.span_id == batch.context.span_id
        assert [link.context.span_id for link in consumer.links] == [batch.context.span_id]


def test_a_failed_batch_ends_its_span_as_an_error(
    stub: tuple[StubBroker, Tracing], exporter: InMemorySpanExporter
) -> None:
    _, tracing = stub
    with pytest.raises(ConnectionError), tracing.publishing_batch("default", 2):
        raise ConnectionError("broker gone")
    [batch] = exporter.get_finished_spans()
    assert batch.status.status_code is StatusCode.ERROR
    assert batch.attributes is not None and batch.attributes["error.type"] == "ConnectionError"
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_consumer_span_is_a_child_of_the_producer_span_links_to_it_and_is_current(
    stub: tuple[StubBroker, Tracing], exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    broker, _ = stub
    seen: dict[str, str] = {}

    @dramatiq.actor(queue_name="default")
    def echo() -> None:
        with provider.get_tracer("app").start_as_current_span("inner work"):
            pass
        record = logging.LogRecord("app", logging.INFO, __file__, 1, "inside", None, None)
        TraceContextFilter().filter(record)
        seen.update(trace_id=record.trace_id, span_id=record.span_id)  # type: ignore[attr-defined]
        seen["bag"] = str(baggage.get_baggage("tenant"))

    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        echo.send()
    finally:
        otel_context.detach(token)
    _run(broker)

    spans = exporter.get_finished_spans()
    [producer] = _by_kind(spans, SpanKind.PRODUCER)
    [consumer] = _by_kind(spans, SpanKind.CONSUMER)
    [inner] = [s for s in spans if s.name == "inner work"]
    assert consumer.name == "process default"
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["dramatiq.message.retries"] == 0
    assert inner.parent is not None and inner.parent.span_id == consumer.context.span_id
    assert seen == {
        "trace_id": format(consumer.context.trace_id, "032x"),
        "span_id": format(consumer.context.span_id, "016x"),
        "bag": "acme",
    }


def test_failure_and_retry_stay_in_one_trace(
    stub: tuple[StubBroker, Tracing], exporter: InMemorySpanExporter
) -> None:
    broker, _ = stub
    attempts: list[int] = []

    @dramatiq.actor(queue_name="default")
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("upstream down")

    flaky.send()
    _run(broker)

    spans = exporter.get_finished_spans()
    consumers = sorted(_by_kind(spans, SpanKind.CONSUMER), key=lambda s: s.start_time or 0)
    producers = _by_kind(spans, SpanKind.PRODUCER)
    assert len(consumers) == 2
    assert len({s.context.trace_id for s in spans}) == 1
    failed, succeeded = consumers
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["error.type"] == "RuntimeError"
    assert [e.name for e in failed.events] == ["exception"]
    assert succeeded.status.status_code is StatusCode.UNSET
    assert succeeded.attributes is not None and succeeded.attributes["dramatiq.message.retries"] == 1
    [retry] = [p for p in producers if p.parent is not None and p.parent.span_id == failed.context.span_id]
    assert retry.attributes is not None
    assert retry.attributes["messaging.rabbitmq.destination.routing_key"] == "default.DQ"


def test_link_only_mode_starts_a_new_trace_per_task(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broker, _ = _broker(provider, new_trace_per_task=True)

    @dramatiq.actor(queue_name="default")
    def fan_out_child() -> None:
        pass

    fan_out_child.send()
    _run(broker)

    [producer] = _by_kind(exporter.get_finished_spans(), SpanKind.PRODUCER)
    [consumer] = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert consumer.parent is None
    assert consumer.context.trace_id != producer.context.trace_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    broker.close()


def test_bookkeeping_is_empty_after_1000_messages_including_failed_and_skipped(
    stub: tuple[StubBroker, Tracing], exporter: InMemorySpanExporter
) -> None:
    broker, tracing = stub

    @dramatiq.actor(queue_name="default", max_retries=0)
    def mixed(n: int, skip: bool = False) -> None:
        if n % 10 == 0:
            raise ValueError(n)

    for n in range(1000):
        mixed.send(n, skip=n % 7 == 0)
    _run(broker)

    consumers = _by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert len(consumers) == 1000
    skipped = [s for s in consumers if s.attributes and s.attributes.get("dramatiq.message.skipped")]
    assert len(skipped) == len([n for n in range(1000) if n % 7 == 0])
    assert tracing.open_spans == 0
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_batch_carrier_is_read_once_and_gives_what_the_propagator_gives() -> None:
    contexts = ProducerContexts()

    def producer_context_of(carrier: dict[str, str] | None) -> otel_context.Context:
        return contexts.read(carrier).context

    carrier = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "baggage": "tenant=blue",
    }
    first, second = producer_context_of(dict(carrier)), producer_context_of(dict(carrier))
    assert first is second  # the second message of a batch reuses the first one's context
    expected = propagate.extract(carrier, context=otel_context.Context())
    span_context = trace.get_current_span(first).get_span_context()
    assert span_context == trace.get_current_span(expected).get_span_context()
    assert baggage.get_all(first) == baggage.get_all(expected)
    assert trace.get_current_span(first).get_span_context().span_id == 0xB7AD6B7169203331
    assert baggage.get_baggage("tenant", first) == "blue"

    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator()]))
    try:
        without_baggage = producer_context_of(dict(carrier))  # another propagator: read again
        assert baggage.get_baggage("tenant", without_baggage) is None
    finally:
        propagate.set_global_textmap(saved)

    assert producer_context_of(None) == otel_context.Context()
    malformed = producer_context_of({"traceparent": ["not", "a", "string"]})  # type: ignore[dict-item]
    assert not trace.get_current_span(malformed).get_span_context().is_valid
