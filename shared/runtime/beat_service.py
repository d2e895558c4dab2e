"""One ``greenroom beat`` process: its Redis client, producer, metrics server and signals.

:func:`run_beat` serves /metrics, /healthz and /readyz on METRICS_HOST:METRICS_PORT,
runs :class:`shared.runtime.beat.Beat` until SIGTERM (or SIGINT), then hands its
lease over, closes its connections and flushes its spans; exit code 0. For example::

    run_beat(load_settings(), load_schedules(settings))
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import socket
import threading
from collections.abc import Sequence
from types import FrameType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from pydantic import SecretStr

from observability.beat_metrics import BeatHealth, BeatMetrics
from observability.exposition import ExpositionServer, make_server
from shared import __version__
from shared.cli.output import EXIT_FAILED, EXIT_OK, usage_error
from shared.producer import Producer
from shared.runtime.beat import Beat, count_of, publish_budget_seconds
from shared.runtime.beat_lease import Lease
from shared.runtime.beat_ledger import TickLedger
from shared.schedules import Schedule
from shared.settings import Settings
from shared.telemetry import ensure_producer_tracing

logger = logging.getLogger("greenroom.beat")

#: The longest a single Redis call of the beat may take (a third of a short lease at most).
MAX_REDIS_TIMEOUT_SECONDS = 2.0


def holder_id() -> str:
    """This process's name in the lease: host, pid and a random part (a restarted pid differs)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


def beat_settings(settings: Settings) -> Settings:
    """The settings the beat publishes with: one publish retries for a quarter of a lease at
    most (:func:`shared.runtime.beat.publish_budget_seconds`), so a process that lost its
    lease meanwhile stops soon (the next attempt checks the lease first), on a RabbitMQ
    connection that gives up as soon (:func:`beat_rabbitmq_url`)."""
    budget = publish_budget_seconds(settings.BEAT_LEASE_SECONDS)
    return settings.model_copy(
        update={
            "SEND_RETRY_TIMEOUT_SECONDS": min(settings.SEND_RETRY_TIMEOUT_SECONDS, budget),
            "PROCESS_TYPE": settings.PROCESS_TYPE or "beat",
            "RABBITMQ_URL": SecretStr(beat_rabbitmq_url(settings.rabbitmq_url, budget)),
        }
    )


def beat_rabbitmq_url(url: str, budget: float) -> str:
    """``url`` with pika's timeouts no longer than ``budget`` where it sets none of its own: the
    connection attempt, a RabbitMQ that blocks publishers, and the heartbeat, whose silence ends a
    connection that stopped answering (pika would otherwise wait minutes to close it).

    >>> beat_rabbitmq_url("amqp://guest:guest@rabbit:5672/%2F?heartbeat=30", 1.25)
    'amqp://guest:guest@rabbit:5672/%2F?heartbeat=30&socket_timeout=1.25&stack_timeout=1.25&blocked_connection_timeout=1.25'
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    seconds = f"{budget:g}"
    for name, value in (
        ("heartbeat", str(max(1, math.ceil(budget)))),
        ("socket_timeout", seconds),
        ("stack_timeout", seconds),
        ("blocked_connection_timeout", seconds),
    ):
        query.setdefault(name, value)
    return urlunsplit(parts._replace(query=urlencode(query)))


def run_beat(settings: Settings, schedules: Sequence[Schedule]) -> int:
    """Run the beat until SIGTERM; its exit code."""
    settings = beat_settings(settings)
    metrics, health = BeatMetrics(version=__version__), BeatHealth()
    # pika logs each failed connection attempt (several lines, a traceback) at ERROR: the
    # beat's own line per failed tick says it once.
    logging.getLogger("pika").setLevel(max(logging.CRITICAL, logging.getLogger("pika").level))
    try:
        server = make_server(settings.METRICS_HOST, settings.metrics_port, metrics.registry, health)
    except OSError as error:
        where = f"METRICS_PORT {settings.metrics_port} on {settings.METRICS_HOST}"
        return usage_error(f"{where}: cannot listen ({error.strerror or error})")
    timeout = min(MAX_REDIS_TIMEOUT_SECONDS, settings.BEAT_LEASE_SECONDS / 3)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    ensure_producer_tracing(settings, role="beat")
    producer = Producer(settings)
    holder = holder_id()
    beat = Beat(
        settings=settings,
        schedules=schedules,
        producer=producer,
        lease=Lease(client, holder=holder, ttl_seconds=settings.BEAT_LEASE_SECONDS),
        ledger=TickLedger(client, holder=holder, catchup_seconds=settings.BEAT_CATCHUP_SECONDS),
        metrics=metrics,
        health=health,
    )
    stop = threading.Event()
    _stop_on_signals(stop, beat, health)
    serving = threading.Thread(target=server.serve_forever, name="greenroom-exposition-accept", daemon=True)
    serving.start()
    logger.info(
        "greenroom beat ready: %s; lease %gs; metrics %s",
        count_of(len(schedules), "schedule"), settings.BEAT_LEASE_SECONDS, f"http://{settings.METRICS_HOST}:{settings.metrics_port}/metrics",
        extra={"schedules": [s.name for s in schedules], "holder": holder},
    )  # fmt: skip
    if not schedules:
        logger.warning("greenroom beat has no schedules (BEAT_HEARTBEAT_SECONDS=0 and none declared)")
    try:
        beat.run(stop)
    finally:
        _close(server, producer, client)
    logger.info("greenroom beat stopped", extra={"holder": holder})
    return EXIT_OK


def _stop_on_signals(stop: threading.Event, beat: Beat, health: BeatHealth) -> None:
    """SIGTERM or SIGINT: stop after the current step, handing the lease over. A second one: give
    the lease up and exit at once (exit 1), whatever the loop is doing (a publish stuck on a
    silent RabbitMQ)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            logger.warning("greenroom beat stopping now (a second %s)", signal.Signals(signum).name)
            beat.release_now()
            os._exit(EXIT_FAILED)
        stop.set()
        health.stopping.set()
        beat.wake()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _close(server: ExpositionServer, producer: Producer, client: redis.Redis[bytes]) -> None:
    server.shutdown()
    server.server_close()
    producer.close()
    client.close()
