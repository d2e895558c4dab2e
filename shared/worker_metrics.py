"""Wire Prometheus metrics and the health server of a ``greenroom worker`` from Settings.

``greenroom worker`` (the Dramatiq master) calls :func:`prepare_metrics_directory`
before forking; each worker process gets the :class:`Metrics` middleware from
:func:`metrics_middleware`; Dramatiq forks :func:`serve_exposition` next to
them to serve /metrics, /healthz and /readyz on METRICS_HOST:METRICS_PORT.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from observability.worker_registry import WorkerRegistry
from shared import __version__
from shared.settings import Settings, get_settings
from shared.tasks import TASKS

if TYPE_CHECKING:
    from observability.metrics import Metrics

# prometheus_client picks its multiprocess mode when first imported, so the
# master must set PROMETHEUS_MULTIPROC_DIR before anything imports it: the
# modules that do are imported inside the functions below, never at the top.

#: prometheus_client's own variable: where worker processes write their metric files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_directory(settings: Settings) -> Path:
    """One directory per process type and port, so two workers on one host never share."""
    base = settings.METRICS_DIR or Path(tempfile.gettempdir()) / "greenroom-metrics"
    return base / f"{settings.PROCESS_TYPE or 'all'}-{settings.metrics_port}"


def prometheus_directory(settings: Settings) -> Path:
    return metrics_directory(settings) / "prometheus"


def worker_registry(settings: Settings) -> WorkerRegistry:
    return WorkerRegistry(metrics_directory(settings) / "workers")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


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
    return Metrics(worker_registry=worker_registry(settings), exemplars=exemplars, forks=[serve_exposition])


def watched_queues(settings: Settings) -> list[str]:
    """The queues whose depths the server reports: the worker's queues, else every task's queue."""
    return list(settings.WORKER_QUEUES) or sorted({contract.queue for contract in TASKS.values()})


def serve_exposition() -> int:
    """Entry point of the helper process Dramatiq forks for the health and metrics server."""
    from observability.exposition import Health, build_registry, make_server, serve_until_workers_stop
    from observability.queue_depth import QueueDepthReader

    settings = get_settings()
    registry = build_registry(
        prometheus_directory(settings),
        QueueDepthReader(settings.rabbitmq_url, lambda: watched_queues(settings)),
        __version__,
    )
    health = Health(
        workers=worker_registry(settings),
        expected_processes=settings.WORKER_PROCESSES,
        master_pid=os.getppid(),
        stopping=threading.Event(),
    )
    server = make_server(settings.METRICS_HOST, settings.metrics_port, registry, health)
    return serve_until_workers_stop(server, health)
