"""The bench's queues: ``greenroom-bench`` with its ``.DQ`` and ``.XQ``, as Dramatiq lays them out.

The bench deletes only queues it created. :meth:`BenchQueues.claim` refuses to
start when any of the three already exists in the vhost (left by another run
that is still going, by a run that was killed, or declared by anyone else):
the bench would otherwise purge and delete messages it does not own. The
refusal names the queues and their messages; delete them (``rabbitmqctl
delete_queue -p VHOST NAME``) or run the bench on another vhost.
"""

from __future__ import annotations

import pika
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL

from shared.bench.recorder import BENCH_QUEUE
from shared.connections import checking_connection
from shared.errors import GreenroomError
from shared.queue_arguments import dead_letter_arguments
from shared.settings import Settings

#: The bench queue's dead-letter retention on both sides: bare Dramatiq's (7 days unless
#: its ``dramatiq_dead_message_ttl`` variable says otherwise), whatever DEAD_LETTER_TTL_SECONDS is.
BENCH_DEAD_LETTER_TTL_SECONDS = DEAD_MESSAGE_TTL // 1000

#: The bench's queue, its delay queue and its dead-letter queue.
BENCH_QUEUE_NAMES = (BENCH_QUEUE, f"{BENCH_QUEUE}.DQ", f"{BENCH_QUEUE}.XQ")


class BenchQueuesExist(GreenroomError):
    """A bench queue exists before the bench started: it is not the bench's to purge or delete."""


class BenchQueues:
    """Claims, empties and deletes the bench queues on the settings' RabbitMQ vhost."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.claimed = False

    def claim(self) -> None:
        """Check that no bench queue exists yet; BenchQueuesExist naming those that do."""
        with checking_connection(self.settings) as connection:
            existing = {name: _messages_in(connection, name) for name in BENCH_QUEUE_NAMES}
        found = {name: count for name, count in existing.items() if count is not None}
        if found:
            raise BenchQueuesExist(_refusal(found))
        self.claimed = True

    def empty(self) -> None:
        """Declare the bench queues as Dramatiq declares them (if missing), then purge them."""
        self._require_claim()
        with checking_connection(self.settings) as connection:
            channel = connection.channel()
            dead_letters = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{BENCH_QUEUE}.XQ"}
            for name in BENCH_QUEUE_NAMES:
                arguments = dead_letter_arguments(DEAD_MESSAGE_TTL) if name.endswith(".XQ") else dead_letters
                channel.queue_declare(name, durable=True, arguments=arguments)
                channel.queue_purge(name)

    def delete(self) -> None:
        """Delete the bench queues (claimed ones only: a refused claim deletes nothing)."""
        if not self.claimed:
            return
        with checking_connection(self.settings) as connection:
            channel = connection.channel()
            for name in BENCH_QUEUE_NAMES:
                channel.queue_delete(name)  # a queue that is not there counts as deleted
        self.claimed = False

    def _require_claim(self) -> None:
        if not self.claimed:
            raise RuntimeError("bench: the bench queues are used before they were claimed")


def _messages_in(connection: pika.BlockingConnection, name: str) -> int | None:
    """The messages in queue ``name``; None when there is no such queue."""
    channel = connection.channel()  # a passive declare of a missing queue closes its channel
    try:
        declared = channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return None
        raise
    channel.close()
    return int(declared.method.message_count)


def _refusal(found: dict[str, int]) -> str:
    listed = ", ".join(f"{name} ({_messages(count)})" for name, count in found.items())
    queues, exist, them = ("queue", "exists", "it") if len(found) == 1 else ("queues", "exist", "them")
    return (
        f"{queues} {listed} already {exist} in this vhost, and the bench deletes only queues it "
        f"created: delete {them} (rabbitmqctl delete_queue -p VHOST NAME) or run the bench on another vhost"
    )


def _messages(count: int) -> str:
    return "1 message" if count == 1 else f"{count} messages"
