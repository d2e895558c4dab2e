"""``greenroom bench``: bare Dramatiq and greenroom side by side, in one run.

Both sides run the same echo task on the queue ``greenroom-bench`` with the
same processes and threads; the task records itself in a file
(:mod:`shared.bench.recorder`), so both are measured the same way:

- **send rate**: Dramatiq's own ``send`` with and without confirms, greenroom's
  ``send`` (confirmed) and ``send_many`` (pipelined confirms);
- **start-up**: from starting the worker command to the first task done;
- **drain**: tasks per second from the first task done to the last
  (start-up excluded), for pre-published tasks;
- **worker CPU per task**: user+sys of the worker process tree, measured for
  N and N/2 tasks and differenced, which removes start-up cost;
- **queue wait p50/p95/p99** at a fixed offered load of half bare Dramatiq's
  measured drain rate: the messages due each millisecond, stamped when
  published (:mod:`shared.bench.load`), waited for until their task starts;
- **peak RSS** of the largest worker process.

Start-up, drain, CPU, RSS and queue wait are measured ``rounds`` times, bare
and greenroom alternating, and reported as medians (each round's figures are
in the JSON): on a shared machine one slow spell would otherwise decide a
ratio. The queue-wait rounds follow the drain rounds (their load is half the
median of bare's drains).

greenroom runs with everything on: tracing exported over OTLP/HTTP to a live
receiver in this process, metrics, JSON task logs.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from shared.bench.load import offer_load
from shared.bench.otlp_receiver import OtlpReceiver
from shared.bench.recorder import BENCH_QUEUE, completed, waits
from shared.bench.task import BENCH_ECHO
from shared.producer import Producer
from shared.queue_arguments import dead_letter_arguments
from shared.settings import Settings

#: Seconds of offered load for the queue-wait measurement.
LOAD_SECONDS = 3.0
#: Messages per measurement of single sends.
SINGLE_SENDS = 300
#: How long one step (start-up, a drain) may take before the bench gives up.
STEP_TIMEOUT_SECONDS = 120.0
#: The bench queue's dead-letter retention on both sides: bare Dramatiq's (7 days unless
#: its ``dramatiq_dead_message_ttl`` variable says otherwise), whatever DEAD_LETTER_TTL_SECONDS is.
BENCH_DEAD_LETTER_TTL_SECONDS = DEAD_MESSAGE_TTL // 1000


@dataclass
class SideResult:
    """Figures for one side (bare or greenroom)."""

    startup_seconds: float = 0.0
    drain_tasks_per_second: float = 0.0
    worker_cpu_ms_per_task: float = 0.0
    queue_wait_ms: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    send_per_second: dict[str, float] = field(default_factory=dict)


@dataclass
class BenchOptions:
    messages: int
    processes: int
    threads: int
    payload_bytes: int
    rounds: int = 3


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

    def run(self) -> dict[str, Any]:
        rounds: dict[str, list[SideResult]] = {"bare": [], "greenroom": []}
        self._clean_up()  # queues an interrupted run left behind, with whatever arguments they had
        receiving = OtlpReceiver.start("http/protobuf", keep_spans=False)
        with receiving as receiver, self._producer(receiver) as producer:
            try:
                for number in range(1, self.options.rounds + 1):
                    self._say(f"round {number}/{self.options.rounds}:")
                    for side in rounds:  # alternating, so a slow spell of the machine hits both sides
                        rounds[side].append(self._side(side, producer, receiver))
                half_load = statistics.median(run.drain_tasks_per_second for run in rounds["bare"]) / 2
                for number in range(self.options.rounds):
                    self._say(f"queue wait, round {number + 1}/{self.options.rounds}:")
                    for side, runs in rounds.items():
                        runs[number].queue_wait_ms = self._queue_wait(side, producer, receiver, half_load)
                results = {side: _median(runs) for side, runs in rounds.items()}
                results["bare"].send_per_second = self._bare_send_rates()
                results["greenroom"].send_per_second = self._greenroom_send_rates(producer)
            finally:
                self._clean_up()
            spans = receiver.span_count
        shutil.rmtree(self.workdir)  # kept when a step failed: its worker logs are there
        report = self._report(results, spans)
        report["rounds"] = {side: [asdict(run) for run in runs] for side, runs in rounds.items()}
        return report

    # Worker runs -------------------------------------------------------------------------

    def _side(self, side: str, producer: Producer, receiver: OtlpReceiver) -> SideResult:
        result = SideResult()
        cpu: dict[int, float] = {}
        for count in (self.options.messages // 2, self.options.messages):
            self._say(f"{side}: draining {count} tasks ...")
            startup, drain, used_cpu, rss = self._drain(side, producer, receiver, count)
            cpu[count] = used_cpu
            result.startup_seconds, result.drain_tasks_per_second, result.peak_rss_mib = startup, drain, rss
        half, full = sorted(cpu)
        result.worker_cpu_ms_per_task = round(max(0.0, (cpu[full] - cpu[half]) / (full - half) * 1000), 3)
        return result

    def _drain(
        self, side: str, producer: Producer, receiver: OtlpReceiver, count: int
    ) -> tuple[float, float, float, float]:
        self._reset()
        producer.send(BENCH_ECHO.name, payload="warm-up")
        producer.send_many(BENCH_ECHO.name, [{"payload": self.payload}] * count)
        cpu_before = _children_cpu()
        started = time.monotonic()
        with self._worker(side, receiver) as worker:
            self._wait_completed(1)
            first_done = time.monotonic()
            self._wait_completed(count + 1)
            drained = time.monotonic()
            rss = _peak_rss_mib(worker.pid)
        drain = count / max(drained - first_done, 1e-9)
        return round(first_done - started, 3), round(drain, 1), _children_cpu() - cpu_before, rss

    def _queue_wait(
        self, side: str, producer: Producer, receiver: OtlpReceiver, rate: float
    ) -> dict[str, float]:
        self._say(f"{side}: queue wait at {rate:.0f} tasks/s for {LOAD_SECONDS:g}s ...")
        self._reset()
        with self._worker(side, receiver):
            producer.send(BENCH_ECHO.name, payload="warm-up")
            self._wait_completed(1)
            sent = offer_load(
                producer, BENCH_ECHO.name, rate=rate, seconds=LOAD_SECONDS, kwargs={"payload": self.payload}
            )
            self._wait_completed(sent + 1)
        measured = sorted(wait * 1000 for wait in waits(self.records))
        if len(measured) < 2:
            return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
        cuts = statistics.quantiles(measured, n=100, method="inclusive")
        return {"p50": round(cuts[49], 2), "p95": round(cuts[94], 2), "p99": round(cuts[98], 2)}

    @contextmanager
    def _worker(self, side: str, receiver: OtlpReceiver) -> Iterator[subprocess.Popen[bytes]]:
        options = ["--processes", str(self.options.processes), "--threads", str(self.options.threads)]
        env = {
            **os.environ,
            "RABBITMQ_URL": self.settings.rabbitmq_url,
            "REDIS_URL": self.settings.redis_url,
            "BENCH_RECORD_PATH": str(self.records),
        }
        if side == "bare":
            argv = [sys.executable, "-m", "dramatiq", "shared.bench.bare", *options, "--queues", BENCH_QUEUE]
        else:
            argv = [
                str(Path(sys.executable).with_name("greenroom")),
                "worker",
                "shared.bench.worker",
                *options,
                "--queues",
                BENCH_QUEUE,
            ]
            env.update(
                TRACING_ENABLED="true",
                OTEL_SDK_DISABLED="false",
                OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                LOG_LEVEL="INFO",
                LOG_FORMAT="json",
                METRICS_PORT=str(_free_port()),
                METRICS_DIR=str(self.workdir / "metrics"),
                PROCESS_TYPE="bench",
                DEAD_LETTER_TTL_SECONDS=str(BENCH_DEAD_LETTER_TTL_SECONDS),
            )
        with open(self.workdir / f"{side}-worker.log", "ab") as log:
            worker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
            try:
                yield worker
            finally:
                worker.terminate()
                worker.wait(timeout=60)

    # Send rates -------------------------------------------------------------------------

    def _greenroom_send_rates(self, producer: Producer) -> dict[str, float]:
        self._say("greenroom: send rates ...")
        self._reset()
        single = _rate(SINGLE_SENDS, self._greenroom_sender(producer, SINGLE_SENDS))
        batch = [{"payload": self.payload}] * self.options.messages
        many = _rate(self.options.messages, lambda: producer.send_many(BENCH_ECHO.name, batch))
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
            rates[name] = _rate(SINGLE_SENDS, self._bare_sender(actor, SINGLE_SENDS))
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
        provider = TracerProvider()
        exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
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
        with _channel(self.settings) as channel:
            for name in _queue_names():
                channel.queue_purge(name)

    def _clean_up(self) -> None:
        """Delete the bench queues and the record file: the bench leaves no queue behind."""
        self.records.unlink(missing_ok=True)
        connection = pika.BlockingConnection(pika.URLParameters(self.settings.rabbitmq_url))
        try:
            channel = connection.channel()
            for name in _queue_names():
                channel.queue_delete(name)  # a queue that is not there counts as deleted
        finally:
            connection.close()

    def _say(self, text: str) -> None:
        print(text, file=self.progress, flush=True)

    def _report(self, results: dict[str, SideResult], spans: int) -> dict[str, Any]:
        bare, green = results["bare"], results["greenroom"]

        def ratio(mine: float, theirs: float) -> float:
            return round(mine / theirs, 3) if theirs else 0.0

        return {
            "options": asdict(self.options),
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "dramatiq": dramatiq.__version__,
            },
            "bare": asdict(bare),
            "greenroom": asdict(green),
            "ratios": {
                "drain_throughput": ratio(green.drain_tasks_per_second, bare.drain_tasks_per_second),
                "worker_cpu_per_task": ratio(green.worker_cpu_ms_per_task, bare.worker_cpu_ms_per_task),
                "queue_wait_p99": ratio(green.queue_wait_ms["p99"], bare.queue_wait_ms["p99"]),
                "startup": ratio(green.startup_seconds, bare.startup_seconds),
                "peak_rss": ratio(green.peak_rss_mib, bare.peak_rss_mib),
                "send_many_vs_dramatiq_confirmed": ratio(
                    green.send_per_second["send_many_confirmed"], bare.send_per_second["send_confirmed"]
                ),
                "send_many_vs_dramatiq_unconfirmed": ratio(
                    green.send_per_second["send_many_confirmed"], bare.send_per_second["send_unconfirmed"]
                ),
            },
            "spans_received": spans,
        }


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: bare | greenroom | ratio."""
    b, g, r = report["bare"], report["greenroom"], report["ratios"]
    bs, gs = b["send_per_second"], g["send_per_second"]
    rows = [
        (
            "drain throughput (tasks/s)",
            b["drain_tasks_per_second"],
            g["drain_tasks_per_second"],
            r["drain_throughput"],
        ),
        (
            "worker CPU per task (ms)",
            b["worker_cpu_ms_per_task"],
            g["worker_cpu_ms_per_task"],
            r["worker_cpu_per_task"],
        ),
        ("queue wait p50 at half load (ms)", b["queue_wait_ms"]["p50"], g["queue_wait_ms"]["p50"], None),
        ("queue wait p95 at half load (ms)", b["queue_wait_ms"]["p95"], g["queue_wait_ms"]["p95"], None),
        (
            "queue wait p99 at half load (ms)",
            b["queue_wait_ms"]["p99"],
            g["queue_wait_ms"]["p99"],
            r["queue_wait_p99"],
        ),
        ("start-up to first task (s)", b["startup_seconds"], g["startup_seconds"], r["startup"]),
        ("peak RSS per worker process (MiB)", b["peak_rss_mib"], g["peak_rss_mib"], r["peak_rss"]),
        ("send, confirmed (msg/s)", bs["send_confirmed"], gs["send_confirmed"], None),
        ("send, unconfirmed (msg/s)", bs["send_unconfirmed"], None, None),
        ("send_many, confirmed (msg/s)", None, gs["send_many_confirmed"], None),
    ]
    lines = [f"{'':36} {'bare':>12} {'greenroom':>12} {'ratio':>8}"]
    for name, bare, green, ratio in rows:
        digits = _DIGITS.get(name, 1)
        lines.append(f"{name:36} {_cell(bare, digits):>12} {_cell(green, digits):>12} {_cell(ratio, 2):>8}")
    lines.append(
        f"send_many vs Dramatiq send: {r['send_many_vs_dramatiq_confirmed']:.2f}x confirmed, "
        f"{r['send_many_vs_dramatiq_unconfirmed']:.2f}x unconfirmed"
    )
    return "\n".join(lines)


