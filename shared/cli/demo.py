"""``greenroom demo-producer``: send a steady mix of tasks until stopped, so dashboards show life.

$ greenroom demo-producer --rate 5 --duration 60
"""

from __future__ import annotations

import argparse
from typing import Any

from shared.cli.arguments import add_command, positive_float
from shared.cli.output import EXIT_OK
from shared.settings import Settings


def register(commands: Any) -> None:
    demo = add_command(
        commands,
        "demo-producer",
        "Send a steady mix of tasks (echo, reports, retries, failures) until stopped.",
        "greenroom demo-producer --rate 5 --duration 60",
    )
    demo.add_argument("--rate", type=positive_float, default=5.0, help="tasks per second (default: 5)")
    demo.add_argument(
        "--duration", type=positive_float, help="stop after this many seconds (default: run until SIGTERM)"
    )
    demo.set_defaults(run=run, logs_to_stdout=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Send demo traffic."""
    from shared.cli.demo_producer import run_demo
    from shared.producer import Producer

    producer = Producer(settings)
    try:
        run_demo(producer, rate=args.rate, duration=args.duration)
    finally:
        producer.close()
    return EXIT_OK
