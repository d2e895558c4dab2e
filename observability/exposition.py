"""The health and metrics server of one ``greenroom worker`` (one per process type).

It runs in a thread of the worker master (the process that starts the worker
processes and waits for them), so it lives exactly as long as they do, and
serves exactly three endpoints:

- ``/metrics``: every worker process's metrics merged (Prometheus text format,
  or OpenMetrics with exemplars when the scraper asks for it), plus
  ``greenroom_queue_messages`` read from RabbitMQ and ``greenroom_build_info``;
- ``/healthz``: 200 while every registered worker process is alive (liveness);
- ``/readyz``: 200 once every expected worker process is consuming, 503 before
  that, once a worker process has lost a worker or consumer thread, and from
  the moment a worker process starts its shutdown (readiness).

Anything else is 404; only GET (and HEAD) are answered.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from observability.exemplars import key_of, load_exemplars
from observability.queue_depth import QueueDepthReader
from observability.worker_registry import WorkerRegistry, pid_alive

logger = logging.getLogger("greenroom.exposition")

#: How often the server thread checks whether every worker process has registered.
WATCH_INTERVAL_SECONDS = 0.2


class MergedWorkerCollector(Collector):
    """The worker processes' metrics from the multiprocess directory, with exemplars.

    Files of processes that died are folded in as prometheus_client documents
    (``mark_process_dead``), so gauges of dead processes disappear while
    counters keep their totals.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        self._mark_dead_processes()
        exemplars = load_exemplars(self.directory)
        for family in multiprocess.MultiProcessCollector(None, path=str(self.directory)).collect():
            if family.type == "histogram" and exemplars:
                family.samples = [self._with_exemplar(family.name, s, exemplars) for s in family.samples]
            yield family

    def _mark_dead_processes(self) -> None:
        pids = {
            int(p.stem.rsplit("_", 1)[1])
            for p in self.directory.glob("*_*.db")
            if p.stem.rsplit("_", 1)[1].isdigit()
        }
        for pid in pids:
            if not pid_alive(pid):
                multiprocess.mark_process_dead(pid, path=str(self.directory))

    @staticmethod
    def _with_exemplar(family: str, sample: Any, exemplars: dict[Any, Any]) -> Any:
        if not sample.name.endswith("_bucket"):
            return sample
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        found = exemplars.get(key_of(family, labels, sample.labels["le"]))
        if found is None:
            return sample
        return sample._replace(exemplar=Exemplar({"trace_id": found.trace_id}, found.value, found.timestamp))


class QueueMessagesCollector(Collector):
    """``greenroom_queue_messages{queue,state}`` from RabbitMQ, at scrape time."""

    def __init__(self, reader: QueueDepthReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "greenroom_queue_messages",
            "Messages in RabbitMQ by queue and state (ready, delayed, dead_letter), read at scrape time.",
            labels=["queue", "state"],
        )
        for queue, depths in self.reader.read().items():
            for state, count in depths.items():
                family.add_metric([queue, state], count)
        yield family


class BuildInfoCollector(Collector):
    def __init__(self, version: str) -> None:
        self.version = version

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "greenroom_build_info", "greenroom version (always 1).", labels=["version"]
        )
        family.add_metric([self.version], 1)
        yield family


class HealthChecks(Protocol):
    """What ``/healthz`` (liveness) and ``/readyz`` (readiness) answer: ok, and why not."""

    def liveness(self) -> tuple[bool, str]: ...

    def readiness(self) -> tuple[bool, str]: ...


@dataclass
class Health:
    """Liveness and readiness of one ``greenroom worker``."""

    workers: WorkerRegistry
    expected_processes: int
    stopping: threading.Event = field(default_factory=threading.Event)

    def liveness(self) -> tuple[bool, str]:
        dead = self.workers.dead()
        if dead:
            return False, f"worker processes died: {dead}"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if self.stopping.is_set() or self.workers.stopping():
            self.stopping.set()  # a shutdown, once begun, is never undone
            return False, "shutting down"
        problems = self.workers.problems()
        if problems:
            return False, "; ".join(f"worker process {pid}: {reason}" for pid, reason in problems.items())
        ready = len(self.workers.ready())
        if ready < self.expected_processes:
            return False, f"{ready} of {self.expected_processes} worker processes consuming"
        return True, "ok"


def build_registry(directory: Path, queue_reader: QueueDepthReader, version: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(MergedWorkerCollector(directory))
    registry.register(QueueMessagesCollector(queue_reader))
    registry.register(BuildInfoCollector(version))
    return registry


#: Seconds a connection may take to send its request and read the answer.
CONNECTION_TIMEOUT_SECONDS = 5.0
#: Connections answered at once; more are closed as they arrive.
MAX_CONNECTIONS = 32


class ExpositionServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them, each bounded in time.

    Errors of a connection are log lines (one JSON line each), never
    socketserver's traceback on stderr; a client that hangs up is no error.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # all slots taken: close it rather than queue a thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return  # the client hung up or went quiet
        logger.error("Could not answer a request from %s.", client_address[0], exc_info=True)


def make_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    health: HealthChecks,
    *,
    timeout: float = CONNECTION_TIMEOUT_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
) -> ExpositionServer:
    """An HTTP server answering /metrics, /healthz and /readyz only."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "greenroom"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, encoder(registry), content_type)
            elif path in ("/healthz", "/readyz"):
                ok, reason = health.liveness() if path == "/healthz" else health.readiness()
                self._reply(200 if ok else 503, f"{reason}\n".encode(), "text/plain; charset=utf-8")
            else:
                self._reply(404, b"not found\n", "text/plain; charset=utf-8")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes, probes and timed-out connections are not worth a log line each."""

    Handler.timeout = timeout  # StreamRequestHandler applies it to the connection's socket
    return ExpositionServer((host, port), Handler, max_connections)


def serve_while_workers_run(
    bind: Callable[[], ExpositionServer | None], health: Health, stop: threading.Event
) -> None:
    """Bind once every expected worker process has registered, then serve until ``stop``.

    Runs in a thread of the worker master, which outlives its worker processes:
    the endpoints answer as long as any of them runs. Binding after the worker
    processes exist keeps the listening socket out of their (forked) files.
    """
    while len(health.workers.states()) < health.expected_processes:
        if stop.wait(WATCH_INTERVAL_SECONDS):
            return
    server = bind()
    if server is None:  # could not bind: ``bind`` said why
        return
    thread = threading.Thread(target=server.serve_forever, name="greenroom-exposition-accept", daemon=True)
    thread.start()
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()


def prepare_directory(directory: Path) -> None:
    """Empty ``directory`` (stale files from an earlier run would be counted again) and create it."""
    if directory.is_dir():
        for path in _files_below(directory):
            path.unlink()
    directory.mkdir(parents=True, exist_ok=True)


def _files_below(directory: Path) -> Iterable[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]
