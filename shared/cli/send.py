"""``greenroom send``: validate and send one task; print its message id, or with --wait its result.

$ greenroom send echo --kwargs '{"payload": {"x": 1}}' --wait --timeout 5
{"x": 1}
"""

from __future__ import annotations

import argparse
from typing import Any

from shared.cli.arguments import add_command, json_object, positive_float
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
    """Send one task; with --wait print its result as JSON."""
    from shared.producer import Producer

    producer = Producer(settings)
    try:
        handle = producer.send(args.task, **args.kwargs)
        if not args.wait:
            print(handle.message_id)
            return EXIT_OK
        print_json(handle.result(timeout=args.timeout))
        return EXIT_OK
    except GreenroomError as error:
        return failed(error)
    finally:
        producer.close()
