"""One trace per task, from the test process (producer) to a real worker, over real OTLP."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from shared.bench.otlp_receiver import OtlpReceiver, Protocol, ReceivedSpan
from shared.errors import TaskFailed
from shared.producer import Producer
from shared.settings import Settings
from tests.e2e.conftest import StartWorker
from tests.support import wait_for

TASKS = 20


@pytest.fixture(params=["grpc", "http/protobuf"])
def receiver(request: pytest.FixtureRequest) -> Iterator[OtlpReceiver]:
    protocol: Protocol = request.param
    with OtlpReceiver.start(protocol) as receiver:
        yield receiver


def _exporter(receiver: OtlpReceiver) -> SpanExporter:
    if receiver.protocol == "grpc":
        return GrpcExporter(endpoint=receiver.endpoint, insecure=True)
    return HttpExporter(endpoint=f"{receiver.endpoint}/v1/traces")


def _by_message(spans: list[ReceivedSpan], kind: str) -> dict[Any, ReceivedSpan]:
    return {
        s.attributes["messaging.message.id"]: s
        for s in spans
        if s.kind == kind and s.attributes.get("messaging.message.id")
    }


def test_every_task_traced_from_producer_to_worker_and_nothing_lost_at_sigterm(
    receiver: OtlpReceiver, start_worker: StartWorker, settings: Settings, clean_queues: None
) -> None:
    # Given: a worker exporting to the receiver, holding spans until shutdown
    worker = start_worker(
        processes=2,
        threads=4,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": receiver.protocol,
            "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing leaves before the SIGTERM flush
            "PROCESS_TYPE": "default-pool",
        },
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_exporter(receiver)))
    producer = Producer(settings, tracer_provider=provider)

    # When: tasks are sent from this process, one of them failing
    handles = producer.send_many("echo", [{"payload": n} for n in range(TASKS)])
    assert [h.result(timeout=20) for h in handles] == list(range(TASKS))
    failing = producer.send("fail", reason="boom")
    with pytest.raises(TaskFailed):
        failing.result(timeout=10)
    worker.wait_for_task_events(TASKS + 1)
    provider.shutdown()
    producer.close()
    assert not [s for s in receiver.spans() if s.kind == "CONSUMER"], "worker spans left before SIGTERM"
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output()

    # Then: every task has a consumer span in the worker, child of its creation context here:
    # the batch's one "send default" span for send_many, its own producer span for send
    spans = receiver.spans()
    producers, consumers = _by_message(spans, "PRODUCER"), _by_message(spans, "CONSUMER")
    [batch] = [s for s in spans if s.attributes.get("messaging.batch.message_count") == TASKS]
    sent = [h.message_id for h in handles] + [failing.message_id]
    assert sorted(consumers) == sorted(sent), "a consumer span was lost"
    creators = {h.message_id: batch for h in handles} | {failing.message_id: producers[failing.message_id]}
    for message_id in sent:
        creator, consumer_span = creators[message_id], consumers[message_id]
        assert creator.name == "send default"
        assert creator.kind == "PRODUCER"
        assert consumer_span.name == "process default"
        assert consumer_span.trace_id == creator.trace_id
        assert consumer_span.parent_span_id == creator.span_id
        assert consumer_span.links == [(creator.trace_id, creator.span_id)]
        assert consumer_span.attributes["messaging.system"] == "rabbitmq"
        assert consumer_span.resource["service.name"] == "greenroom-worker"
        assert consumer_span.resource["greenroom.process.type"] == "default-pool"
    assert consumers[failing.message_id].status_code == 2  # STATUS_CODE_ERROR
    assert consumers[failing.message_id].attributes["error.type"] == "DiagnosticFailure"

    # And: the worker's log line for each task carries the consumer span's ids
    for event in worker.task_events():
        consumer_span = consumers[event["message_id"]]
        assert (event["trace_id"], event["span_id"]) == (consumer_span.trace_id, consumer_span.span_id)


def test_cli_send_exports_its_producer_span_at_exit(
    otlp_receiver: OtlpReceiver, service_env: dict[str, str], workdir: Any, clean_queues: None
) -> None:
    from tests.support import run_cli

    completed = run_cli(["send", "echo", "--kwargs", '{"payload": 1}'], service_env, workdir)
    assert completed.returncode == 0, completed.stderr
    message_id = completed.stdout.strip()
    wait_for(
        lambda: message_id in _by_message(otlp_receiver.spans(), "PRODUCER"), 10, "the CLI's producer span"
    )
    span = _by_message(otlp_receiver.spans(), "PRODUCER")[message_id]
    assert span.resource["service.name"] == "greenroom-producer"
