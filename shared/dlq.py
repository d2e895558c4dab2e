"""Inspect, replay and purge dead-lettered messages (the ``<queue>.XQ`` queues).

>>> letters = DeadLetters(producer)
>>> [letter.message_id for letter in letters.list("default", limit=10)]   # nothing consumed
['0c1f...']
>>> letters.replay("default", ids={"0c1f..."}, fresh_retries=True)
1

Listing reads messages without acknowledging them and returns them all to the
queue. Replay republishes a message to its queue (with publisher confirms and
the message's own trace context, so the replay joins the original trace) and
only then removes the dead letter: a crash in between leaves a duplicate,
never a loss.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dramatiq
import pika
import pika.exceptions
import redis
from dramatiq.common import xq_name
from dramatiq.errors import BrokerConnectionError, DecodeError
from dramatiq.results import ResultFailure, ResultMissing

from shared.errors import PublishError
from shared.producer import Producer
from shared.service_refusals import refusal_line

#: How many dead letters one listing or replay reads at most unless told otherwise.
DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    actor: str
    queue: str
    arguments: str
    error: str
    age_seconds: float
    message: dramatiq.Message[Any] | None

    def line(self) -> str:
        return (
            f"{self.message_id}  {self.actor:<24} {self.age_seconds:>8.0f}s  {self.arguments}  {self.error}"
        )


class DeadLetters:
    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def count(self, queue: str) -> int:
        """Dead letters of ``queue`` now (0 if its dead-letter queue was never declared)."""
        with self._channel() as channel:
            try:
                return int(channel.queue_declare(xq_name(queue), passive=True).method.message_count)
            except pika.exceptions.ChannelClosedByBroker:
                return 0

    def list(self, queue: str, *, limit: int = DEFAULT_LIMIT) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``queue``, oldest first; all stay in the queue."""
        if not self.count(queue):
            return []
        with self._channel() as channel:
            letters = [letter for _tag, letter in self._read(channel, queue, limit)]
            # Closing the channel without acknowledging returns every message to the queue.
        return letters

    def replay(self, queue: str, *, ids: set[str] | None, fresh_retries: bool, limit: int = 10_000) -> int:
        """Move dead letters (all, or those in ``ids``) back to ``queue``; return how many."""
        replayed: set[str] = set()
        # Only what is dead now: a replayed task may fail again and come back during this loop.
        waiting = self.count(queue)
        with self._channel() as channel:
            for tag, letter in self._read(channel, queue, min(limit, waiting)):
                wanted = ids is None or letter.message_id in ids
                if letter.message is None or not wanted or letter.message_id in replayed:
                    continue
                message = letter.message
                if fresh_retries:
                    message.options.pop("retries", None)
                message.options.pop("traceback", None)
                self._enqueue(message)  # confirmed before the dead letter goes
                channel.basic_ack(tag)
                replayed.add(letter.message_id)
        return len(replayed)

    def _enqueue(self, message: dramatiq.Message[Any]) -> None:
        try:
            self.producer.broker.enqueue(message)
        except BrokerConnectionError as error:
            refused = refusal_line(error, self.producer.settings)
            if refused is None:
                raise
            raise PublishError(f"could not replay {message.message_id}: {refused}") from None

    def purge(self, queue: str) -> int:
        """Delete every dead letter of ``queue``; return how many."""
        if not self.count(queue):
            return 0
        with self._channel() as channel:
            reply = channel.queue_purge(xq_name(queue))
            return int(reply.method.message_count)

    def _read(self, channel: Any, queue: str, limit: int) -> Iterator[tuple[int, DeadLetter]]:
        for _ in range(limit):
            method, properties, body = channel.basic_get(xq_name(queue), auto_ack=False)
            if method is None:
                return
            yield method.delivery_tag, _describe(queue, properties, body, self._stored_error)

    def _stored_error(self, message: dramatiq.Message[Any]) -> str:
        """The failure the worker stored as the task's result, if it stores results."""
        try:
            self.producer.backend.get_result(message, block=False)
        except ResultFailure as failure:
            return f"{failure.orig_exc_type}: {failure.orig_exc_msg}"
        except (ResultMissing, redis.RedisError):
            return ""
        return ""

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        connection = pika.BlockingConnection(pika.URLParameters(self.producer.settings.rabbitmq_url))
        try:
            yield connection.channel()
        finally:
            connection.close()


def _describe(
    queue: str, properties: Any, body: bytes, stored_error: Callable[[dramatiq.Message[Any]], str]
) -> DeadLetter:
    try:
        message: dramatiq.Message[Any] | None = dramatiq.Message.decode(body)
    except DecodeError:
        message = None
    dead_since = _dead_since(properties)
    if message is None:
        return DeadLetter(
            "?", "?", queue, f"<{len(body)} bytes, not a Dramatiq message>", "", dead_since, None
        )
    arguments = json.dumps(message.kwargs or list(message.args), default=str)
    return DeadLetter(
        message_id=message.message_id,
        actor=message.actor_name,
        queue=queue,
        arguments=arguments if len(arguments) <= 60 else arguments[:57] + "...",
        error=stored_error(message),
        age_seconds=dead_since,
        message=message,
    )


def _dead_since(properties: Any) -> float:
    deaths = (properties.headers or {}).get("x-death") or []
    died = deaths[0].get("time") if deaths else None
    return max(0.0, time.time() - died.timestamp()) if died else 0.0
