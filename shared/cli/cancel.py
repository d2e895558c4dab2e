"""``greenroom cancel``: cancel sent tasks by message id; one line per id.

$ greenroom cancel 0c1f5a3e-... 7d1e...
message 0c1f5a3e-... (task echo): cancelled (if it is running already, it finishes: ...)
message 7d1e...: unknown (never sent by a greenroom producer, or its record expired)

A task not started yet is skipped when a worker gets it; a running one is
interrupted if its contract is ``cancellable``, else it finishes. Exit 0 when every
id is now cancelled (or already was), 1 when any had finished or is unknown (or
Redis is unreachable), 2 for bad usage or settings (Redis refusing REDIS_URL included).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from shared.cancellation import CancelReport
from shared.cli.arguments import add_command
from shared.cli.output import EXIT_FAILED, EXIT_OK, failed
from shared.errors import GreenroomError
from shared.settings import Settings


def register(commands: Any) -> None:
    cancel = add_command(
        commands,
        "cancel",
        "Cancel sent tasks by message id (exit 1 if any had finished or is unknown).",
        "greenroom cancel 0c1f5a3e-2b8d-4c1e-9a57-6f0d2e3b9c41",
    )
    cancel.add_argument("message_ids", nargs="+", metavar="MESSAGE_ID", help="ids of messages sent earlier")
    cancel.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Cancel every id given; print one line each; exit code as the module says."""
    from opentelemetry.trace import NoOpTracerProvider

    from shared.producer import Producer

    producer = Producer(settings, tracer_provider=NoOpTracerProvider())  # a cancel publishes nothing
    try:
        return report(producer.cancel(*args.message_ids))
    except GreenroomError as error:
        return failed(error)
    finally:
        producer.close()


def report(reports: Sequence[CancelReport]) -> int:
    """Print each report's line; EXIT_OK if every message is cancelled, else EXIT_FAILED.

    >>> from shared.cancellation import SentRecord, report_for
    >>> report([report_for("m-1", SentRecord("echo", "default", True), "already cancelled")])
    message m-1 (task echo): already cancelled
    0
    >>> echo = SentRecord("echo", "default", True, cancellable=True)
    >>> report([report_for("m-1", echo, "cancelled"), report_for("m-2", None, "unknown")])
    message m-1 (task echo): cancelled
    message m-2: unknown (never sent by a greenroom producer, or its record expired)
    1
    """
    for each in reports:
        print(each.line)
    return EXIT_OK if all(each.cancelled for each in reports) else EXIT_FAILED
