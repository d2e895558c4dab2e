"""The worker's RabbitMQ consumer: Dramatiq's, checking what it hands out and settling in batches.

**Every body checked.** A body is untrusted input (anyone who may publish to the
queue can write it). Before a worker thread sees a delivery, the consumer checks
it with :func:`shared.runtime.message_checks.checked_message` against the queue that
delivered it; one that fails is dead-lettered at once (``basic.nack`` without
requeue, so RabbitMQ moves it to ``<queue>.XQ``) with one WARNING line naming
the field and why, and is never retried. Middleware hear of it through the
``after_reject_message(broker, queue_name, rejection)`` hook.

**Settled on the channel that delivered it.** Each message remembers the consumer
(channel) it came from. A message finishing after that consumer's connection was
lost is not settled on its successor, where its delivery tag would name another
message: RabbitMQ redelivers it, and one line says how many messages that is.

**Acks in batches.** Dramatiq's consumer hands every ack to the connection's
thread as its own callback: one wake-up of the consumer thread, one
``basic.ack`` frame and one flush of the socket per message. This consumer keeps
finished messages in a list and schedules one callback for all that finish
before it runs; that callback sends

- every ``basic.nack`` of the batch first, one frame each (dead-lettering is
  never folded into an ack), then
- one ``basic.ack`` with ``multiple=True`` for the acked tags below the oldest
  message still unfinished (RabbitMQ then acks every unsettled delivery up to
  that tag, and all of those are finished), and
- a plain ``basic.ack`` for each acked tag above it (a slower message is still
  running: acking past it would lose it if the worker died).

So no message is acked before it finished, and none that failed is acked.

**Never early.** A message that arrives before its ``greenroom_due_at`` (the delay
ladder of :mod:`shared.delays` delivers on time, but the producer's clock may run
ahead of the worker's) is published on the ladder again for the rest of its delay
and acked, without reaching a worker thread; one DEBUG line says so.

**Message fields as plain attributes.** Dramatiq's message proxy reads every
field through ``__getattr__`` after a failed normal lookup; the proxy here holds
the seven fields as attributes, where normal lookup finds them.

It implements Dramatiq's public :class:`dramatiq.broker.Consumer` interface on a
pika ``BlockingConnection`` of its own; ``GreenroomBroker.consume`` returns one::

    consumer = broker.consume("default", prefetch=16)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import pika
import pika.exceptions
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import q_name
from dramatiq.errors import ConnectionClosed

from shared import delays
from shared.runtime.message_checks import EXCERPT_CHARS, MessageRejected, checked_message, excerpt

logger = logging.getLogger("greenroom.consumer")

#: How many message ids one line lists at most.
MAX_IDS_LOGGED = 100


class DeliveredMessage(MessageProxy):
    """A checked message as one consumer's channel delivered it, its fields plain attributes."""

    def __init__(self, consumer: GreenroomConsumer, tag: int, redelivered: bool, message: Any) -> None:
        super().__init__(message)
        self.delivered_by = consumer
        self.delivery_tag = tag
        self.redelivered = redelivered
        vars(self).update(
            queue_name=message.queue_name,
            actor_name=message.actor_name,
            args=message.args,
            kwargs=message.kwargs,
            options=message.options,
            message_id=message.message_id,
            message_timestamp=message.message_timestamp,
        )


