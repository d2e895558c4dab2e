"""Queue depths read from RabbitMQ at scrape time, bounded and briefly cached.

For every queue it reports ``ready`` (the queue itself), ``delayed`` (its
``.DQ``, where Dramatiq and greenroom before the delay ladder kept delayed and
retrying messages) and ``dead_letter`` (its ``.XQ``), using passive declares,
which never create a queue. Delayed and retrying messages now wait on the delay
ladder, whose queues every queue shares and which cannot tell whose a message
is without taking it: each ``totals`` entry (name -> queues) is reported as one
more "queue" whose ``delayed`` depth is the sum of its queues (the worker passes
``{"greenroom.delay": <the ladder's 30 queues>}``). It connects with the
parameters it is given (the worker passes ``shared.connections.checking_parameters``:
one attempt, every wait bounded) and keeps the connection between scrapes;
scrapes closer together than ``cache_seconds`` share one reading, and a failed
one reports nothing and logs one WARNING line.

For example, with RabbitMQ at hand::

    parameters = lambda: pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")
    reader = QueueDepthReader(parameters, lambda: ["default"], totals={"greenroom.delay": ladder_queues})
    reader.read()   # {'default': {'ready': 12, 'delayed': 0, 'dead_letter': 1},
                    #  'greenroom.delay': {'delayed': 40}}
    reader.close()
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
        totals: Mapping[str, Sequence[str]] | None = None,
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.parameters = parameters
        self.queues = queues
        self.totals = dict(totals or {})
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
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
            depths = {queue: self._read_queue(queue) for queue in self.queues()}
            for name, queues in self.totals.items():
                depths[name] = {"delayed": sum(self._count(queue) for queue in queues)}
            return depths
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as error:
            logger.warning("Could not read queue depths from RabbitMQ: %s", error or type(error).__name__)
            self._disconnect()
            return {}

    def _read_queue(self, queue: str) -> dict[str, int]:
        return {state: self._count(queue + suffix) for state, suffix in STATES.items()}

    def _count(self, queue: str) -> int:
        """Messages ready in ``queue`` (0 if it is not declared), on the kept channel (a passive
        declare of a missing queue closes it: the next count opens another)."""
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connect().channel()
        try:
            return int(self._channel.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            self._channel = None
            return 0  # not declared yet: nothing in it

    def _connect(self) -> pika.BlockingConnection:
        if self._connection is None or self._connection.is_closed:
            parameters = self.parameters()
            parameters.heartbeat = 0  # a scrape-driven connection sits idle between scrapes
            self._connection = pika.BlockingConnection(parameters)
        return self._connection

    def _disconnect(self) -> None:
        self._channel = None
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._connection.close()
        self._connection = None
