"""The only place greenroom reaches into Dramatiq's private parts.

Written against dramatiq>=2.0,<2.3 and tested with dramatiq 2.2.1.
``tests/integration/test_dramatiq_compat.py`` fails when Dramatiq changes what this
module relies on.

It relies on one thing: :class:`dramatiq.brokers.rabbitmq.RabbitmqBroker` declares
each queue's dead-letter queue ``<queue>.XQ`` in its private method
``_declare_xq_queue(queue_name)`` (from ``declare_queue(..., ensure=True)`` and
``get_queue_message_counts``), with a message TTL Dramatiq reads from an
environment variable when it is imported. :class:`DeadLetterArgumentsBroker`
overrides that method so the arguments come from the broker instead (greenroom's
DEAD_LETTER_TTL_SECONDS). Dramatiq has no public hook for those arguments. Should a
Dramatiq release drop the method, the ``.XQ`` queues keep Dramatiq's own arguments
and the broker says so at construction, loudly
(:func:`observability.fallbacks.report_fallback`).

Everything else greenroom does with Dramatiq goes through its public API: the
consumer (:mod:`shared.runtime.consumer`) implements :class:`dramatiq.broker.Consumer`
and is returned by an override of the public ``RabbitmqBroker.consume``.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import xq_name

from observability.fallbacks import report_fallback

#: The private method of RabbitmqBroker that declares a dead-letter queue.
DECLARE_XQ_METHOD = "_declare_xq_queue"


class DeadLetterArgumentsBroker(RabbitmqBroker):
    """A RabbitmqBroker whose ``.XQ`` queues are declared with :meth:`dead_letter_queue_arguments`."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not callable(getattr(RabbitmqBroker, DECLARE_XQ_METHOD, None)):
            report_fallback(
                "dead-letter queue arguments",
                f"dramatiq {dramatiq.__version__} has no RabbitmqBroker.{DECLARE_XQ_METHOD}: "
                "the .XQ queues are declared with Dramatiq's own retention",
            )

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        """The arguments of every ``<queue>.XQ`` (a subclass says which)."""
        raise NotImplementedError

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.channel.queue_declare(
            queue=xq_name(queue_name), durable=True, arguments=self.dead_letter_queue_arguments()
        )
