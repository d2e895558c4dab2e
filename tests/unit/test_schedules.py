"""Schedules without services: cron ticks across daylight-saving changes (computed, no waiting),
interval ticks aligned to the epoch, counting ticks, message ids, every bad declaration refused
in one line that names the schedule, and what loading the schedules checks against the contracts."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from observability.messaging_spans import SCHEDULE_OPTION
from shared import schedules as schedules_module
from shared.errors import InvalidSchedule
from shared.schedules import (
    HEARTBEAT,
    MAX_INTERVAL_SECONDS,
    Schedule,
    ScheduleTable,
    heartbeat_schedule,
    interval_seconds,
    iso_utc,
    load_schedules,
    next_ticks,
    tick_message,
    tick_message_id,
    ticks_after,
    ticks_in,
)
from shared.settings import Settings, load_settings
from shared.tasks import CONTRACTS_PACKAGE, TaskArguments, TaskContract


class NoArguments(TaskArguments):
    pass


#: A contract with a priority of its own, on a queue of its own.
PRIORITISED = TaskContract(
    name="tests.schedules.prioritised",
    queue="tests-schedules",
    arguments=NoArguments,
    description="A task whose contract gives it priority 3 (the schedule tests).",
    priority=3,
)


def at(iso: str) -> int:
    """Epoch ms of an ISO 8601 time with its offset."""
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def cron(expression: str, timezone: str = "UTC", name: str = "tests.cron") -> Schedule:
    return Schedule(
        name=name, task="echo", kwargs={"payload": 1}, cron=expression, timezone=timezone, declared=False
    )


def every(seconds: float | timedelta, name: str = "tests.every") -> Schedule:
    return Schedule(name=name, task="echo", kwargs={"payload": 1}, every=seconds, declared=False)


def utc(ticks: list[int]) -> list[str]:
    return [iso_utc(tick) for tick in ticks]


def local(ticks: list[int], timezone: str) -> list[str]:
    return [datetime.fromtimestamp(tick / 1000, ZoneInfo(timezone)).isoformat() for tick in ticks]


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> ScheduleTable:
    """An empty schedule table in place of the process's, for tests that declare schedules."""
    fresh = ScheduleTable(CONTRACTS_PACKAGE)
    monkeypatch.setattr(schedules_module, "SCHEDULES", fresh)
    return fresh


def no_file(**values: Any) -> Settings:
    return load_settings(_env_file=None, **values)


# Cron across daylight-saving changes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "day_before", "gap_tick", "after_gap"),
    [
        # Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; New York: 2026-03-08 02:00 EST -> 03:00 EDT
        ("Europe/Berlin", "2026-03-28T00:00:00+01:00", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"),
        ("America/New_York", "2026-03-07T00:00:00-05:00", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"),
    ],
)
def test_a_daily_tick_in_the_spring_forward_gap_runs_once_when_the_gap_ends(
    timezone: str, day_before: str, gap_tick: str, after_gap: str
) -> None:
    # Given a job at 02:30 local, a time the night of the change does not have
    nightly = cron("30 2 * * *", timezone)

    # When its ticks from the day before are computed
    ticks = next_ticks(nightly, after_ms=at(day_before), count=3)

    # Then the night of the change has one tick, at 03:00 local (the end of the gap), the next 02:30 again
    assert utc(ticks)[1:] == [gap_tick, after_gap]
    assert [moment[11:19] for moment in local(ticks, timezone)] == ["02:30:00", "03:00:00", "02:30:00"]
    assert ticks[2] - ticks[1] == 23.5 * 3600 * 1000


@pytest.mark.parametrize(
    ("timezone", "expression", "day_before", "expected_utc"),
    [
        # Berlin: 2026-10-25 03:00 CEST -> 02:00 CET (02:00-03:00 twice)
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-24T00:00:00+02:00",
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z", "2026-10-27T01:30:00Z"],
        ),
        # New York: 2026-11-01 02:00 EDT -> 01:00 EST (01:00-02:00 twice)
        (
            "America/New_York",
            "30 1 * * *",
            "2026-10-31T00:00:00-04:00",
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z", "2026-11-03T06:30:00Z"],
        ),
    ],
)
def test_a_daily_tick_in_the_repeated_hour_runs_once(
    timezone: str, expression: str, day_before: str, expected_utc: list[str]
) -> None:
    daily = cron(expression, timezone)

    ticks = next_ticks(daily, after_ms=at(day_before), count=4)

    # Then the night of the change has one tick (the first of the two), each later night one
    assert utc(ticks)[1:] == expected_utc
    assert ticks_in(daily, at(day_before), ticks[-1], most=100) == (4, ticks[-1])


