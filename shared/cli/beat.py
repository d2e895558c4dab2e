"""``greenroom beat``: send the schedules' periodic tasks; run two or more for high availability.

One process leads (it holds a lease in Redis) and sends each tick once; the
others take over within about BEAT_LEASE_SECONDS if it stops. SIGTERM hands the
lease over at once. Its stdout is JSON log lines, one per tick sent::

    $ greenroom beat
    ... {"logger": "greenroom.beat", "message": "greenroom beat ready: 1 schedule; lease 5s; ...", ...}
    ... {"logger": "greenroom.beat", "message": "tick sent", "schedule": "heartbeat", ...}

A bad schedule, a module that cannot be imported, or RabbitMQ or Redis refusing the
settings (a login, a vhost) stops it with one line and exit 2; a service that cannot be
reached is waited for.
"""

from __future__ import annotations

import argparse
from typing import Any

from shared.cli.arguments import add_command
from shared.cli.output import usage_error
from shared.cli.schedules import add_module_argument, schedules_of
from shared.settings import Settings


def register(commands: Any) -> None:
    beat = add_command(
        commands,
        "beat",
        "Send the schedules' periodic tasks, each tick once; run two or more (one leads).",
        "greenroom beat",
    )
    beat.epilog = (
        f"{beat.epilog}\n\nsettings (docs/schedules.md):\n"
        "  BEAT_HEARTBEAT_SECONDS  the heartbeat's interval (default 60; 0: none)\n"
        "  BEAT_LEASE_SECONDS      the leader's lease; failover within about one (default 5)\n"
        "  BEAT_CATCHUP_SECONDS    late ticks up to this old are sent, older ones missed (default 300)"
    )
    add_module_argument(beat)
    beat.set_defaults(run=run, logs_to_stdout=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Load and check the schedules, then run the beat until SIGTERM."""
    from shared.runtime.metrics_setup import metrics_settings_problem

    if (problem := metrics_settings_problem(settings)) is not None:
        return usage_error(problem)
    schedules = schedules_of(args.module, settings)
    if isinstance(schedules, str):
        return usage_error(schedules)
    from shared.runtime.beat_service import run_beat  # imported here: only this command needs it
    from shared.runtime.service_checks import check_services
    from shared.tasks import get_task

    queues = sorted({get_task(schedule.task).queue for schedule in schedules})
    if (refused := check_services(settings, queues, stores_results=True)) is not None:
        return usage_error(refused)

    return run_beat(settings, schedules)
