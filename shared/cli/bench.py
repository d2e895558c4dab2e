"""``greenroom bench``: bare Dramatiq against greenroom, side by side.

Progress goes to stderr, the table of figures to stdout::

    $ greenroom bench --messages 5000 --processes 2 --threads 8 --json bench.json
    $ greenroom bench --otlp-protocol grpc
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared.cli.arguments import add_command, positive_int
from shared.cli.output import EXIT_FAILED, EXIT_OK
from shared.errors import GreenroomError
from shared.settings import Settings

#: The OTLP protocols greenroom's side can export its traces with (the bench's receiver takes both).
OTLP_PROTOCOLS = ("grpc", "http/protobuf")


def register(commands: Any) -> None:
    bench = add_command(
        commands,
        "bench",
        "Benchmark bare Dramatiq against greenroom: throughput, CPU, queue wait, start-up, RSS, send rates.",
        "greenroom bench --messages 5000 --processes 2 --threads 8 --json bench.json",
    )
    bench.add_argument(
        "--messages", type=positive_int, default=5000, help="tasks per drain run (default: 5000)"
    )
    bench.add_argument("--processes", type=positive_int, default=2, help="worker processes (default: 2)")
    bench.add_argument("--threads", type=positive_int, default=8, help="threads per process (default: 8)")
    bench.add_argument("--payload-bytes", type=positive_int, default=16, help="payload size (default: 16)")
    bench.add_argument(
        "--rounds", type=positive_int, default=3, help="worker runs per side, medians reported (default: 3)"
    )
    bench.add_argument(
        "--otlp-protocol",
        choices=OTLP_PROTOCOLS,
        default="http/protobuf",
        help="how greenroom's side exports its traces (default: http/protobuf)",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the side-by-side benchmark: progress on stderr, the table on stdout."""
    import pika.exceptions

    from shared.bench.report import format_table, write_json
    from shared.bench.run import Bench, BenchOptions

    options = BenchOptions(
        args.messages, args.processes, args.threads, args.payload_bytes, args.rounds, args.otlp_protocol
    )
    try:
        report = Bench(settings, options, progress=sys.stderr).run()
    except (GreenroomError, TimeoutError, pika.exceptions.AMQPError) as error:  # a step failed or hung
        print(f"greenroom: bench failed: {str(error) or type(error).__name__}", file=sys.stderr)
        return EXIT_FAILED
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
    return EXIT_OK