@pytest.mark.parametrize(
    ("timezone", "start", "expected_utc", "expected_local"),
    [
        (
            "Europe/Berlin",
            "2026-10-25T01:30:00+02:00",
            ["2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"],
            ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"],
        ),
        (
            "America/New_York",
            "2026-11-01T00:30:00-04:00",
            ["2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z"],
            ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"],
        ),
    ],
)
def test_an_hourly_job_runs_in_both_repeated_hours(
    timezone: str, start: str, expected_utc: list[str], expected_local: list[str]
) -> None:
    hourly = cron("0 * * * *", timezone)

    ticks = next_ticks(hourly, after_ms=at(start), count=3)

    assert utc(ticks) == expected_utc  # one hour apart in UTC: the repeated hour is not skipped
    assert local(ticks, timezone) == expected_local
    # And: from the first repeated hour's tick on, the next is the second one
    assert next_ticks(hourly, after_ms=ticks[0], count=1) == [ticks[1]]
    assert next_ticks(hourly, after_ms=ticks[1], count=1) == [ticks[2]]


@pytest.mark.parametrize(
    ("timezone", "expression", "night_start"),
    [
        ("Europe/Berlin", "30 2 * * *", "2026-10-24T23:00:00Z"),
        ("America/New_York", "30 1 * * *", "2026-11-01T04:00:00Z"),
    ],
)
def test_the_first_tick_after_a_moment_in_the_repeated_hour_is_after_it(
    timezone: str, expression: str, night_start: str
) -> None:
    # Given a daily job in the repeated hour, and every half minute of the night of the change
    daily = cron(expression, timezone)
    moments = [at(night_start.replace("Z", "+00:00")) + 30_000 + minute * 60_000 for minute in range(240)]

    # Then the tick ticks_after gives first for each moment comes after it (the beat's cursor
    # only moves forward; `greenroom schedules` never lists a past time as next)
    early = [
        (iso_utc(moment), iso_utc(tick))
        for moment in moments
        if (tick := next(ticks_after(daily, moment))) <= moment
    ]
    assert early == []


def test_a_capped_count_ends_at_the_last_tick_also_in_the_repeated_hour() -> None:
    # Given a daily 02:30 Berlin job, counted to 2 up to 02:00 CET of the fall-back night, half
    # an hour after that night's 02:30 CEST tick
    daily = cron("30 2 * * *", "Europe/Berlin")

    count, last = ticks_in(daily, at("2026-10-21T00:00:00+02:00"), at("2026-10-25T02:00:00+01:00"), most=2)

    assert (count, iso_utc(last)) == (2, "2026-10-25T00:30:00Z")


# Intervals ----------------------------------------------------------------------------------------


def test_interval_ticks_are_multiples_of_the_interval_since_the_epoch() -> None:
    # Given any moment, whichever process computes them
    moment = at("2026-12-01T23:59:59.500+00:00")

    # Then the ticks are the multiples of the interval after it, in ms since the epoch
    assert utc(next_ticks(every(60), after_ms=moment, count=2)) == [
        "2026-12-02T00:00:00Z",
        "2026-12-02T00:01:00Z",
    ]
    assert all(tick % 7_000 == 0 for tick in next_ticks(every(7), after_ms=moment, count=5))
    assert next_ticks(every(timedelta(hours=1)), after_ms=moment, count=1) == [
        at("2026-12-02T00:00:00+00:00")
    ]
    # A moment on a tick: the next one is one interval later (ticks are strictly after)
    assert next_ticks(every(10), after_ms=30_000, count=2) == [40_000, 50_000]
    assert interval_seconds(every(90), moment) == 90.0
    assert every(timedelta(minutes=2)).every_ms == 120_000
    assert every(timedelta(minutes=2)).when == "every 120s"


