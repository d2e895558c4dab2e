"""``greenroom worker``: run Dramatiq worker processes configured from the settings.

Runs Dramatiq's own CLI in this process, so signals reach its master directly
(SIGTERM stops the workers gracefully). Before it starts, it refuses queues no
task uses and settings RabbitMQ or Redis refuse (one line, exit 2). Its stdout
is JSON log lines only; once /readyz first answers 200 it logs one line of its
own, for example::

    $ greenroom worker --queues default --processes 2 --threads 8
    ... {"logger": "greenroom.worker", "message": "greenroom worker ready: queues default;
    2 processes x 8 threads; metrics http://127.0.0.1:9300/metrics", "queues": ["default"], ...}
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any

from shared.cli.arguments import add_command, positive_int, queue_names
from shared.cli.output import usage_error
from shared.runtime.metrics_setup import metrics_settings_problem, prepare_metrics_directory, serving_metrics
from shared.settings import Settings

logger = logging.getLogger("greenroom")
worker_logger = logging.getLogger("greenroom.worker")

#: The module Dramatiq's CLI loads in worker processes: importing it builds ``broker``.
WORKER_MODULE = "workers"


def register(commands: Any) -> None:
    worker = add_command(
        commands,
        "worker",
        "Run Dramatiq worker processes configured from the settings (SIGTERM stops them gracefully).",
        "greenroom worker --queues default,reports --processes 2 --threads 2",
    )
    worker.add_argument(
        "module",
        nargs="?",
        default=WORKER_MODULE,
        help=f"the module that declares the actors (default: {WORKER_MODULE}); another needs --queues",
    )
    worker.add_argument(
        "--queues",
        "-Q",
        nargs="+",
        action="extend",
        metavar="Q",
        help="queues to consume, separated by commas or spaces, or the flag repeated "
        "(default: WORKER_QUEUES, else all)",
    )
    worker.add_argument(
        "--processes", "-p", type=positive_int, help="worker processes (default: WORKER_PROCESSES)"
    )
    worker.add_argument(
        "--threads", "-t", type=positive_int, help="threads per process (default: WORKER_THREADS)"
    )
    worker.set_defaults(run=run, logs_to_stdout=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Check the settings and the services, then run Dramatiq's CLI until its workers stop."""
    settings = export_worker_settings(args, settings)
    if (metrics_problem := metrics_settings_problem(settings)) is not None:
        return usage_error(metrics_problem)
    from shared.runtime.service_checks import check_services  # imported here: only this command needs it
    from shared.tasks import TASKS

    if args.module != WORKER_MODULE:
        return _run_worker_module(args.module, settings)
    known = sorted({task.queue for task in TASKS.values()})
    if unknown := [repr(queue) for queue in settings.WORKER_QUEUES if queue not in known]:
        return usage_error(
            f"WORKER_QUEUES (or --queues): no task uses queue {', '.join(unknown)} "
            f"(queues with tasks: {', '.join(known)})"
        )
    queues = settings.WORKER_QUEUES or known
    stores_results = any(task.store_results for task in TASKS.values() if task.queue in queues)
    refused = check_services(settings, queues, stores_results=stores_results)
    if refused is not None:
        return usage_error(refused)
    return _run_dramatiq(WORKER_MODULE, settings, queues)


def _run_worker_module(module: str, settings: Settings) -> int:
    """Run the actors of ``module`` (a tool's, such as the bench's) on the queues given.

    Its tasks are not in the production table, so neither the queues nor whether results
    are stored can be checked against it: RabbitMQ is checked for those queues, Redis is
    not (nor is redis-py loaded before the worker processes start).
    """
    import importlib.util

    from shared.runtime.service_checks import check_services

    if not settings.WORKER_QUEUES:
        return usage_error(f"worker module {module!r} needs --queues (or WORKER_QUEUES)")
    try:
        found = re.fullmatch(r"[A-Za-z_][\w.]*", module) and importlib.util.find_spec(module)
    except ImportError:  # a parent package that is not there
        found = None
    if not found:
        return usage_error(f"no worker module {module!r}")
    refused = check_services(settings, settings.WORKER_QUEUES, stores_results=False)
    if refused is not None:
        return usage_error(refused)
    return _run_dramatiq(module, settings, settings.WORKER_QUEUES)