#: Decimal places of a row's figures where one is too few.
_DIGITS = {"worker CPU per task (ms)": 3, "start-up to first task (s)": 2}


def write_json(report: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def _median(runs: list[SideResult]) -> SideResult:
    """Each figure's median over the rounds (send rates are measured once)."""
    return SideResult(
        startup_seconds=statistics.median(run.startup_seconds for run in runs),
        drain_tasks_per_second=statistics.median(run.drain_tasks_per_second for run in runs),
        worker_cpu_ms_per_task=statistics.median(run.worker_cpu_ms_per_task for run in runs),
        queue_wait_ms={
            percentile: statistics.median(run.queue_wait_ms[percentile] for run in runs)
            for percentile in ("p50", "p95", "p99")
        },
        peak_rss_mib=statistics.median(run.peak_rss_mib for run in runs),
    )


def _cell(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _echo(payload: Any, sent_at: float = 0.0) -> None:
    """The bare side's actor function, for the send-rate measurement (never run here)."""


def _rate(count: int, send: Callable[[], object]) -> float:
    started = time.perf_counter()
    send()
    return round(count / (time.perf_counter() - started), 1)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mib(master: int) -> float:
    """The largest VmHWM among the worker master's child processes."""
    peaks = [0.0]
    for child in Path(f"/proc/{master}/task/{master}/children").read_text().split():
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return round(max(peaks), 1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _queue_names() -> tuple[str, str, str]:
    return BENCH_QUEUE, f"{BENCH_QUEUE}.DQ", f"{BENCH_QUEUE}.XQ"


@contextmanager
def _channel(settings: Settings) -> Iterator[Any]:
    """A channel on which the bench queues exist, declared as Dramatiq declares them."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url))
    try:
        channel = connection.channel()
        dead_letters = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{BENCH_QUEUE}.XQ"}
        for name in _queue_names():
            arguments = dead_letter_arguments(DEAD_MESSAGE_TTL) if name.endswith(".XQ") else dead_letters
            channel.queue_declare(name, durable=True, arguments=arguments)
        yield channel
    finally:
        connection.close()
