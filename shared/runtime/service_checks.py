"""Before ``greenroom worker`` starts: do RabbitMQ and Redis accept its settings?

A worker RabbitMQ or Redis refuses (a login, a vhost, a permission, a dead-letter
queue kept with another TTL, a queue kept with other priorities, a Redis database)
would start, call itself ready and retry for good; ``greenroom worker`` instead
prints the line :func:`check_services` returns and exits 2. A service that cannot
be reached at all passes: that is an outage, and the worker connects once it can.

Example (not run here: it needs RabbitMQ and Redis)::

    check_services(settings, ["default"], stores_results=True)
    # None, or e.g. "RABBITMQ_URL (amqp://app:***@rabbit:5672/prod): RabbitMQ refused the login ..."
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.connections import checking_connection, checking_redis
from shared.errors import BrokerRefused, BrokerUnavailable, InvalidParameter
from shared.producer_checks import message_priority
from shared.queue_arguments import dead_letter_mismatch, priority_mismatch
from shared.service_refusals import redis_refusal_line
from shared.settings import Settings
from shared.tasks import TASKS


def check_services(settings: Settings, queues: Iterable[str], *, stores_results: bool) -> str | None:
    """None when RabbitMQ accepts the login, the vhost, the dead-letter queues of
    ``queues`` and the priorities of those that exist as the settings describe them,
    and (if the worker ``stores_results``) Redis its login and database; else the line
    to print. A service that cannot be reached at all passes. Declares the dead-letter
    queues the worker would declare next, nothing else. First, without a service: a
    contract on ``queues`` whose priority its queue does not take (every send of it
    would be refused).
    """
    queues = list(queues)
    return (
        _contract_refusal(settings, queues)
        or _rabbitmq_refusal(settings, queues)
        or (_redis_refusal(settings) if stores_results else None)
    )


def _contract_refusal(settings: Settings, queues: list[str]) -> str | None:
    for contract in TASKS.values():
        if contract.queue in queues and contract.priority is not None:
            try:
                message_priority(contract, None, settings.QUEUE_MAX_PRIORITIES)
            except InvalidParameter as refused:
                return str(refused)
    return None


def _rabbitmq_refusal(settings: Settings, queues: list[str]) -> str | None:
    try:
        with checking_connection(settings) as connection:
            return dead_letter_mismatch(
                connection, queues, settings.DEAD_LETTER_TTL_SECONDS
            ) or priority_mismatch(connection, queues, settings.QUEUE_MAX_PRIORITIES)
    except BrokerRefused as refused:  # a login, a vhost, a permission the user lacks
        return str(refused)
    except BrokerUnavailable:  # an outage: left to the worker's reconnects
        return None


def _redis_refusal(settings: Settings) -> str | None:
    import redis  # imported here: only workers whose tasks store results need it

    try:
        with checking_redis(settings) as client:
            client.ping()
    except redis.RedisError as error:  # a login, a database number past the server's count
        return redis_refusal_line(error, settings)
    return None