def _run_dramatiq(module: str, settings: Settings, queues: list[str]) -> int:
    """Start Dramatiq's CLI on ``module``'s broker with the settings; its exit code."""
    prepare_metrics_directory(settings)

    import dramatiq.cli  # imported here: only this command needs it

    dramatiq_argv = [
        f"{module}:broker",
        "--processes", str(settings.WORKER_PROCESSES),
        "--threads", str(settings.WORKER_THREADS),
        "--worker-shutdown-timeout", str(int(settings.WORKER_SHUTDOWN_TIMEOUT_SECONDS * 1000)),
        "--skip-logging",
    ]  # fmt: skip
    if settings.WORKER_QUEUES:
        dramatiq_argv += ["--queues", *settings.WORKER_QUEUES]
    dramatiq_args = dramatiq.cli.make_argument_parser().parse_args(dramatiq_argv)
    logger.info(
        "greenroom worker starting",
        extra={
            "process_type": settings.PROCESS_TYPE,
            "processes": settings.WORKER_PROCESSES,
            "threads": settings.WORKER_THREADS,
            "queues": settings.WORKER_QUEUES or "all",
            "metrics": metrics_url(settings),
            "shutdown_timeout_seconds": settings.WORKER_SHUTDOWN_TIMEOUT_SECONDS,
        },
    )
    # Dramatiq's master writes its children's log lines to sys.stderr; logs belong on stdout.
    sys.stderr = sys.stdout
    # /metrics, /healthz and /readyz for as long as worker processes run
    with serving_metrics(settings, on_ready=lambda: log_ready(settings, queues)):
        exit_code: int = dramatiq.cli.main(dramatiq_args)
    logger.info("greenroom worker stopped", extra={"exit_code": exit_code})
    return exit_code


def metrics_url(settings: Settings) -> str:
    return f"http://{settings.METRICS_HOST}:{settings.metrics_port}/metrics"


def log_ready(settings: Settings, queues: list[str]) -> None:
    """The worker's one line of its own once it is ready: what it consumes, how, and where its metrics are."""
    processes, threads, url = settings.WORKER_PROCESSES, settings.WORKER_THREADS, metrics_url(settings)
    worker_logger.info(
        "greenroom worker ready: queues %s; %d processes x %d threads; metrics %s",
        ", ".join(queues),
        processes,
        threads,
        url,
        extra={"queues": list(queues), "processes": processes, "threads": threads, "metrics": url},
    )


def export_worker_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """Apply the command's flags to the environment the worker processes inherit.

    Worker processes (and the metrics server) read their settings after
    Dramatiq forks them; writing the effective values here keeps every process
    of this worker in agreement.
    """
    queues = queue_names(args.queues) if args.queues else settings.WORKER_QUEUES
    effective = {
        "WORKER_PROCESSES": str(args.processes or settings.WORKER_PROCESSES),
        "WORKER_THREADS": str(args.threads or settings.WORKER_THREADS),
        "WORKER_QUEUES": ",".join(queues),
        "PROCESS_TYPE": settings.PROCESS_TYPE or ("-".join(queues) if queues else "all"),
        "METRICS_PORT": str(settings.metrics_port),
    }
    os.environ.update(effective)
    return settings.model_copy(
        update={
            "WORKER_PROCESSES": int(effective["WORKER_PROCESSES"]),
            "WORKER_THREADS": int(effective["WORKER_THREADS"]),
            "WORKER_QUEUES": list(queues),
            "PROCESS_TYPE": effective["PROCESS_TYPE"],
            "METRICS_PORT": settings.metrics_port,
        }
    )
