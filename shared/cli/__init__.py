"""The ``greenroom`` command: :func:`main` and the parser; one module per command.

Exit codes (:mod:`shared.cli.output`): 0 success, 1 the operation failed, 2 bad
usage or bad settings, RabbitMQ or Redis refusing them included (one line on
stderr). A service (``worker``, ``demo-producer``) logs JSON lines to stdout;
every other command answers on stdout and logs to stderr.

    $ greenroom --help
    $ greenroom worker --help
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Literal, NoReturn

from shared.cli import (
    beat,
    bench,
    cancel,
    check,
    config,
    demo,
    dlq,
    healthcheck,
    schedules,
    send,
    tasks,
    worker,
)
from shared.cli.output import EXIT_USAGE
from shared.logging import configure_logging, mask_configured_secrets
from shared.settings import Settings, SettingsError, load_settings

#: The commands, in the order ``greenroom --help`` lists them; each module registers its own.
COMMANDS = (worker, beat, send, cancel, tasks, schedules, config, check, dlq, bench, healthcheck, demo)

#: Loggers whose lines a short-lived command keeps off stderr below ERROR (pika's: at
#: CRITICAL): the command prints the one line that matters itself.
QUIET_LOGGERS = {"pika": logging.CRITICAL, "dramatiq": logging.ERROR, "greenroom.producer": logging.ERROR}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other greenroom error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"greenroom: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="greenroom",
        allow_abbrev=False,
        description="greenroom: an observable Dramatiq worker platform.",
        epilog="Settings come from the environment and .env; see `greenroom config`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``greenroom`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"greenroom: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    mask_configured_secrets(settings.secrets())  # also outside URLs, as written and decoded
    # A service's logs are its output (stdout); other commands answer on stdout and log to stderr.
    is_service = getattr(args, "logs_to_stdout", False)
    log_stream: Literal["stdout", "stderr"] = "stdout" if is_service else "stderr"
    configure_logging(level=settings.LOG_LEVEL, fmt=settings.LOG_FORMAT, stream=log_stream)
    if not is_service:
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(max(level, logging.getLogger(name).getEffectiveLevel()))
    run: Callable[[argparse.Namespace, Settings], int] = args.run
    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
