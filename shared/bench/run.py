"""``greenroom bench``: bare Dramatiq and greenroom side by side, in one run.

Both sides run the same echo task on the queue ``greenroom-bench`` with the
same processes and threads (:mod:`shared.bench.processes`), and its async twin
(an ``async def`` actor on Dramatiq's AsyncIO middleware, which both sides'
workers have); each task records itself in a file (:mod:`shared.bench.recorder`),
so both sides are measured the same way (:mod:`shared.bench.measurement`):

- **send rate**: Dramatiq's own ``send`` with and without confirms, greenroom's
  ``send`` (confirmed) and ``send_many`` (pipelined confirms);
- **start-up**: from starting the worker command to the first task done;
- **drain**: tasks per second from the first task done to the last
  (start-up excluded), for pre-published tasks;
- **worker CPU per task**: user+sys of the worker process tree, measured for
  N and N/2 tasks and differenced, which removes start-up cost;
- **drain and worker CPU per task of the async actor**: the same two figures
  for ``bench.echo_async``;
- **queue wait p50/p95/p99** at a fixed offered load of half bare Dramatiq's
  measured drain rate: the messages due each millisecond, stamped when
  published (:mod:`shared.bench.load`), waited for until their task starts;
- **peak RSS** of the largest worker process.

Start-up, drain, CPU, RSS and queue wait are measured ``rounds`` times, bare
and greenroom alternating (each side drains the sync task, then the async
one), and reported as medians (each round's figures are in the JSON). The
queue-wait rounds follow the drain rounds (their load is half the median of
bare's drains).

greenroom's side exports its traces over OTLP (``otlp_protocol``: ``grpc`` or
``http/protobuf``) to a live receiver in this process, as does the bench's own
producer. The bench refuses to start when a bench queue already exists, and
deletes the queues it created when it ends (:mod:`shared.bench.queues`).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from shared.bench.load import offer_load
from shared.bench.measurement import (
    SideResult,
    children_cpu_seconds,
    cpu_ms_per_task,
    median_result,
    peak_rss_mib,
    queue_wait_percentiles,
    send_rate,
)
from shared.bench.otlp_receiver import OtlpReceiver, Protocol
from shared.bench.processes import WorkerPlan
from shared.bench.queues import (
    BENCH_DEAD_LETTER_TTL_SECONDS,
    BENCH_QUEUE_NAMES,
    BenchQueues,
)
from shared.bench.recorder import BENCH_QUEUE, completed, waits
from shared.bench.report import build_report
from shared.bench.task import BENCH_ECHO, BENCH_ECHO_ASYNC
from shared.errors import GreenroomError
from shared.producer import Producer
from shared.settings import Settings
from shared.tasks import TaskContract

#: Seconds of offered load for the queue-wait measurement.
LOAD_SECONDS = 3.0
#: Messages per measurement of single sends.
SINGLE_SENDS = 300
#: How long one step (start-up, a drain) may take before the bench gives up.
STEP_TIMEOUT_SECONDS = 120.0


@dataclass
class BenchOptions:
    messages: int
    processes: int
    threads: int
    payload_bytes: int
    rounds: int = 3
    otlp_protocol: Protocol = "http/protobuf"


class Bench:
    """One benchmark run against the configured RabbitMQ (and Redis, for greenroom's results)."""

    def __init__(self, settings: Settings, options: BenchOptions, progress: TextIO) -> None:
        # Both sides' dead-letter queue is the same ``greenroom-bench.XQ``, and RabbitMQ keeps
        # the TTL it was first declared with: greenroom's side uses bare Dramatiq's.
        self.settings = settings.model_copy(update={"DEAD_LETTER_TTL_SECONDS": BENCH_DEAD_LETTER_TTL_SECONDS})
        self.options = options
        self.progress = progress
        self.payload = "x" * options.payload_bytes
        self.workdir = Path(tempfile.mkdtemp(prefix="greenroom-bench-"))
        self.records = self.workdir / "records"
        self.queues = BenchQueues(self.settings)

    def run(self) -> dict[str, Any]:
        """Measure both sides; the report (see :func:`shared.bench.report.build_report`)."""
        try:
            self.queues.claim()  # before anything declares a queue: refuses if one exists already
            with OtlpReceiver.start(self.options.otlp_protocol, keep_spans=False) as receiver:
                plan = WorkerPlan(
                    self.settings,
                    self.options.processes,
                    self.options.threads,
                    self.records,
                    self.workdir,
                    receiver.endpoint,
                    self.options.otlp_protocol,
                )
                with self._producer(receiver) as producer:
                    results, rounds = self._measure(plan, producer)
                spans = {
                    "spans_received": receiver.span_count,
                    "consumer_spans_received": receiver.consumer_span_count,
                }
        finally:
            self._delete_queues()  # only those it claimed
            self.records.unlink(missing_ok=True)
            if not any(self.workdir.iterdir()):  # failed before a worker ran: no log to keep
                self.workdir.rmdir()
        shutil.rmtree(self.workdir)  # kept when a step failed: its worker logs are there
        return build_report(asdict(self.options), results, rounds, spans)

    def _measure(
        self, plan: WorkerPlan, producer: Producer
    ) -> tuple[dict[str, SideResult], dict[str, list[SideResult]]]:
        rounds: dict[str, list[SideResult]] = {"bare": [], "greenroom": []}
        for number in range(1, self.options.rounds + 1):
            self._say(f"round {number}/{self.options.rounds}:")
            for side in rounds:  # alternating, so a slow spell of the machine hits both sides
                rounds[side].append(self._side(side, plan, producer))
        half_load = statistics.median(run.drain_tasks_per_second for run in rounds["bare"]) / 2
        for number in range(self.options.rounds):
            self._say(f"queue wait, round {number + 1}/{self.options.rounds}:")
            for side, runs in rounds.items():
                runs[number].queue_wait_ms = self._queue_wait(side, plan, producer, half_load)
        results = {side: median_result(runs) for side, runs in rounds.items()}
        results["bare"].send_per_second = self._bare_send_rates()
        results["greenroom"].send_per_second = self._greenroom_send_rates(producer)
        return results, rounds

    # Worker runs -------------------------------------------------------------------------

    def _side(self, side: str, plan: WorkerPlan, producer: Producer) -> SideResult:
        result = SideResult()
        startup, drain, cpu, rss = self._drains(side, plan, producer, BENCH_ECHO)
        result.startup_seconds, result.drain_tasks_per_second, result.peak_rss_mib = startup, drain, rss
        result.worker_cpu_ms_per_task = cpu
        _, drain, cpu, _ = self._drains(side, plan, producer, BENCH_ECHO_ASYNC)
        result.async_drain_tasks_per_second, result.async_worker_cpu_ms_per_task = drain, cpu
        return result

    def _drains(
        self, side: str, plan: WorkerPlan, producer: Producer, task: TaskContract
    ) -> tuple[float, float, float, float]:
        """(start-up s, drain tasks/s, worker CPU ms per task, peak RSS MiB) of ``task``: the
        CPU from drains of N/2 and N tasks, the other figures from the drain of N."""
        kind = " async" if task is BENCH_ECHO_ASYNC else ""
        cpu: dict[int, float] = {}
        for count in (self.options.messages // 2, self.options.messages):
            self._say(f"{side}: draining {count}{kind} tasks ...")
            startup, drain, cpu[count], rss = self._drain(side, plan, producer, task, count)
        return startup, drain, cpu_ms_per_task(cpu), rss

    def _drain(
        self, side: str, plan: WorkerPlan, producer: Producer, task: TaskContract, count: int
    ) -> tuple[float, float, float, float]:
        """(start-up s, drain tasks/s, worker CPU s, peak RSS MiB) of one worker run over ``count``
        of ``task``."""
        self._reset()
        producer.send(task.name, payload="warm-up")
        producer.send_many(task.name, [{"payload": self.payload}] * count)
        cpu_before = children_cpu_seconds()
        started = time.monotonic()
        with plan.running(side) as worker:
            self._wait_completed(1)
            first_done = time.monotonic()
            self._wait_completed(count + 1)
            drained = time.monotonic()
            rss = peak_rss_mib(worker.pid)
        drain = count / max(drained - first_done, 1e-9)
        return round(first_done - started, 3), round(drain, 1), children_cpu_seconds() - cpu_before, rss

    def _queue_wait(self, side: str, plan: WorkerPlan, producer: Producer, rate: float) -> dict[str, float]:
        self._say(f"{side}: queue wait at {rate:.0f} tasks/s for {LOAD_SECONDS:g}s ...")
        self._reset()
        with plan.running(side):
            producer.send(BENCH_ECHO.name, payload="warm-up")
            self._wait_completed(1)
            load = {"payload": self.payload}
            sent = offer_load(producer, BENCH_ECHO, rate=rate, seconds=LOAD_SECONDS, kwargs=load)
            self._wait_completed(sent + 1)
        return queue_wait_percentiles(waits(self.records))

    # Send rates -------------------------------------------------------------------------

    def _greenroom_send_rates(self, producer: Producer) -> dict[str, float]:
        self._say("greenroom: send rates ...")
        self._reset()
        single = send_rate(SINGLE_SENDS, self._greenroom_sender(producer, SINGLE_SENDS))
        batch = [{"payload": self.payload}] * self.options.messages
        many = send_rate(self.options.messages, lambda: producer.send_many(BENCH_ECHO.name, batch))
        self._reset()
        return {"send_confirmed": single, "send_many_confirmed": many}

    def _bare_send_rates(self) -> dict[str, float]:
        self._say("bare: send rates ...")
        rates = {}
        for confirm in (True, False):
            broker = RabbitmqBroker(url=self.settings.rabbitmq_url, confirm_delivery=confirm)
            actor = dramatiq.actor(actor_name=BENCH_ECHO.name, queue_name=BENCH_QUEUE, broker=broker)(_echo)
            actor.send("warm-up")
            name = "send_confirmed" if confirm else "send_unconfirmed"
            rates[name] = send_rate(SINGLE_SENDS, self._bare_sender(actor, SINGLE_SENDS))
            broker.close()
        self._reset()
        return rates

    def _greenroom_sender(self, producer: Producer, count: int) -> Callable[[], object]:
        return lambda: [producer.send(BENCH_ECHO.name, payload=self.payload) for _ in range(count)]

    def _bare_sender(self, actor: dramatiq.Actor[..., Any], count: int) -> Callable[[], object]:
        return lambda: [actor.send(self.payload) for _ in range(count)]

    # Helpers ----------------------------------------------------------------------------

    @contextmanager
    def _producer(self, receiver: OtlpReceiver) -> Iterator[Producer]:
        """greenroom's producer, its spans exported to ``receiver`` with the bench's protocol."""
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(receiver)))
        producer = Producer(self.settings, tracer_provider=provider)
        try:
            yield producer
        finally:
            producer.close()
            provider.shutdown()

    def _wait_completed(self, count: int) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT_SECONDS
        while completed(self.records) < count:
            if time.monotonic() > deadline:
                waited = f"{STEP_TIMEOUT_SECONDS:g}s"
                raise TimeoutError(
                    f"bench: fewer than {count} tasks done after {waited} (logs in {self.workdir})"
                )
            time.sleep(0.002)

    def _reset(self) -> None:
        self.records.unlink(missing_ok=True)
        self.queues.empty()

    def _delete_queues(self) -> None:
        """Delete the bench queues; when RabbitMQ cannot do it, name the queues left behind."""
        try:
            self.queues.delete()
        except GreenroomError:
            self._say(f"bench: could not delete its queues: delete {', '.join(BENCH_QUEUE_NAMES)} yourself")
            raise

    def _say(self, text: str) -> None:
        print(text, file=self.progress, flush=True)


def _span_exporter(receiver: OtlpReceiver) -> SpanExporter:
    """The SDK's OTLP span exporter for the receiver's protocol."""
    if receiver.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=receiver.endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=f"{receiver.endpoint}/v1/traces")


def _echo(payload: Any, sent_at: float = 0.0) -> None:
    """The bare side's actor function, for the send-rate measurement (never run here)."""