class GreenroomConsumer(Consumer):
    """A RabbitMQ consumer of one queue that checks every body before handing it out, settles
    each delivery on the channel that delivered it, and settles finished messages a batch
    per wake-up."""

    def __init__(self, broker: RabbitmqBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        """Consume ``queue_name`` on a connection of its own, at most ``prefetch`` messages
        unsettled; ``__next__`` returns None after ``timeout`` ms without a delivery."""
        self.broker: Any = broker
        self.queue_name = queue_name
        self._settling = threading.Lock()
        #: Delivery tags handed out and not yet finished.
        self.unsettled: set[int] = set()
        self._finished: list[tuple[int, bool]] = []  # (delivery tag, acked?) in finishing order
        self._flush_scheduled = False
        self._loss_reported = False
        #: Messages that arrived before they were due and went back on the delay ladder.
        self.delayed_again = 0
        try:
            self.connection = pika.BlockingConnection(parameters=broker.parameters)
            self.channel = self.connection.channel()
            self.channel.basic_qos(prefetch_count=prefetch)
            self.iterator = self.channel.consume(queue_name, inactivity_timeout=timeout / 1000)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None

    def __next__(self) -> DeliveredMessage | None:
        try:
            method, _properties, body = next(self.iterator)
        except (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            if getattr(e, "reply_code", None) == 404:  # the queue is gone: declare it again on restart
                self.broker.queues_pending.add(q_name(self.queue_name))
            raise ConnectionClosed(e) from None
        if method is None:
            return None
        try:
            message = checked_message(
                body,
                self.queue_name,
                self._queue_of_actor,
                max_bytes=self.broker.max_message_bytes,
                now_ms=int(time.time() * 1000),
            )
        except MessageRejected as rejection:
            self._reject(method.delivery_tag, body, rejection)
            return None
        except Exception as error:  # a check that broke must not stall the queue on this message
            logger.exception("Checking a message from queue %r failed", self.queue_name)
            reason = f"could not be checked ({type(error).__name__})"
            self._reject(method.delivery_tag, body, MessageRejected("body", reason))
            return None
        if "eta" in message.options or delays.remaining_ms(message.options, int(time.time() * 1000)) > 0:
            self._delay_again(method.delivery_tag, body, message)
            return None
        self.unsettled.add(method.delivery_tag)
        return DeliveredMessage(self, method.delivery_tag, method.redelivered, message)

    def _delay_again(self, tag: int, body: bytes, message: Any) -> None:
        """A message that arrived before its ``greenroom_due_at`` (clock skew between hosts, a
        forged option) goes back on the delay ladder for the rest of its delay, then is acked:
        it never runs early. So does one with Dramatiq's ``eta`` (left in ``.DQ`` by an older
        version, or sent by plain Dramatiq), which Dramatiq's worker would hold unacknowledged
        in memory until due: its eta becomes its due time (one already due goes straight to
        its queue). A failed publish raises ConnectionClosed before the ack, so the consumer
        restarts and RabbitMQ redelivers it; one that fails otherwise dead-letters it."""
        options = dict(message.options)
        eta = options.pop("eta", None)
        if eta is not None:
            options[delays.DUE_AT_OPTION] = max(int(eta), int(options.get(delays.DUE_AT_OPTION) or 0))
        remaining = delays.remaining_ms(options, int(time.time() * 1000))
        again = message.copy(queue_name=q_name(message.queue_name))
        again.options.clear()
        again.options.update(options)
        try:
            self.broker.enqueue(again)
        except ConnectionClosed:
            raise
        except Exception as error:  # the message itself cannot be published: never loop on it
            self._reject(
                tag, body, MessageRejected("options", f"could not be delayed ({type(error).__name__})")
            )
            return
        self.delayed_again += 1
        logger.debug(
            "Message %s arrived %d ms early on %r: back on the delay ladder",
            message.message_id,
            remaining,
            self.queue_name,
            extra={"queue": self.queue_name, "message_id": message.message_id, "early_ms": remaining},
        )
        self._finish(tag, acked=True, known=False)

    def _queue_of_actor(self, name: str) -> str | None:
        actor = self.broker.actors.get(name)
        return None if actor is None else str(actor.queue_name)

    def _reject(self, tag: int, body: bytes, rejection: MessageRejected) -> None:
        logger.warning(
            "Dead-lettered a message from queue %r: %s",
            self.queue_name,
            rejection,
            extra={
                "queue": self.queue_name,
                "field": rejection.field,
                "reason": rejection.reason,
                "body_bytes": len(body),
                "body_excerpt": excerpt(body[:EXCERPT_CHARS]),
            },
        )
        self._finish(tag, acked=False, known=False)
        self.broker.emit_after("reject_message", self.queue_name, rejection)

    def requeue(self, messages: Iterable[Any]) -> None:
        """Dramatiq hands back the delayed messages this consumer held when it closes; RabbitMQ
        redelivers them once the channel closes, so only say which they are."""
        message_ids = [message.message_id for message in messages]
        if message_ids:
            logger.info(
                "Returning %d delayed message(s) of %r to RabbitMQ unstarted",
                len(message_ids),
                self.queue_name,
                extra={"queue": self.queue_name, "message_ids": message_ids[:MAX_IDS_LOGGED]},
            )

    def ack(self, message: Any) -> None:
        self._settle(message, acked=True)

    def nack(self, message: Any) -> None:
        self._settle(message, acked=False)

    def _settle(self, message: Any, *, acked: bool) -> None:
        delivered_by = getattr(message, "delivered_by", None)
        if delivered_by is not self:
            # Delivered on an earlier connection of this consumer thread: its delivery tag
            # means nothing (or another message) on this channel. RabbitMQ redelivers it.
            if isinstance(delivered_by, GreenroomConsumer):
                delivered_by.report_lost_connection()
            return
        self._finish(message.delivery_tag, acked=acked)

    def _finish(self, tag: int, *, acked: bool, known: bool = True) -> None:
        with self._settling:
            if known:
                if tag not in self.unsettled:
                    verb = "ack" if acked else "nack"
                    logger.warning("Failed to %s message: not in known tags.", verb)
                    return
                self.unsettled.remove(tag)
            self._finished.append((tag, acked))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            self.connection.add_callback_threadsafe(self._settle_finished)
        except pika.exceptions.AMQPConnectionError:
            self.report_lost_connection()
        except Exception:
            with self._settling:
                self._flush_scheduled = False
            raise

    def report_lost_connection(self) -> None:
        """Say once, when a finished message can no longer be settled, what RabbitMQ will redeliver."""
        with self._settling:
            if self._loss_reported:
                return
            self._loss_reported = True
            unsettled = len(self.unsettled) + len(self._finished)
        logger.warning(
            "Lost the connection to RabbitMQ while consuming %r: %d unsettled message(s) of it will be "
            "redelivered, finished ones included (delivery is at-least-once)",
            self.queue_name,
            unsettled,
            extra={"queue": self.queue_name, "redelivered_messages": unsettled},
        )

    def _settle_finished(self) -> None:
        """Runs on the connection's thread: one batch of nacks and acks."""
        with self._settling:
            finished, self._finished = self._finished, []
            self._flush_scheduled = False
            oldest_unfinished = min(self.unsettled, default=None)
        for tag, acked, multiple in settlement_frames(finished, oldest_unfinished):
            if acked:
                self.channel.basic_ack(tag, multiple=multiple)
            else:
                self.channel.basic_nack(tag, requeue=False)

    def close(self) -> None:
        """Send every settlement scheduled so far, then close the channel and the connection
        (RabbitMQ redelivers what is still unsettled)."""
        try:
            sent = threading.Event()
            self.connection.add_callback_threadsafe(sent.set)  # callbacks run in order
            while not sent.is_set():
                self.connection.sleep(0)
        except pika.exceptions.ConnectionWrongStateError:
            logger.debug("The connection of %r is closed already.", self.queue_name)
        except Exception:
            logger.exception(
                "Could not send the last settlements of %r (RabbitMQ restarted?)", self.queue_name
            )
        try:
            self.channel.close()
            self.connection.close()
        except (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None


def settlement_frames(
    finished: list[tuple[int, bool]], oldest_unfinished: int | None
) -> list[tuple[int, bool, bool]]:
    """The frames that settle ``finished`` (delivery tag, acked?) pairs, as
    (delivery tag, ack?, multiple?) in sending order.

    >>> settlement_frames([(3, True), (1, True), (2, False), (7, True)], oldest_unfinished=5)
    [(2, False, False), (3, True, True), (7, True, False)]
    """
    acked = [tag for tag, was_acked in finished if was_acked]
    frames = [(tag, False, False) for tag, was_acked in finished if not was_acked]
    covered = [tag for tag in acked if oldest_unfinished is None or tag < oldest_unfinished]
    if covered:
        frames.append((max(covered), True, True))
    if oldest_unfinished is not None:
        frames.extend((tag, True, False) for tag in acked if tag > oldest_unfinished)
    return frames
