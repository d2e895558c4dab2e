"""Publish many messages with pipelined publisher confirms.

pika's BlockingChannel in confirm mode waits for RabbitMQ's confirmation of
each message before it sends the next (one round trip per message), and it
writes every frame to the socket separately. This publisher writes the
messages of a chunk together and lets RabbitMQ confirm them as they land
(``multiple`` acks), keeping at most ``MAX_UNCONFIRMED`` in flight; it returns
once RabbitMQ has confirmed every message.

Each connection (Dramatiq keeps one per thread) keeps its channel in confirm
mode from one batch to the next; it is replaced after any failure.

If the connection drops, or RabbitMQ refuses (nacks) a message, ``publish``
raises and keeps the messages that were not confirmed: calling it again sends
only those. A message whose confirmation was lost with the connection may then
arrive twice, with the same message id (at-least-once, as for ``send``); at most
``MAX_UNCONFIRMED`` messages are unconfirmed at any moment, so a drop duplicates
at most that many.

Every wait for confirmations ends by ``timeout`` + ``confirm_timeout`` (by default
``CONFIRM_TIMEOUT_SECONDS``) after the first ``publish``: the caller retries for
``timeout``, and the last attempt may wait one confirm timeout more.

Should pika lose the private parts that pipelining needs
(:mod:`shared.pika_compat`), every message waits for its own confirm, as with
pika's public API, and the process says so once. For example::

    publisher = BatchPublisher(broker, messages, timeout=10.0)
    publisher.publish()          # again after a ConnectionClosed: only the unconfirmed ones
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from shared import delays, pika_compat

if TYPE_CHECKING:
    from shared.broker import GreenroomBroker

#: Messages written to the socket together before pika flushes them.
CHUNK_SIZE = 256
#: Messages published but not yet confirmed, at most (bounds memory on both sides).
MAX_UNCONFIRMED = 2048
#: How long RabbitMQ may take to confirm what was sent before the batch counts as failed.
CONFIRM_TIMEOUT_SECONDS = 30.0
#: Longest single wait for the connection's events (a settled batch ends it at once).
MAX_POLL_SECONDS = 1.0


class BatchPublisher:
    """Publishes ``messages`` in order; see the module docstring."""

    def __init__(
        self,
        broker: GreenroomBroker,
        messages: Sequence[dramatiq.Message[Any]],
        *,
        timeout: float = 0.0,
        confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
    ) -> None:
        """``timeout``: how long after the first ``publish`` the caller may still retry;
        ``confirm_timeout``: how much longer the last attempt may wait for RabbitMQ's confirms."""
        self.broker = broker
        self.unconfirmed: list[dramatiq.Message[Any]] = list(messages)
        self.timeout = timeout
        self.confirm_timeout = confirm_timeout
        self.give_up_at = math.inf  # set by the first publish

    def publish(self) -> None:
        """Publish every unconfirmed message; raises ConnectionClosed if some remain unconfirmed."""
        if not self.unconfirmed:
            return
        if self.give_up_at == math.inf:
            self.give_up_at = time.monotonic() + self.timeout + self.confirm_timeout
        try:
            now = current_millis()
            delayed = {m.queue_name for m in self.unconfirmed if delays.remaining_ms(m.options, now) > 0}
            for queue in sorted({message.queue_name for message in self.unconfirmed}):
                self.broker.declare_queue(queue, ensure=True)
                if queue in delayed:
                    self.broker.join_ladder(queue)
            connection = self.broker.connection
            channel, confirmed = _confirm_channel(connection)
            try:
                self._publish_all(channel, confirmed)
            except BaseException:
                _forget_confirm_channel(connection)  # in an unknown state: the next batch opens a new one
                raise
        except (
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.AMQPChannelError,
            AMQPConnectorException,  # pika raises its handshake's stack_timeout as this, not AMQPError
        ) as error:
            del self.broker.connection  # the next attempt opens a fresh one
            raise ConnectionClosed(error) from None

    def _publish_all(self, channel: Any, confirmed: Confirmations) -> None:
        """Publish ``self.unconfirmed``, then keep only what RabbitMQ did not ack (also when
        the connection drops half-way: what it acked is not sent again)."""
        messages = self.unconfirmed
        before = confirmed.published  # the channel's earlier batches used the tags up to here
        connection = channel.connection
        try:
            for start in range(0, len(messages), CHUNK_SIZE):
                chunk = messages[start : start + CHUNK_SIZE]
                confirmed.wait_for(confirmed.published + len(chunk) - MAX_UNCONFIRMED, self.give_up_at)
                write_messages(self.broker, channel, chunk, confirmed)
                confirmed.published += len(chunk)
                connection.process_data_events(time_limit=0)  # write the chunk, read the acks so far
            confirmed.wait_for(confirmed.published, self.give_up_at)
        finally:
            self.unconfirmed = [m for tag, m in enumerate(messages, before + 1) if not confirmed.acked(tag)]
        if self.unconfirmed:
            raise pika.exceptions.AMQPChannelError(f"RabbitMQ refused {len(self.unconfirmed)} messages")


#: id(connection) -> (connection, its channel in confirm mode, the channel's Confirmations),
#: kept open from one batch to the next. Dramatiq gives each thread its own connection, so
#: a channel is only ever used by one thread. Entries of closed channels are dropped
#: whenever a channel is opened.
_kept: dict[int, tuple[Any, Any, Confirmations]] = {}
_kept_lock = threading.Lock()


