"""Queue depths read from RabbitMQ at scrape time, bounded and briefly cached.

For every queue it reports ``ready`` (the queue itself), ``delayed`` (its
``.DQ``: delayed and retrying messages) and ``dead_letter`` (its ``.XQ``),
using passive declares, which never create a queue. It connects with the
parameters it is given (the worker passes ``shared.connections.checking_parameters``:
one attempt, every wait bounded) and keeps the connection between scrapes;
scrapes closer together than ``cache_seconds`` share one reading, and a failed
one reports nothing and logs one WARNING line.

For example, with RabbitMQ at hand::

    parameters = lambda: pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")
    reader = QueueDepthReader(parameters, lambda: ["default"])
    reader.read()   # {'default': {'ready': 12, 'delayed': 0, 'dead_letter': 1}}
    reader.close()
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException

logger = logging.getLogger("greenroom.exposition")

STATES = {"ready": "", "delayed": ".DQ", "dead_letter": ".XQ"}

Depths = dict[str, dict[str, int]]


class QueueDepthReader:
    """Reads the depths of ``queues()`` through a connection made from ``parameters()``."""

    def __init__(
        self,
        parameters: Callable[[], pika.ConnectionParameters],
        queues: Callable[[], list[str]],
        *,
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.parameters = parameters
        self.queues = queues
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._cached: Depths = {}
        self._read_at = -float("inf")

    def read(self) -> Depths:
        with self._lock:
            if self.clock() - self._read_at >= self.cache_seconds:
                self._cached = self._read_all()
                self._read_at = self.clock()
            return self._cached

    def close(self) -> None:
        """Close the connection kept between scrapes (the next read opens a new one)."""
        with self._lock:
            self._disconnect()

    def _read_all(self) -> Depths:
        try:
            return {queue: self._read_queue(queue) for queue in self.queues()}
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as error:
            logger.warning("Could not read queue depths from RabbitMQ: %s", error or type(error).__name__)
            self._disconnect()
            return {}

    def _read_queue(self, queue: str) -> dict[str, int]:
        depths = {}
        for state, suffix in STATES.items():
            channel = self._connect().channel()
            try:
                reply = channel.queue_declare(queue + suffix, passive=True)
                depths[state] = reply.method.message_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                depths[state] = 0  # not declared yet: nothing in it
        return depths

    def _connect(self) -> pika.BlockingConnection:
        if self._connection is None or self._connection.is_closed:
            parameters = self.parameters()
            parameters.heartbeat = 0  # a scrape-driven connection sits idle between scrapes
            self._connection = pika.BlockingConnection(parameters)
        return self._connection

    def _disconnect(self) -> None:
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._connection.close()
        self._connection = None
