"""``greenroom check``: do RabbitMQ and Redis answer? One line per service; --roundtrip runs an echo task.

Each line says ``ok`` (with the server's version), ``REFUSED`` (the service refuses
the settings: exit 2) or ``FAILED`` (unreachable: exit 1)::

    $ greenroom check --roundtrip
    rabbitmq ok amqp://guest:***@127.0.0.1:5672/%2F (RabbitMQ 3.13.7)
    redis ok redis://127.0.0.1:6379/0 (Redis 7.0.15)
    roundtrip ok (message 0c1f5a3e-2b8d-4c1e-9a57-6f0d2e3b9c41)
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from shared.cli.arguments import add_command, positive_float
from shared.cli.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from shared.errors import GreenroomError, ServiceRefused
from shared.settings import Settings, redact_url
from shared.strict_json import json_safe


def register(commands: Any) -> None:
    check = add_command(
        commands,
        "check",
        "Check that RabbitMQ and Redis answer (one line per service); --roundtrip also runs an echo task.",
        "greenroom check --roundtrip",
    )
    check.add_argument("--roundtrip", action="store_true", help="also send `echo` and wait for its result")
    check.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the round trip (default: 10)",
    )
    check.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print one line per service (then the round trip's, if asked and both are ok); the exit code."""
    code = EXIT_OK
    for check in (_check_rabbitmq, _check_redis):
        service_code, line = check(settings)
        print(line)
        code = max(code, service_code)
    if code == EXIT_OK and args.roundtrip:
        code = _check_roundtrip(settings, args.timeout)
    return code


def _check_rabbitmq(settings: Settings) -> tuple[int, str]:
    from shared.connections import checking_connection
    from shared.errors import BrokerRefused, BrokerUnavailable
    from shared.pika_compat import server_properties
    from shared.queue_arguments import priority_mismatch
    from shared.service_refusals import outage_line
    from shared.tasks import TASKS

    where = redact_url(settings.rabbitmq_url)
    try:
        with checking_connection(settings) as connection:
            version = server_properties(connection).get("version", b"?")
            queues = sorted({task.queue for task in TASKS.values()})
            mismatch = priority_mismatch(connection, queues, settings.QUEUE_MAX_PRIORITIES)
    except BrokerRefused as refused:
        return EXIT_USAGE, f"rabbitmq REFUSED {refused}"
    except Exception as error:  # any failure is the answer we report
        cause = error.__cause__ if isinstance(error, BrokerUnavailable) and error.__cause__ else error
        return EXIT_FAILED, f"rabbitmq FAILED {where}: {outage_line(cause)}"
    if mismatch is not None:  # a queue kept with other priorities than QUEUE_MAX_PRIORITIES gives it
        return EXIT_USAGE, f"rabbitmq REFUSED {mismatch}"
    return (
        EXIT_OK,
        f"rabbitmq ok {where} (RabbitMQ {version.decode() if isinstance(version, bytes) else version})",
    )


def _check_redis(settings: Settings) -> tuple[int, str]:
    from shared.connections import checking_redis
    from shared.service_refusals import outage_line, redis_refusal_line

    where = redact_url(settings.redis_url)
    try:
        with checking_redis(settings) as client:
            client.ping()
            version = client.info("server").get("redis_version", "?")
    except Exception as error:  # any failure is the answer we report
        refused = redis_refusal_line(error, settings)
        if refused is not None:
            return EXIT_USAGE, f"redis REFUSED {refused}"
        return EXIT_FAILED, f"redis FAILED {where}: {outage_line(error)}"
    return EXIT_OK, f"redis ok {where} (Redis {version})"


def _check_roundtrip(settings: Settings, timeout: float) -> int:
    from shared.producer import Producer

    token = uuid.uuid4().hex
    producer = Producer(settings)
    try:
        handle = producer.send("echo", payload=token)
        echoed = handle.result(timeout=timeout)
    except GreenroomError as error:
        print(f"roundtrip FAILED: {error}")
        return EXIT_USAGE if isinstance(error, ServiceRefused) else EXIT_FAILED
    finally:
        producer.close()
    if echoed != token:
        print(f"roundtrip FAILED: echo returned {json.dumps(json_safe(echoed))[:80]}, expected {token!r}")
        return EXIT_FAILED
    print(f"roundtrip ok (message {handle.message_id})")
    return EXIT_OK
