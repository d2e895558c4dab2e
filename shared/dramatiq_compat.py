"""The only place greenroom reaches into Dramatiq's private parts.

Written against dramatiq>=2.0,<2.3 and tested with dramatiq 2.2.1.
``tests/integration/test_dramatiq_compat.py`` fails when Dramatiq changes what this
module relies on.

It relies on two things of :class:`dramatiq.brokers.rabbitmq.RabbitmqBroker`,
both overridden by :class:`DeadLetterArgumentsBroker` (Dramatiq has no public hook
for either):

- it declares each queue's dead-letter queue ``<queue>.XQ`` in its private method
  ``_declare_xq_queue(queue_name)`` (from ``declare_queue(..., ensure=True)`` and
  ``get_queue_message_counts``), with a message TTL Dramatiq reads from an
  environment variable when it is imported; the override takes the arguments from
  the broker instead (greenroom's DEAD_LETTER_TTL_SECONDS);
- it builds the arguments of each queue and its ``<queue>.DQ`` in its private method
  ``_build_queue_arguments(queue_name)``, with one ``x-max-priority`` for every queue
  (its ``max_priority`` option); the override sets it per queue instead
  (QUEUE_MAX_PRIORITIES).

Should a Dramatiq release drop either method, the queues keep Dramatiq's own
arguments (the ``.XQ`` its retention, the queues no priorities) and the broker
says so at construction, loudly (:func:`observability.fallbacks.report_fallback`).

Everything else greenroom does with Dramatiq goes through its public API: the
consumer (:mod:`shared.runtime.consumer`) implements :class:`dramatiq.broker.Consumer`
and is returned by an override of the public ``RabbitmqBroker.consume``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import q_name, xq_name

from observability.fallbacks import report_fallback

#: The private method of RabbitmqBroker that declares a dead-letter queue.
DECLARE_XQ_METHOD = "_declare_xq_queue"
#: The private method of RabbitmqBroker that builds the arguments of a queue and its ``.DQ``.
BUILD_ARGUMENTS_METHOD = "_build_queue_arguments"
#: The queue argument that enables priorities (RabbitMQ's).
MAX_PRIORITY_ARGUMENT = "x-max-priority"


class DeadLetterArgumentsBroker(RabbitmqBroker):
    """A RabbitmqBroker whose ``.XQ`` queues are declared with :meth:`dead_letter_queue_arguments`
    and whose queues (and their ``.DQ``) with the ``x-max-priority`` ``queue_max_priorities``
    gives them (by queue name; a queue not in it has no priorities)."""

    def __init__(self, *, queue_max_priorities: Mapping[str, int] | None = None, **options: Any) -> None:
        self.queue_max_priorities = dict(queue_max_priorities or {})
        super().__init__(**options)
        if not callable(getattr(RabbitmqBroker, DECLARE_XQ_METHOD, None)):
            report_fallback(
                "dead-letter queue arguments",
                f"dramatiq {dramatiq.__version__} has no RabbitmqBroker.{DECLARE_XQ_METHOD}: "
                "the .XQ queues are declared with Dramatiq's own retention",
            )
        if self.queue_max_priorities and not callable(getattr(RabbitmqBroker, BUILD_ARGUMENTS_METHOD, None)):
            report_fallback(
                "queue priorities",
                f"dramatiq {dramatiq.__version__} has no RabbitmqBroker.{BUILD_ARGUMENTS_METHOD}: "
                "queues are declared without x-max-priority and deliver in order, whatever the priority",
            )

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        """The arguments of every ``<queue>.XQ`` (a subclass says which)."""
        raise NotImplementedError

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.channel.queue_declare(
            queue=xq_name(queue_name), durable=True, arguments=self.dead_letter_queue_arguments()
        )

    def _build_queue_arguments(self, queue_name: str) -> Any:
        arguments = dict(super()._build_queue_arguments(queue_name))  # type: ignore[no-untyped-call]
        arguments.pop(MAX_PRIORITY_ARGUMENT, None)
        maximum = self.queue_max_priorities.get(q_name(queue_name))
        if maximum is not None:
            arguments[MAX_PRIORITY_ARGUMENT] = maximum
        return arguments
