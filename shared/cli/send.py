"""``greenroom send``: validate and send one task; print its message id, or with --wait its result.

$ greenroom send echo --kwargs '{"payload": {"x": 1}}' --wait --timeout 5
{"x": 1}
$ greenroom send echo --kwargs '{"payload": 1}' --delay 5m
0c1f5a3e-2b8d-4c1e-9a57-6f0d2e3b9c41
"""

from __future__ import annotations

import argparse
from typing import Any

from shared.cli.arguments import (
    add_command,
    aware_datetime,
    duration_seconds,
    json_object,
    positive_float,
    priority_number,
)
from shared.cli.output import EXIT_OK, failed, print_json
from shared.errors import GreenroomError
from shared.settings import Settings


def register(commands: Any) -> None:
    send = add_command(
        commands,
        "send",
        "Validate and send one task; print its message id (or, with --wait, its result as JSON).",
        """greenroom send echo --kwargs '{"payload": {"x": 1}}' --wait --timeout 5""",
    )
    send.add_argument("task", help="task name, e.g. echo or reports.build")
    send.add_argument(
        "--kwargs", type=json_object, default={}, metavar="JSON", help="keyword arguments as a JSON object"
    )
    when = send.add_mutually_exclusive_group()
    when.add_argument(
        "--delay",
        type=duration_seconds,
        metavar="D",
        help="run no earlier than D from now: seconds (30, 1.5) or 30s, 5m, 2h, 7d (at most 7 days)",
    )
    when.add_argument(
        "--eta",
        type=aware_datetime,
        metavar="TIME",
        help="run no earlier than TIME, ISO 8601 with Z or an offset (2026-12-24T18:00:00Z)",
    )
    send.add_argument(
        "--priority",
        type=priority_number,
        metavar="N",
        help="message priority, 0 up to the queue's maximum in QUEUE_MAX_PRIORITIES (higher runs first)",
    )
    send.add_argument("--wait", action="store_true", help="wait for the result and print it as JSON")
    send.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait with --wait, any finite number above 0 (default: 10)",
    )
    send.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Send one task (with --delay, --eta or --priority if given); with --wait print its result as JSON."""
    from shared.producer import Producer

    producer = Producer(settings)
    try:
        handle = producer.send_with_options(
            args.task, args.kwargs, delay=args.delay, eta=args.eta, priority=args.priority
        )
        if not args.wait:
            print(handle.message_id)
            return EXIT_OK
        print_json(handle.result(timeout=args.timeout))
        return EXIT_OK
    except GreenroomError as error:
        return failed(error)
    finally:
        producer.close()