def _confirm_channel(connection: Any) -> tuple[Any, Confirmations]:
    """``connection``'s channel in confirm mode: opened for its first batch and kept for the
    next ones (saving the round trips of opening a channel, selecting confirms and closing
    it for every batch)."""
    with _kept_lock:
        kept = _kept.get(id(connection))
    if kept is not None and kept[1].is_open:
        return kept[1], kept[2]
    channel = connection.channel()
    confirmed = Confirmations(channel)
    with _kept_lock:
        for key in [key for key, (_, other, _) in _kept.items() if not other.is_open]:
            del _kept[key]  # its connection closed (a producer closed, a broker outage)
        _kept[id(connection)] = (connection, channel, confirmed)
    return channel, confirmed


def _forget_confirm_channel(connection: Any) -> None:
    with _kept_lock:
        kept = _kept.pop(id(connection), None)
    if kept is not None and kept[1].is_open:
        with contextlib.suppress(Exception):  # the connection may be gone already
            kept[1].close()


def write_messages(
    broker: RabbitmqBroker,
    channel: Any,
    messages: Sequence[dramatiq.Message[Any]],
    confirmations: Confirmations | None = None,
) -> None:
    """Hand ``messages`` to pika's buffer for ``channel`` (persistent, as Dramatiq publishes
    them); the next processing of the connection's events writes them out. A message whose
    ``greenroom_due_at`` is still ahead goes on the delay ladder (:mod:`shared.delays`; the
    caller declared its queue and, for a delayed message, ``broker.join_ladder(queue)``).

    On the public path (``confirmations`` not pipelined) each publish waits for its
    confirm instead, and counts it in ``confirmations``. Middleware hooks run per
    message, as for ``broker.enqueue`` (tracing, metrics).
    """
    waiting = confirmations is not None and not confirmations.pipelined
    target = channel if waiting else pika_compat.buffering_channel(channel)
    for message in messages:
        broker.emit_before("enqueue", message, None)
        route = delays.publish_target(message.queue_name, message.options, current_millis())
        try:
            target.basic_publish(
                exchange=route.exchange,
                routing_key=route.routing_key,
                body=message.encode(),
                properties=pika.BasicProperties(
                    delivery_mode=2, priority=message.options.get("broker_priority"), headers=route.headers
                ),
            )
        except pika.exceptions.NackError:
            raise pika.exceptions.AMQPChannelError("RabbitMQ refused a message") from None
        if waiting and confirmations is not None:
            confirmations.confirmed_by_publish()
        broker.emit_after("enqueue", message, None)


class Confirmations:
    """Puts a channel in confirm mode and tracks RabbitMQ's acks and nacks by delivery tag.

    ``pipelined`` is False when pika offers only its public confirm mode
    (:func:`shared.pika_compat.pipelined_confirms`): every publish then waits for its
    own confirm, and :func:`write_messages` counts it here.
    """

    def __init__(self, channel: Any) -> None:
        self.connection = channel.connection
        self.highest = 0  # every tag up to this one is settled (acked or nacked)
        self.settled: set[int] = set()  # tags settled one by one above ``highest``
        self.refused: set[int] = set()
        self.published = 0  # messages published on the channel so far: the highest tag handed out
        self._selected = False
        self._awaited: Callable[[], bool] | None = None  # what _wait is waiting for
        self.pipelined = pika_compat.pipelined_confirms(
            channel, on_settled=self._on_settled, on_selected=self._on_selected
        )
        if not self.pipelined:
            channel.confirm_delivery()  # pika's public path: each basic_publish waits for its confirm
            return
        self._wait(lambda: self._selected)

    def wait_for(self, count: int, give_up_at: float = math.inf) -> None:
        """Wait until the first ``count`` messages are settled."""
        if not self.pipelined:
            return  # each publish waited for its confirm already
        self._wait(lambda: self.highest >= count, give_up_at)

    def confirmed_by_publish(self) -> None:
        """On the public path: the next message is confirmed (its publish returned)."""
        self.highest += 1

    def acked(self, tag: int) -> bool:
        """Whether RabbitMQ confirmed (acked, not nacked) the message with delivery ``tag``."""
        return (tag <= self.highest or tag in self.settled) and tag not in self.refused

    def _wait(self, done: Callable[[], bool], give_up_at: float = math.inf) -> None:
        """Process the connection's events until ``done()``, for CONFIRM_TIMEOUT_SECONDS at most
        and not past ``give_up_at`` (a ``time.monotonic()`` value).

        The confirmation callbacks run inside pika's I/O loop, below the
        blocking connection, which would keep waiting for its whole time limit
        after them; so the callback that makes ``done()`` true also schedules
        an empty timer, the event that ends ``process_data_events`` at once.
        """
        deadline = min(time.monotonic() + CONFIRM_TIMEOUT_SECONDS, give_up_at)
        self._awaited = done
        try:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise pika.exceptions.AMQPChannelError("RabbitMQ did not confirm the batch in time")
                self.connection.process_data_events(time_limit=min(remaining, MAX_POLL_SECONDS))
        finally:
            self._awaited = None

    def _wake_if_done(self) -> None:
        awaited = self._awaited
        if awaited is not None and awaited():
            self._awaited = None  # one wake-up per wait
            self.connection.call_later(0, _nothing)

    def _on_selected(self, frame: Any) -> None:
        self._selected = True
        self._wake_if_done()

    def _on_settled(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        tags = range(self.highest + 1, tag + 1) if method.multiple else (tag,)
        if isinstance(method, pika.spec.Basic.Nack):
            self.refused.update(tags)
        self.settled.update(tags)
        while self.highest + 1 in self.settled:
            self.highest += 1
            self.settled.discard(self.highest)
        self._wake_if_done()


def _nothing() -> None:
    """The wake-up timer's callback: its being due is what ends the wait."""
