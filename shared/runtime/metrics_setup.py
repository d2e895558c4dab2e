"""Wire Prometheus metrics and the health server of a ``greenroom worker`` from Settings.

``greenroom worker`` (the Dramatiq master) checks the metrics settings with
:func:`metrics_settings_problem` and calls :func:`prepare_metrics_directory`
before forking; each worker process gets the :class:`Metrics` middleware from
:func:`metrics_middleware`; the master serves /metrics, /healthz and /readyz on
METRICS_HOST:METRICS_PORT from a thread while its worker processes run
(:func:`serving_metrics`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from observability.worker_registry import WorkerRegistry
from shared import __version__
from shared.settings import Settings
from shared.tasks import TASKS

if TYPE_CHECKING:
    from observability.exposition import ExpositionServer, Health
    from observability.metrics import Metrics

logger = logging.getLogger("greenroom.exposition")

# prometheus_client picks its multiprocess mode when first imported, so the
# master must set PROMETHEUS_MULTIPROC_DIR before anything imports it: the
# modules that do are imported inside the functions below, never at the top.

#: prometheus_client's own variable: where worker processes write their metric files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Longest wait of a scrape for RabbitMQ's queue depths (each step of opening the connection
#: and each reply).
QUEUE_DEPTH_TIMEOUT_SECONDS = 2.0

#: Seconds between two looks at readiness while ``serving_metrics`` waits for the worker to be ready.
READY_POLL_SECONDS = 0.05


def metrics_directory(settings: Settings) -> Path:
    """One directory per process type and port, so two workers on one host never share."""
    base = settings.METRICS_DIR or Path(tempfile.gettempdir()) / "greenroom-metrics"
    return base / f"{settings.PROCESS_TYPE or 'all'}-{settings.metrics_port}"


def prometheus_directory(settings: Settings) -> Path:
    return metrics_directory(settings) / "prometheus"


def worker_registry(settings: Settings) -> WorkerRegistry:
    return WorkerRegistry(metrics_directory(settings) / "workers")


def metrics_settings_problem(settings: Settings) -> str | None:
    """One line naming METRICS_HOST, METRICS_PORT or METRICS_DIR and what is wrong with it, or None.
    For example (the resolver's words vary by system)::

        metrics_settings_problem(load_settings(METRICS_HOST="no-such-host.invalid"))
        # "METRICS_HOST 'no-such-host.invalid' does not resolve (Name or service not known)"
    """
    return _address_problem(settings.METRICS_HOST, settings.metrics_port) or _directory_problem(
        metrics_directory(settings)
    )


def _address_problem(host: str, port: int) -> str | None:
    try:
        [(family, _, _, _, address), *_] = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as error:
        return f"METRICS_HOST {host!r} does not resolve ({getattr(error, 'strerror', None) or error})"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the server binds: a port that only TIME_WAIT connections still use is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address[:2])
        except OSError as error:
            return _bind_problem(host, port, error)
    return None


def _bind_problem(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"METRICS_PORT {port} on {host} is in use "
            "(another worker? give each process type its own METRICS_PORT or $PORT)"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return f"METRICS_HOST {host!r} is not an address of this machine"
    if error.errno == errno.EACCES:
        return f"METRICS_PORT {port} on {host}: permission denied (ports below 1024 need privileges)"
    return f"METRICS_HOST {host!r}, METRICS_PORT {port}: cannot listen ({error.strerror or error})"


def _directory_problem(directory: Path) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        return f"METRICS_DIR: cannot write metric files in {str(directory)!r} ({error.strerror or error})"
    return None


def prepare_metrics_directory(settings: Settings) -> Path:
    """Empty this worker's metrics directory and point prometheus_client at it.

    Must run before prometheus_client is imported by any process that will write
    metrics (it picks its multiprocess mode at import time).
    """
    directory = prometheus_directory(settings)
    os.environ[MULTIPROC_ENV] = str(directory)
    from observability.exposition import prepare_directory

    prepare_directory(metrics_directory(settings))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def metrics_middleware(settings: Settings) -> Metrics:
    """The Metrics middleware of a worker process (exemplars only when tracing is on)."""
    from observability.exemplars import ExemplarStore
    from observability.metrics import Metrics

    exemplars = None
    if settings.tracing_active:
        exemplars = ExemplarStore(prometheus_directory(settings), pid=os.getpid())
    return Metrics(worker_registry=worker_registry(settings), exemplars=exemplars)


def watched_queues(settings: Settings) -> list[str]:
    """The queues whose depths the server reports: the worker's queues, else every task's queue."""
    return list(settings.WORKER_QUEUES) or sorted({contract.queue for contract in TASKS.values()})


@contextlib.contextmanager
def serving_metrics(settings: Settings, *, on_ready: Callable[[], None] | None = None) -> Iterator[None]:
    """Serve /metrics, /healthz and /readyz from this process (the worker master) while the body runs.

    ``on_ready`` is called once, from a thread of its own, when /readyz first
    answers 200: the server listens and every expected worker process consumes.
    Example (from ``greenroom worker``)::

        with serving_metrics(settings, on_ready=lambda: log_ready(settings, queues)):
            exit_code = dramatiq.cli.main(dramatiq_args)
    """
    from observability.exposition import Health, serve_while_workers_run

    health = Health(workers=worker_registry(settings), expected_processes=settings.WORKER_PROCESSES)
    stop, listening = threading.Event(), threading.Event()

    def bind() -> ExpositionServer | None:
        server = _bind(settings, health)
        if server is not None:
            listening.set()
        return server

    threads = [
        threading.Thread(
            target=serve_while_workers_run,
            args=(bind, health, stop),
            name="greenroom-exposition",
            daemon=True,
        )
    ]
    if on_ready is not None:
        threads.append(
            threading.Thread(
                target=_call_when_ready,
                args=(health, listening, stop, on_ready),
                name="greenroom-ready-watch",
                daemon=True,
            )
        )
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)


def _call_when_ready(
    health: Health, listening: threading.Event, stop: threading.Event, on_ready: Callable[[], None]
) -> None:
    """Call ``on_ready`` once the server listens and readiness (what /readyz answers) first holds."""
    while not (listening.is_set() and health.readiness()[0]):
        if stop.wait(READY_POLL_SECONDS):
            return
    on_ready()


def _bind(settings: Settings, health: Health) -> ExpositionServer | None:
    from observability.exposition import build_registry, make_server
    from observability.queue_depth import QueueDepthReader
    from shared.connections import checking_parameters
    from shared.delays import LADDER_DEPTH_NAME, LADDER_QUEUES

    registry = build_registry(
        prometheus_directory(settings),
        QueueDepthReader(
            lambda: checking_parameters(settings.rabbitmq_url, QUEUE_DEPTH_TIMEOUT_SECONDS),
            lambda: watched_queues(settings),
            totals={LADDER_DEPTH_NAME: LADDER_QUEUES},
        ),
        __version__,
    )
    try:
        return make_server(settings.METRICS_HOST, settings.metrics_port, registry, health)
    except OSError as error:  # taken since the start-up check: no worker without its endpoints
        logger.critical(
            "%s; stopping the worker.", _bind_problem(settings.METRICS_HOST, settings.metrics_port, error)
        )
        os.kill(os.getpid(), signal.SIGTERM)
        return None