def test_ticks_in_counts_interval_ticks_in_a_half_open_range() -> None:
    ten = every(10)

    assert ticks_in(ten, 0, 35_000, most=100) == (3, 30_000)
    assert ticks_in(ten, 10_000, 30_000, most=100) == (2, 30_000)  # (10 s, 30 s]: 20 s and 30 s
    assert ticks_in(ten, 31_000, 39_999, most=100) == (0, 31_000)  # none: the start comes back
    assert ticks_in(ten, 0, 0, most=100) == (0, 0)
    # An interval is counted exactly, however many: `most` bounds only the cron iteration
    assert ticks_in(every(1), 0, 86_400_000 * 365, most=10) == (31_536_000, 31_536_000_000)


def test_ticks_in_counts_cron_ticks_up_to_most_and_still_gives_the_last_one() -> None:
    minutely = cron("* * * * *")
    start = at("2026-12-01T00:00:00+00:00")

    assert ticks_in(minutely, start, start + 10 * 60_000, most=100) == (10, start + 10 * 60_000)
    assert ticks_in(minutely, start, start + 10 * 60_000 - 1, most=100) == (9, start + 9 * 60_000)
    # Capped: counted up to `most`, the last tick in the range all the same
    assert ticks_in(minutely, start, start + 86_400_000, most=5) == (5, start + 86_400_000)
    assert ticks_in(minutely, start, start + 86_400_000 + 30_000, most=5) == (5, start + 86_400_000)
    assert ticks_in(cron("0 3 * * *"), start, start + 3_600_000, most=5) == (0, start)


def test_the_interval_of_a_cron_schedule_is_the_gap_between_its_next_two_ticks() -> None:
    berlin = cron("30 2 * * *", "Europe/Berlin")

    assert interval_seconds(berlin, at("2026-03-28T12:00:00+01:00")) == 23.5 * 3600
    assert interval_seconds(berlin, at("2026-10-25T12:00:00+01:00")) == 86_400
    assert interval_seconds(cron("*/15 * * * *"), 0) == 900


def test_a_tick_message_id_is_the_schedule_and_its_scheduled_time_in_utc() -> None:
    assert (
        tick_message_id("heartbeat", at("2026-12-01T23:45:00+00:00")) == "beat:heartbeat:2026-12-01T23:45:00Z"
    )
    # A Berlin tick is named by its UTC time, to the second
    assert tick_message_id("reports.nightly", at("2026-03-29T03:00:00.999+02:00")) == (
        "beat:reports.nightly:2026-03-29T01:00:00Z"
    )


# Declarations -------------------------------------------------------------------------------------

BAD_DECLARATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("name with a space", {"name": "bad name", "cron": "* * * * *"}, "a name is 1 to 64 of"),
    ("empty name", {"name": "", "cron": "* * * * *"}, "a name is 1 to 64 of"),
    ("name of 65", {"name": "n" * 65, "cron": "* * * * *"}, "a name is 1 to 64 of"),
    ("name with a colon", {"name": "a:b", "cron": "* * * * *"}, "a name is 1 to 64 of"),
    ("name not a string", {"name": 5, "cron": "* * * * *"}, "a name is 1 to 64 of"),
    ("cron of 4 fields", {"cron": "* * * *"}, "4 fields, not five"),
    ("cron minute 61", {"cron": "61 * * * *"}, "Bad minute"),
    ("cron Feb 30", {"cron": "0 0 30 2 *"}, "cron '0 0 30 2 *'"),
    ("cron Apr and Feb 31", {"cron": "0 0 31 2,4 *"}, "cron '0 0 31 2,4 *'"),
    ("cron @reboot", {"cron": "@reboot"}, "cron '@reboot'"),
    ("cron not a string", {"cron": 5}, "cron must be a string, not int"),
    ("unknown time zone", {"cron": "* * * * *", "timezone": "Mars/Olympus"}, "'Mars/Olympus' is not an IANA"),
    ("time zone a path", {"cron": "* * * * *", "timezone": "../etc/passwd"}, "is not an IANA time zone"),
    ("empty time zone", {"cron": "* * * * *", "timezone": ""}, "is not an IANA time zone"),
    ("the host's zone", {"cron": "* * * * *", "timezone": "localtime"}, "is not an IANA time zone"),
    ("Factory", {"cron": "* * * * *", "timezone": "Factory"}, "is not an IANA time zone"),
    ("cron and every", {"cron": "* * * * *", "every": 60}, "give cron or every, one of them"),
    ("neither", {}, "give cron or every, one of them"),
    ("every 0", {"every": 0}, "every must be whole seconds from 1 to 31622400, not 0"),
    ("every 1.5", {"every": 1.5}, "not 1.5"),
    ("every NaN", {"every": math.nan}, "not nan"),
    ("every inf", {"every": math.inf}, "not inf"),
    ("every True", {"every": True}, "not True"),
    ("every a string", {"every": "60"}, "not '60'"),
    ("every negative", {"every": -60}, "not -60"),
    ("every over a year", {"every": MAX_INTERVAL_SECONDS + 1}, f"not {MAX_INTERVAL_SECONDS + 1}"),
    ("every 1.5 s timedelta", {"every": timedelta(milliseconds=1500)}, "whole seconds"),
    (
        "time zone with every",
        {"every": 60, "timezone": "Europe/Berlin"},
        "a time zone applies to cron schedules only",
    ),
    ("no task", {"task": "", "every": 60}, "task must be a task name"),
    ("kwargs a list", {"kwargs": [1], "every": 60}, "kwargs must be a mapping, not list"),
]


