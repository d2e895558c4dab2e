"""``greenroom schedules``: list every schedule with its next three fire times.

The schedules are the ones ``greenroom beat`` would send with the same settings
and module: those declared with the contracts, the ``heartbeat`` (unless
BEAT_HEARTBEAT_SECONDS=0), and a module's if one is named. Times are ISO 8601 in
the schedule's time zone (UTC for an interval). Text, or ``--json``::

    $ greenroom schedules
    heartbeat  echo  every 60s
      Diagnostic: echo the tick's scheduled time (BEAT_HEARTBEAT_SECONDS).
      next: 2026-12-02T00:01:00+00:00, 2026-12-02T00:02:00+00:00, 2026-12-02T00:03:00+00:00

Exit codes: 0, or 2 for a bad schedule or a module that cannot be imported (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from datetime import datetime
from typing import Any

from shared.cli.arguments import add_command
from shared.cli.output import EXIT_OK, usage_error
from shared.errors import InvalidSchedule, excerpt
from shared.schedules import Schedule, load_schedules, next_ticks
from shared.settings import Settings
from shared.tasks import DuplicateTask, InvalidContract

#: How many fire times the listing shows per schedule.
SHOWN_TICKS = 3


def register(commands: Any) -> None:
    schedules = add_command(
        commands,
        "schedules",
        "List the schedules greenroom beat sends, each with its next three fire times.",
        "greenroom schedules --json",
    )
    add_module_argument(schedules)
    schedules.add_argument("--json", action="store_true", help="print a JSON array instead of text")
    schedules.epilog = f"{schedules.epilog}\n\nschedules are declared with the contracts (docs/schedules.md)"
    schedules.set_defaults(run=run)


def add_module_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "module",
        nargs="?",
        help="a module to import first, which declares more contracts and schedules",
    )


def schedules_of(module: str | None, settings: Settings) -> list[Schedule] | str:
    """The schedules with ``module`` imported first, checked; or the one line saying why not."""
    try:
        if module is not None:
            importlib.import_module(module)
        return load_schedules(settings)
    except (InvalidSchedule, InvalidContract, DuplicateTask) as error:
        return str(error)
    except (Exception, SystemExit) as error:  # the module's own error, whatever it is: one line
        problem = excerpt(" ".join(str(error).split()))
        return f"cannot import module {module!r}: {type(error).__name__}: {problem}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print every schedule and its next fire times."""
    schedules = schedules_of(args.module, settings)
    if isinstance(schedules, str):
        return usage_error(schedules)
    now_ms = int(time.time() * 1000)
    listed = [schedule_json(schedule, now_ms) for schedule in schedules]
    if args.json:
        print(json.dumps(listed, indent=2))
        return EXIT_OK
    if not listed:
        print("no schedules (BEAT_HEARTBEAT_SECONDS=0 and none declared)")
    for entry in listed:
        print(f"{entry['name']}  {entry['task']}  {entry['when']}")
        if entry["description"]:
            print(f"  {entry['description']}")
        if entry["kwargs"]:
            print(f"  kwargs: {excerpt(json.dumps(entry['kwargs']), 200)}")
        print(f"  next: {', '.join(entry['next'])}")
    return EXIT_OK


def schedule_json(schedule: Schedule, now_ms: int) -> dict[str, Any]:
    """A schedule as the listing shows it, its next fire times in its own time zone."""
    zone = schedule.zone
    return {
        "name": schedule.name,
        "task": schedule.task,
        "when": schedule.when,
        "cron": schedule.cron,
        "every_seconds": None if schedule.every_ms is None else schedule.every_ms // 1000,
        "timezone": schedule.timezone,
        "kwargs": dict(schedule.kwargs),
        "description": schedule.description,
        "next": [
            datetime.fromtimestamp(at / 1000, zone).isoformat()
            for at in next_ticks(schedule, after_ms=now_ms, count=SHOWN_TICKS)
        ],
    }
