"""Schedules: periodic tasks that ``greenroom beat`` sends, declared in code next to the contracts.

A schedule names a task, its keyword arguments, and either a cron expression
(five fields, read by `cronsim <https://github.com/cuu508/cronsim>`_, in a time
zone) or an interval in whole seconds. Declaring one registers it in
:data:`SCHEDULES`, as declaring a contract registers it in the task table; a
module of :mod:`shared.contracts` is the place for both::

    from shared.schedules import Schedule

    NIGHTLY_INVENTORY = Schedule(
        name="reports.nightly-inventory",
        task="reports.sync_inventory",
        kwargs={"source": "erp"},
        cron="30 2 * * *",
        timezone="Europe/Berlin",
    )

Each fire time is a *tick*. Ticks are computed, not remembered: an interval's
ticks are the multiples of it since the Unix epoch, a cron expression's are its
matching minutes, so every beat process agrees on them. A cron tick that falls
into a daylight-saving gap runs when the gap ends; one in a repeated hour runs
once, as cron does:

>>> berlin = Schedule(name="doc.berlin", task="echo", kwargs={"payload": 1},
...                   cron="30 2 * * *", timezone="Europe/Berlin", declared=False)
>>> [iso_utc(at) for at in next_ticks(berlin, after_ms=1_774_699_200_000, count=2)]
['2026-03-29T01:00:00Z', '2026-03-30T00:30:00Z']
>>> every_minute = Schedule(name="doc.minute", task="echo", kwargs={"payload": 1}, every=60,
...                         declared=False)
>>> [iso_utc(at) for at in next_ticks(every_minute, after_ms=1_796_169_615_000, count=2)]
['2026-12-02T00:01:00Z', '2026-12-02T00:02:00Z']
>>> Schedule(name="doc.bad", task="echo", cron="61 * * * *", declared=False)
Traceback (most recent call last):
  ...
shared.errors.InvalidSchedule: schedule 'doc.bad': cron '61 * * * *': Bad minute

Arguments are checked against the task's contract when the schedules are loaded
(:func:`load_schedules`), once every contract is declared.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import dramatiq
from cronsim import CronSim, CronSimError

from observability.messaging_spans import SCHEDULE_OPTION
from shared.errors import GreenroomError, InvalidSchedule
from shared.producer_checks import message_priority, send_options, task_message
from shared.settings import Settings
from shared.tasks import CONTRACTS_PACKAGE, DeclarationTable, get_task

#: What a schedule's name may be: it becomes part of message ids, Redis keys and metric labels.
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The longest interval a schedule may have (a year), in seconds.
MAX_INTERVAL_SECONDS = 366 * 86400
#: A cron expression: five fields (no seconds), and not longer than this.
CRON_FIELDS = 5
MAX_CRON_CHARS = 200
#: How far back the last tick before a moment is looked for, at most (eight years).
MAX_LOOKBACK_MS = 8 * 366 * 86_400_000
#: The name of the diagnostic schedule BEAT_HEARTBEAT_SECONDS sets up.
HEARTBEAT = "heartbeat"


@dataclass(frozen=True, slots=True)
class Schedule:
    """A task sent on a cron expression (in ``timezone``) or ``every`` so many seconds.

    ``declared``: register it in :data:`SCHEDULES` (False: a schedule made at run
    time, such as the heartbeat). A bad name, cron expression, interval or time
    zone raises InvalidSchedule where it is declared.
    """

    name: str
    task: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: float | timedelta | None = None
    timezone: str = "UTC"
    description: str = ""
    declared: bool = field(default=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_declaration(self)
        if self.declared:
            SCHEDULES.register(self)

    @property
    def every_ms(self) -> int | None:
        """The interval in ms (None for a cron schedule)."""
        if self.every is None:
            return None
        seconds = self.every.total_seconds() if isinstance(self.every, timedelta) else self.every
        return round(seconds * 1000)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def when(self) -> str:
        """How it recurs, as ``greenroom schedules`` shows it: ``cron 30 2 * * * Europe/Berlin``."""
        if self.cron is not None:
            return f"cron {self.cron} {self.timezone}"
        return f"every {self.every_ms // 1000 if self.every_ms else 0}s"


def _check_declaration(schedule: Schedule) -> None:
    name = schedule.name
    if not isinstance(name, str) or not SCHEDULE_NAME.fullmatch(name):
        raise InvalidSchedule(name, "a name is 1 to 64 of A-Z a-z 0-9 _ . -")
    if not isinstance(schedule.task, str) or not schedule.task:
        raise InvalidSchedule(name, "task must be a task name")
    if not isinstance(schedule.kwargs, Mapping):
        raise InvalidSchedule(name, f"kwargs must be a mapping, not {type(schedule.kwargs).__name__}")
    if (schedule.cron is None) == (schedule.every is None):
        raise InvalidSchedule(name, "give cron or every, one of them")
    if not isinstance(schedule.timezone, str) or schedule.timezone not in _time_zones():
        raise InvalidSchedule(
            name, f"timezone {schedule.timezone!r} is not an IANA time zone (e.g. Europe/Berlin)"
        )
    zone = ZoneInfo(schedule.timezone)
    if schedule.cron is not None:
        _check_cron(name, schedule.cron, zone)
    else:
        _check_every(schedule)


@functools.cache
def _time_zones() -> frozenset[str]:
    """The IANA zones, without those that mean different things on different hosts."""
    return frozenset(available_timezones() | {"UTC"}) - {"localtime", "Factory", "posixrules"}


def _check_cron(name: str, cron: object, zone: ZoneInfo) -> None:
    if not isinstance(cron, str):
        raise InvalidSchedule(name, f"cron must be a string, not {type(cron).__name__}")
    if len(cron) > MAX_CRON_CHARS:
        raise InvalidSchedule(name, f"cron is longer than {MAX_CRON_CHARS} characters")
    if len(cron.split()) != CRON_FIELDS:
        raise InvalidSchedule(
            name,
            f"cron {cron!r}: {len(cron.split())} fields, not five (minute hour day month weekday)",
        )
    try:
        next(CronSim(cron, datetime.now(zone)))
    except CronSimError as error:
        raise InvalidSchedule(name, f"cron {cron!r}: {error}") from None
    except StopIteration:
        raise InvalidSchedule(name, f"cron {cron!r} never fires") from None


def _check_every(schedule: Schedule) -> None:
    every = schedule.every
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds != int(seconds)
        or not 1 <= seconds <= MAX_INTERVAL_SECONDS
    ):
        raise InvalidSchedule(
            schedule.name, f"every must be whole seconds from 1 to {MAX_INTERVAL_SECONDS}, not {every!r}"
        )
    if schedule.timezone != "UTC":
        raise InvalidSchedule(schedule.name, "a time zone applies to cron schedules only")


class ScheduleTable(DeclarationTable[Schedule]):
    """Every declared schedule by name; reading it imports :mod:`shared.contracts` first."""

    def duplicate(self, existing: Schedule, new: Schedule) -> Exception:
        return InvalidSchedule(new.name, f"declared twice (task {existing.task!r} and task {new.task!r})")


#: The schedules declared in this process.
SCHEDULES = ScheduleTable(CONTRACTS_PACKAGE)


def ticks_after(schedule: Schedule, after_ms: int) -> Iterator[int]:
    """The schedule's ticks (epoch ms), in order, from the first one after ``after_ms`` on."""
    every_ms = schedule.every_ms
    if every_ms is not None:
        tick = (after_ms // every_ms + 1) * every_ms
        while True:
            yield tick
            tick += every_ms
    zone = schedule.zone
    for fire_time in CronSim(schedule.cron or "", datetime.fromtimestamp(after_ms / 1000, zone)):
        tick = round(fire_time.timestamp() * 1000)
        if tick > after_ms:  # started in a repeated hour, cronsim may begin with its first pass
            yield tick


def next_ticks(schedule: Schedule, *, after_ms: int, count: int) -> list[int]:
    """The next ``count`` ticks after ``after_ms`` (epoch ms)."""
    return list(islice(ticks_after(schedule, after_ms), count))


def ticks_in(schedule: Schedule, after_ms: int, until_ms: int, *, most: int) -> tuple[int, int]:
    """How many ticks lie in (``after_ms``, ``until_ms``] (counted up to ``most`` for a cron
    schedule), and the last of them (``after_ms`` if none).

    >>> ticks_in(Schedule(name="doc.s", task="echo", every=10, declared=False), 0, 35_000, most=100)
    (3, 30000)
    """
    every_ms = schedule.every_ms
    if every_ms is not None:
        first, last = after_ms // every_ms + 1, until_ms // every_ms
        return (last - first + 1, last * every_ms) if last >= first else (0, after_ms)
    count, last = 0, after_ms
    for tick in ticks_after(schedule, after_ms):
        if tick > until_ms:
            break
        count, last = count + 1, tick
        if count >= most:
            return count, _last_tick_until(schedule, until_ms)
    return count, last


def _last_tick_until(schedule: Schedule, until_ms: int) -> int:
    """The schedule's last tick at or before ``until_ms`` (it has one within MAX_LOOKBACK_MS)."""
    span = 86_400_000
    while True:
        last = None
        for tick in ticks_after(schedule, until_ms - span):
            if tick > until_ms:
                break
            last = tick
        if last is not None or span >= MAX_LOOKBACK_MS:
            return last if last is not None else until_ms
        span *= 2


def interval_seconds(schedule: Schedule, now_ms: int) -> float:
    """The time between the schedule's next two ticks."""
    first, second = next_ticks(schedule, after_ms=now_ms, count=2)
    return (second - first) / 1000


def iso_utc(at_ms: int) -> str:
    """``at_ms`` as ISO 8601 in UTC, to the second: ``2026-12-01T23:45:00Z``."""
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_message_id(schedule: str, at_ms: int) -> str:
    """The message id of a tick, the same in every beat process: ``beat:heartbeat:2026-12-01T23:45:00Z``.

    >>> tick_message_id("heartbeat", 1_796_168_700_000)
    'beat:heartbeat:2026-12-01T23:45:00Z'
    """
    return f"beat:{schedule}:{iso_utc(at_ms)}"


def heartbeat_schedule(settings: Settings) -> Schedule | None:
    """The ``heartbeat`` schedule: ``echo`` every BEAT_HEARTBEAT_SECONDS (None when it is 0)."""
    if not settings.BEAT_HEARTBEAT_SECONDS:
        return None
    return Schedule(
        name=HEARTBEAT,
        task="echo",
        every=settings.BEAT_HEARTBEAT_SECONDS,
        description="Diagnostic: echo the tick's scheduled time (BEAT_HEARTBEAT_SECONDS).",
        declared=False,
    )


def tick_message(schedule: Schedule, at_ms: int, settings: Settings) -> dramatiq.Message[Any]:
    """The message of the tick at ``at_ms``: the schedule's task and arguments (the
    heartbeat's ``payload`` is the scheduled time), the contract's priority, the tick's
    message id, and the :data:`SCHEDULE_OPTION`. InvalidSchedule if the task or its
    arguments break the contract."""
    try:
        contract = get_task(schedule.task)
        kwargs = {"payload": iso_utc(at_ms)} if schedule.name == HEARTBEAT else schedule.kwargs
        priority = message_priority(contract, None, settings.QUEUE_MAX_PRIORITIES)
        options = send_options(due_at=None, priority=priority)
        options[SCHEDULE_OPTION] = {"name": schedule.name, "at": at_ms}
        message = task_message(contract, kwargs, max_bytes=settings.MAX_MESSAGE_BYTES, options=options)
    except GreenroomError as error:
        raise InvalidSchedule(schedule.name, str(error)) from None
    return message.copy(message_id=tick_message_id(schedule.name, at_ms))


def load_schedules(settings: Settings) -> list[Schedule]:
    """Every declared schedule and the heartbeat, each checked against its task's contract
    (by building its next tick's message). InvalidSchedule names the first bad one."""
    schedules = list(SCHEDULES.values())
    heartbeat = heartbeat_schedule(settings)
    if heartbeat is not None:
        if HEARTBEAT in SCHEDULES:
            raise InvalidSchedule(HEARTBEAT, "the name is taken by the heartbeat (BEAT_HEARTBEAT_SECONDS)")
        schedules.insert(0, heartbeat)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    for schedule in schedules:
        tick_message(schedule, next_ticks(schedule, after_ms=now_ms, count=1)[0], settings)
    return schedules