@pytest.mark.parametrize(
    ("declaration", "expected"), [case[1:] for case in BAD_DECLARATIONS], ids=[c[0] for c in BAD_DECLARATIONS]
)
def test_a_bad_declaration_raises_one_line_naming_the_schedule(
    declaration: dict[str, Any], expected: str, table: ScheduleTable
) -> None:
    fields: dict[str, Any] = {"name": "tests.bad", "task": "echo", "kwargs": {"payload": 1}, **declaration}

    with pytest.raises(InvalidSchedule) as raised:
        Schedule(**fields)

    line = str(raised.value)
    assert "\n" not in line
    assert line.startswith(f"schedule {fields['name']!r}: "), line
    assert expected in line, line
    assert len(table) == 0, "a refused schedule is not registered"


@pytest.mark.parametrize("expression", ["0 0 * * * *", "*/10 * * * * *"])
def test_a_cron_of_six_fields_is_refused(expression: str, table: ScheduleTable) -> None:
    with pytest.raises(InvalidSchedule, match=r"^schedule 'tests.six': cron "):
        Schedule(name="tests.six", task="echo", kwargs={"payload": 1}, cron=expression)


def test_a_schedule_declared_twice_is_refused_and_the_first_stays(table: ScheduleTable) -> None:
    first = Schedule(name="tests.twice", task="echo", kwargs={"payload": 1}, every=60)

    with pytest.raises(InvalidSchedule) as raised:
        Schedule(name="tests.twice", task="fail", every=30)

    assert str(raised.value) == "schedule 'tests.twice': declared twice (task 'echo' and task 'fail')"
    assert table["tests.twice"] is first
    assert list(table) == ["tests.twice"]


def test_a_schedule_made_at_run_time_is_not_registered(table: ScheduleTable) -> None:
    every(60, name="tests.undeclared")
    Schedule(name="tests.undeclared", task="echo", kwargs={"payload": 1}, every=60, declared=False)

    assert "tests.undeclared" not in table


# Loading, against the contracts --------------------------------------------------------------------


def test_load_schedules_gives_the_heartbeat_first_then_the_declared_ones(table: ScheduleTable) -> None:
    declared = Schedule(
        name="tests.nightly", task="reports.build", kwargs={"report_id": "q3"}, cron="0 3 * * *"
    )

    loaded = load_schedules(no_file())

    assert [schedule.name for schedule in loaded] == [HEARTBEAT, "tests.nightly"]
    assert loaded[1] is declared
    heartbeat = loaded[0]
    assert (heartbeat.task, heartbeat.every_ms, heartbeat.cron) == ("echo", 60_000, None)
    assert heartbeat not in table.values()


def test_beat_heartbeat_seconds_sets_the_heartbeat_and_0_drops_it(table: ScheduleTable) -> None:
    heartbeat = heartbeat_schedule(no_file(BEAT_HEARTBEAT_SECONDS=15))
    assert heartbeat is not None and heartbeat.every_ms == 15_000

    assert heartbeat_schedule(no_file(BEAT_HEARTBEAT_SECONDS=0)) is None
    assert load_schedules(no_file(BEAT_HEARTBEAT_SECONDS=0)) == []


