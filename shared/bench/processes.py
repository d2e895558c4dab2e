"""The bench's worker processes: bare Dramatiq's and greenroom's, with the same processes and threads.

- bare: ``python -m dramatiq shared.bench.bare`` (Dramatiq's RabbitmqBroker and default
  middleware, :mod:`shared.bench.bare`);
- greenroom: ``greenroom worker shared.bench.worker`` with everything on: tracing
  exported over OTLP (``grpc`` or ``http/protobuf``) to the bench's receiver,
  metrics, JSON task logs (:mod:`shared.bench.worker`).

Both consume only the bench queue and record each task in the same file
(:mod:`shared.bench.recorder`). A worker's output goes to ``<side>-worker.log``
in the bench's work directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.bench.otlp_receiver import Protocol
from shared.bench.queues import BENCH_DEAD_LETTER_TTL_SECONDS
from shared.bench.recorder import BENCH_QUEUE
from shared.settings import Settings

#: Seconds a stopped worker may take to exit.
STOP_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerPlan:
    """How the bench's workers run: where, with how many processes and threads, exporting where."""

    settings: Settings
    processes: int
    threads: int
    records: Path
    workdir: Path
    otlp_endpoint: str
    otlp_protocol: Protocol

    def command(self, side: str) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that start ``side``'s worker ("bare" or "greenroom")."""
        options = [
            "--processes",
            str(self.processes),
            "--threads",
            str(self.threads),
            "--queues",
            BENCH_QUEUE,
        ]
        env = {
            **os.environ,
            "RABBITMQ_URL": self.settings.rabbitmq_url,
            "REDIS_URL": self.settings.redis_url,
            "BENCH_RECORD_PATH": str(self.records),
        }
        if side == "bare":
            return [sys.executable, "-m", "dramatiq", "shared.bench.bare", *options], env
        greenroom = str(Path(sys.executable).with_name("greenroom"))
        env.update(
            TRACING_ENABLED="true",
            OTEL_SDK_DISABLED="false",
            OTEL_EXPORTER_OTLP_ENDPOINT=self.otlp_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=self.otlp_protocol,
            LOG_LEVEL="INFO",
            LOG_FORMAT="json",
            METRICS_PORT=str(_free_port()),
            METRICS_DIR=str(self.workdir / "metrics"),
            PROCESS_TYPE="bench",
            DEAD_LETTER_TTL_SECONDS=str(BENCH_DEAD_LETTER_TTL_SECONDS),
        )
        return [greenroom, "worker", "shared.bench.worker", *options], env

    @contextmanager
    def running(self, side: str) -> Iterator[subprocess.Popen[bytes]]:
        """``side``'s worker for the ``with`` block; stopped (SIGTERM) and waited for at its end."""
        argv, env = self.command(side)
        with open(self.workdir / f"{side}-worker.log", "ab") as log:
            worker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
            try:
                yield worker
            finally:
                worker.terminate()
                worker.wait(timeout=STOP_TIMEOUT_SECONDS)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