@pytest.mark.parametrize(
    ("task", "kwargs", "expected"),
    [
        ("reports.nope", {}, "schedule 'tests.broken': unknown task 'reports.nope'"),
        (
            "reports.build",
            {},
            "schedule 'tests.broken': invalid arguments for task 'reports.build': report_id",
        ),
        ("reports.build", {"report_id": "q3", "colour": "red"}, "colour"),
        ("echo", {"payload": math.nan}, "schedule 'tests.broken': "),
    ],
    ids=["unknown task", "argument missing", "unknown argument", "not strict JSON"],
)
def test_load_schedules_refuses_a_schedule_its_contract_refuses_in_one_line(
    task: str, kwargs: dict[str, Any], expected: str, table: ScheduleTable
) -> None:
    Schedule(name="tests.broken", task=task, kwargs=kwargs, every=3600)

    with pytest.raises(InvalidSchedule) as raised:
        load_schedules(no_file())

    line = str(raised.value)
    assert line.startswith(expected) or expected in line, line
    assert "\n" not in line


def test_a_declared_heartbeat_clashes_with_the_heartbeat_unless_it_is_off(table: ScheduleTable) -> None:
    mine = Schedule(name=HEARTBEAT, task="echo", kwargs={"payload": "mine"}, every=30)

    with pytest.raises(InvalidSchedule, match=r"^schedule 'heartbeat': the name is taken by the heartbeat"):
        load_schedules(no_file())

    assert load_schedules(no_file(BEAT_HEARTBEAT_SECONDS=0)) == [mine]


# The tick's message ---------------------------------------------------------------------------------


def test_a_heartbeat_tick_echoes_its_scheduled_time() -> None:
    settings = no_file()
    heartbeat = heartbeat_schedule(settings)
    assert heartbeat is not None
    tick = at("2026-12-01T23:45:00+00:00")

    message = tick_message(heartbeat, tick, settings)

    assert (message.queue_name, message.actor_name) == ("default", "echo")
    assert message.kwargs == {"payload": "2026-12-01T23:45:00Z", "delay_ms": 0}
    assert message.message_id == "beat:heartbeat:2026-12-01T23:45:00Z"
    assert message.options[SCHEDULE_OPTION] == {"name": "heartbeat", "at": tick}
    assert "broker_priority" not in message.options
    assert "greenroom_due_at" not in message.options


def test_a_tick_message_has_the_schedule_arguments_and_the_contract_priority() -> None:
    settings = no_file(QUEUE_MAX_PRIORITIES="tests-schedules=9")
    schedule = Schedule(name="tests.prioritised", task=PRIORITISED.name, every=300, declared=False)
    tick = at("2026-12-02T00:05:00+00:00")

    message = tick_message(schedule, tick, settings)

    assert message.queue_name == "tests-schedules"
    assert message.options["broker_priority"] == 3
    assert message.options[SCHEDULE_OPTION] == {"name": "tests.prioritised", "at": tick}
    assert message.message_id == "beat:tests.prioritised:2026-12-02T00:05:00Z"
    # The same tick is the same message id in every process; the next tick another one
    assert tick_message(schedule, tick, settings).message_id == message.message_id
    assert tick_message(schedule, tick + 300_000, settings).message_id != message.message_id


def test_a_tick_of_a_prioritised_task_on_a_queue_without_priorities_is_refused() -> None:
    schedule = Schedule(name="tests.prioritised", task=PRIORITISED.name, every=300, declared=False)

    with pytest.raises(
        InvalidSchedule,
        match=r"^schedule 'tests.prioritised': priority 3 \(the contract's\): .* has no priorities",
    ):
        tick_message(schedule, 300_000, no_file())


def test_a_tick_message_bigger_than_max_message_bytes_is_refused() -> None:
    schedule = Schedule(
        name="tests.big", task="echo", kwargs={"payload": "x" * 5000}, every=60, declared=False
    )

    with pytest.raises(InvalidSchedule, match=r"^schedule 'tests.big': "):
        tick_message(schedule, 60_000, no_file(MAX_MESSAGE_BYTES=4096))
