"""The beat's lease and tick ledger against a real Redis, and beat loops driven turn by turn with
fake clocks, publishing to a real RabbitMQ: one holder at a time, each tick claimed and sent once
whoever leads, a claim a former leader left taken over, ticks older than the catch-up window
counted as missed and not sent."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis
from opentelemetry.trace import NoOpTracerProvider

from observability.beat_metrics import BeatHealth, BeatMetrics
from shared import __version__
from shared.producer import Producer
from shared.runtime.beat import TAKEOVER_GRACE_SECONDS, Beat
from shared.runtime.beat_lease import LEASE_KEY, SAFETY_SHARE, Lease
from shared.runtime.beat_ledger import (
    CLAIM_MARGIN_SECONDS,
    STATE_TTL_SECONDS,
    NotLeader,
    TickLedger,
    claim_key,
    schedule_key,
)
from shared.schedules import Schedule, heartbeat_schedule, tick_message_id
from shared.settings import Settings, load_settings
from tests.support import forget_beat_state, take_all, wait_for

#: An epoch-ms moment on a whole minute (2026-12-02T00:00:00Z): ticks of 10 s fall on multiples of it.
T0 = 1_796_169_600_000
SCHEDULE = "tests.ledger"


class FakeClock:
    """A clock that moves only when told to (seconds)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    """A client of the test database, with none of the beat's keys before or after the test."""
    connection: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    forget_beat_state(redis_url)
    yield connection
    forget_beat_state(redis_url)
    connection.close()


def lease_of(client: redis.Redis[bytes], holder: str, clock: FakeClock, ttl: float = 5.0) -> Lease:
    return Lease(client, holder=holder, ttl_seconds=ttl, clock=clock)


def ledger_of(client: redis.Redis[bytes], holder: str) -> TickLedger:
    return TickLedger(client, holder=holder, catchup_seconds=300)


def hand_over(client: redis.Redis[bytes], old: Lease, new: Lease) -> None:
    """``old`` stops (its key expires), ``new`` takes the lease."""
    client.delete(LEASE_KEY)  # what its expiry does
    assert new.refresh()


# The lease ---------------------------------------------------------------------------------------


def test_one_holder_at_a_time_renewing_keeps_it(client: redis.Redis[bytes]) -> None:
    # Given two processes' leases on one Redis
    clock = FakeClock()
    a, b = lease_of(client, "a", clock), lease_of(client, "b", clock)

    # When both try to take it
    assert a.refresh() is True
    assert b.refresh() is False

    # Then one holds it, in Redis and by its own clock
    assert (a.held(), b.held()) == (True, False)
    assert client.get(LEASE_KEY) == b"a"
    assert 4_000 < client.pttl(LEASE_KEY) <= 5_000
    # And: renewing keeps it and resets its time to live; the other still cannot take it
    client.pexpire(LEASE_KEY, 1_000)
    clock.advance(1.0)
    assert a.refresh() is True
    assert 4_000 < client.pttl(LEASE_KEY) <= 5_000
    assert b.refresh() is False
    assert (a.held(), b.held()) == (True, False)


def test_a_release_hands_the_lease_over_at_once(client: redis.Redis[bytes]) -> None:
    clock = FakeClock()
    a, b = lease_of(client, "a", clock), lease_of(client, "b", clock)
    assert a.refresh()

    a.release()

    assert a.held() is False
    assert b.refresh() is True
    assert client.get(LEASE_KEY) == b"b"
    # And: a release by a process that does not hold it changes nothing
    a.release()
    assert client.get(LEASE_KEY) == b"b"
    assert a.refresh() is False


def test_a_holder_counts_on_its_lease_only_until_just_before_the_ttl(client: redis.Redis[bytes]) -> None:
    # Given a lease of 5 s taken at clock time 1000
    clock = FakeClock(1_000.0)
    lease = lease_of(client, "a", clock)
    assert lease.refresh()

    # Then it is held a moment before 5 s less the safety share, and not from then on (no Redis call)
    clock.advance(5.0 * (1 - SAFETY_SHARE) - 0.001)
    assert lease.held() is True
    clock.advance(0.002)
    assert lease.held() is False
    assert client.get(LEASE_KEY) == b"a", "held() alone does not touch Redis"


def test_a_paused_holder_does_not_lead_and_cannot_take_the_lease_back(client: redis.Redis[bytes]) -> None:
    # Given a leader, paused (its monotonic clock jumps past the lease), whose key expired meanwhile
    paused, other = FakeClock(), FakeClock()
    a, b = lease_of(client, "a", paused, ttl=1.0), lease_of(client, "b", other, ttl=1.0)
    assert a.refresh()
    paused.advance(1.5)
    hand_over(client, a, b)

    # Then it does not count itself the leader, and its next refresh fails: another holds the key
    assert a.held() is False
    assert a.refresh() is False
    assert (a.held(), b.held()) == (False, True)
    assert client.get(LEASE_KEY) == b"b"


def test_a_holder_whose_key_vanished_takes_it_again_when_nobody_else_did(client: redis.Redis[bytes]) -> None:
    # Given a holder whose key Redis lost (a restart without persistence) while its clock says it holds
    clock = FakeClock()
    a = lease_of(client, "a", clock)
    assert a.refresh()
    client.delete(LEASE_KEY)

    # Then its renewal fails (it stops leading), and its next refresh takes the free key again
    assert a.refresh() is False
    assert a.refresh() is True
    assert client.get(LEASE_KEY) == b"a"


# The tick ledger ---------------------------------------------------------------------------------


@pytest.fixture
def leases(client: redis.Redis[bytes]) -> tuple[Lease, Lease]:
    clock = FakeClock()
    a, b = lease_of(client, "a", clock), lease_of(client, "b", clock)
    assert a.refresh()
    return a, b


def test_start_initialises_the_cursor_once(client: redis.Redis[bytes], leases: tuple[Lease, Lease]) -> None:
    a, b = leases
    ledger_a, ledger_b = ledger_of(client, "a"), ledger_of(client, "b")

    first = ledger_a.start(SCHEDULE, T0)
    hand_over(client, a, b)
    later = ledger_b.start(SCHEDULE, T0 + 60_000)

    assert (first.cursor_ms, first.sent_at_ms) == (T0, T0)
    assert (later.cursor_ms, later.sent_at_ms) == (T0, T0), "a later start keeps the cursor"
    assert STATE_TTL_SECONDS * 1000 - 5_000 < client.pttl(schedule_key(SCHEDULE)) <= STATE_TTL_SECONDS * 1000


def test_every_script_but_settle_refuses_a_caller_that_does_not_hold_the_lease(
    client: redis.Redis[bytes], leases: tuple[Lease, Lease]
) -> None:
    ledger_b = ledger_of(client, "b")  # "a" holds the lease

    for call in (
        lambda: ledger_b.start(SCHEDULE, T0),
        lambda: ledger_b.claim(SCHEDULE, T0 + 10_000),
        lambda: ledger_b.take_over(SCHEDULE, T0 + 10_000, "a"),
        lambda: ledger_b.skip_to(SCHEDULE, T0 + 10_000),
    ):
        with pytest.raises(NotLeader):
            call()
    assert client.exists(schedule_key(SCHEDULE), claim_key(SCHEDULE, T0 + 10_000)) == 0


def test_a_tick_is_claimed_once_then_settled_moves_the_cursor_and_drops_the_claim(
    client: redis.Redis[bytes], leases: tuple[Lease, Lease]
) -> None:
    a, b = leases
    ledger_a, ledger_b = ledger_of(client, "a"), ledger_of(client, "b")
    ledger_a.start(SCHEDULE, T0)
    tick = T0 + 10_000

    # When "a" claims a tick, and the lease passes to "b" before "a" settles it
    assert ledger_a.claim(SCHEDULE, tick) == ("claimed", None)
    assert ledger_a.claim(SCHEDULE, tick) == ("claimed", None), "a second claim by its holder is harmless"
    claim_ms = client.pttl(claim_key(SCHEDULE, tick))
    assert (300 + CLAIM_MARGIN_SECONDS) * 1000 - 5_000 < claim_ms <= (300 + CLAIM_MARGIN_SECONDS) * 1000
    hand_over(client, a, b)

    # Then "b" cannot claim it: it is held by "a"
    assert ledger_b.claim(SCHEDULE, tick) == ("held", "a")

    # When "a" settles it (RabbitMQ has it: settling does not need the lease)
    assert ledger_a.settle_sent(SCHEDULE, tick, tick + 42) == "sent"

    # Then the cursor is the tick, the claim is gone, and nobody claims it again
    assert client.hgetall(schedule_key(SCHEDULE)) == {
        b"cursor": str(tick).encode(),
        b"sent_at": str(tick + 42).encode(),
    }
    assert client.exists(claim_key(SCHEDULE, tick)) == 0
    assert ledger_b.claim(SCHEDULE, tick) == ("settled", None)
    assert ledger_b.claim(SCHEDULE, T0) == ("settled", None), "ticks before the cursor are settled"
    assert ledger_b.claim(SCHEDULE, tick + 10_000) == ("claimed", None)


def test_a_left_claim_is_taken_over_and_the_former_holder_hears_so_when_it_settles(
    client: redis.Redis[bytes], leases: tuple[Lease, Lease]
) -> None:
    a, b = leases
    ledger_a, ledger_b = ledger_of(client, "a"), ledger_of(client, "b")
    ledger_a.start(SCHEDULE, T0)
    tick = T0 + 10_000
    assert ledger_a.claim(SCHEDULE, tick) == ("claimed", None)
    hand_over(client, a, b)

    # When "b" takes over the claim "a" left
    assert ledger_b.take_over(SCHEDULE, tick, "a") is True
    assert client.get(claim_key(SCHEDULE, tick)) == b"b"
    assert ledger_b.take_over(SCHEDULE, tick, "a") is False, "the claim is no longer a's"

    # Then "a" settling it late (it had published) reports that it was taken over, and the
    # cursor still moves; "b" settling it after finds it sent before
    assert ledger_a.settle_sent(SCHEDULE, tick, tick + 5) == "taken-over"
    assert client.hget(schedule_key(SCHEDULE), "cursor") == str(tick).encode()
    assert ledger_b.settle_sent(SCHEDULE, tick, tick + 9) == "sent"  # b's claim: its own
    assert ledger_b.settle_sent(SCHEDULE, tick, tick + 9) == "sent-before"


def test_skip_to_moves_the_cursor_once_and_only_the_first_caller_counts(
    client: redis.Redis[bytes], leases: tuple[Lease, Lease]
) -> None:
    a, b = leases
    ledger_a, ledger_b = ledger_of(client, "a"), ledger_of(client, "b")
    ledger_a.start(SCHEDULE, T0)

    assert ledger_a.skip_to(SCHEDULE, T0 + 60_000) == T0
    hand_over(client, a, b)
    assert ledger_b.skip_to(SCHEDULE, T0 + 60_000) is None
    assert ledger_b.skip_to(SCHEDULE, T0 + 30_000) is None, "never backwards"
    assert client.hget(schedule_key(SCHEDULE), "cursor") == str(T0 + 60_000).encode()
    assert ledger_b.claim(SCHEDULE, T0 + 50_000) == ("settled", None)


# Beat loops, turn by turn ------------------------------------------------------------------------


class Process:
    """One beat process's loop, its clocks and its metrics, driven by the test."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        producer: Producer,
        settings: Settings,
        schedules: list[Schedule],
        holder: str,
        wall: FakeClock,
    ) -> None:
        self.monotonic = FakeClock()
        self.metrics = BeatMetrics(version=__version__)
        self.lease = Lease(
            client, holder=holder, ttl_seconds=settings.BEAT_LEASE_SECONDS, clock=self.monotonic
        )
        self.beat = Beat(
            settings=settings,
            schedules=schedules,
            producer=producer,
            lease=self.lease,
            ledger=TickLedger(client, holder=holder, catchup_seconds=settings.BEAT_CATCHUP_SECONDS),
            metrics=self.metrics,
            health=BeatHealth(clock=self.monotonic),
            clock=wall,
            monotonic=self.monotonic,
        )

    def turn(self) -> None:
        """What the lease thread and the loop do once."""
        self.beat._progressed()
        self.beat._refresh_lease()
        self.beat._turn(threading.Event())

    def ticks(self, outcome: str, schedule: str = SCHEDULE) -> float:
        value = self.metrics.registry.get_sample_value(
            "greenroom_beat_ticks_total", {"schedule": schedule, "outcome": outcome}
        )
        return value or 0.0

    def leader(self) -> float | None:
        return self.metrics.registry.get_sample_value("greenroom_beat_leader")


StartProcess = Callable[..., Process]


@pytest.fixture
def beat_process(
    client: redis.Redis[bytes], producer: Producer, settings: Settings, rabbitmq_url: str
) -> StartProcess:
    """Make beat processes that share one Redis, one RabbitMQ vhost and a fake wall clock."""

    producer.send("echo", payload="declares the queue")  # so that reading it never meets a missing queue
    take_all(rabbitmq_url, "default")

    def make(
        holder: str, wall: FakeClock, schedules: list[Schedule] | None = None, **values: object
    ) -> Process:
        beat_settings = settings.model_copy(update={"BEAT_CATCHUP_SECONDS": 300, **values})
        return Process(client, producer, beat_settings, schedules or [every_ten()], holder, wall)

    return make


def every_ten() -> Schedule:
    return Schedule(name=SCHEDULE, task="echo", kwargs={"payload": "tick"}, every=10, declared=False)


def published_ids(rabbitmq_url: str) -> list[str]:
    return [json.loads(body)["message_id"] for body in take_all(rabbitmq_url, "default")]


def ids(*ticks: int) -> list[str]:
    return [tick_message_id(SCHEDULE, tick) for tick in ticks]


def test_two_beats_send_each_tick_once_across_a_hand_over(
    beat_process: StartProcess, rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two beat processes on one Redis and one wall clock, "a" leading
    wall = FakeClock(T0 / 1000 + 1)
    a, b = beat_process("a", wall), beat_process("b", wall)
    with caplog.at_level(logging.INFO, logger="greenroom.beat"):
        a.turn()
        b.turn()
        assert (a.leader(), b.leader()) == (1.0, 0.0)
        assert published_ids(rabbitmq_url) == [], "no tick before the first start is sent"

        # When 35 s pass, both turning
        wall.advance(35)
        a.turn()
        b.turn()
        a.turn()  # a second turn sends nothing more

        # Then the leader sent the three due ticks, once each, in order
        assert published_ids(rabbitmq_url) == ids(T0 + 10_000, T0 + 20_000, T0 + 30_000)
        assert (a.ticks("sent"), b.ticks("sent")) == (3.0, 0.0)

        # When "a" hands the lease over (SIGTERM) and 10 s pass
        a.beat._step_down("shutting down")
        a.beat._release()
        b.turn()
        wall.advance(10)
        b.turn()
        a.turn()

        # Then "b" carries on from the cursor in Redis: the next tick only
        assert published_ids(rabbitmq_url) == ids(T0 + 40_000)
        assert (a.leader(), b.leader()) == (0.0, 1.0)
        assert (a.ticks("sent"), b.ticks("sent")) == (3.0, 1.0)

    sent = [r for r in caplog.records if r.getMessage() == "tick sent"]
    assert [getattr(r, "message_id", None) for r in sent] == ids(*(T0 + n * 10_000 for n in (1, 2, 3, 4)))
    assert [r.getMessage() for r in caplog.records if "leads" in r.getMessage()] == [
        "Beat leads (1 schedule)",
        "Beat no longer leads (shutting down)",
        "Beat leads (1 schedule)",
    ]


def test_a_leader_paused_past_its_lease_publishes_nothing_after_another_took_over(
    client: redis.Redis[bytes], beat_process: StartProcess, rabbitmq_url: str
) -> None:
    # Given "a" leading, then paused long enough for its key to expire and "b" to lead
    wall = FakeClock(T0 / 1000 + 1)
    a, b = beat_process("a", wall), beat_process("b", wall)
    a.turn()
    client.delete(LEASE_KEY)  # a's lease expired while it was paused
    b.turn()
    wall.advance(15)

    # When "a" resumes with its clock not yet past its lease (it still believes it leads) and turns
    # before its lease thread runs
    assert a.lease.held() is True
    a.beat._turn(threading.Event())

    # Then its claim is refused in Redis: it steps down without publishing; "b" sends the tick
    assert published_ids(rabbitmq_url) == []
    assert a.beat._cursors is None
    b.turn()
    assert published_ids(rabbitmq_url) == ids(T0 + 10_000)
    assert (a.ticks("sent"), b.ticks("sent")) == (0.0, 1.0)


def test_a_tick_a_stopped_leader_claimed_is_sent_by_the_next_once_the_grace_is_over(
    client: redis.Redis[bytes],
    beat_process: StartProcess,
    rabbitmq_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given "a" claimed a tick and stopped before publishing it (its key then expired)
    wall = FakeClock(T0 / 1000 + 1)
    a, b = beat_process("a", wall), beat_process("b", wall)
    a.turn()
    wall.advance(10)
    assert a.beat.ledger.claim(SCHEDULE, T0 + 10_000) == ("claimed", None)
    client.delete(LEASE_KEY)

    # When "b" leads: within the grace it leaves the claim alone
    b.turn()
    assert published_ids(rabbitmq_url) == []
    b.monotonic.advance(TAKEOVER_GRACE_SECONDS - 0.5)
    b.turn()
    assert published_ids(rabbitmq_url) == []

    # Then after it, "b" takes the claim over and sends the tick, once
    b.monotonic.advance(1.0)
    with caplog.at_level(logging.INFO, logger="greenroom.beat"):
        b.turn()
        b.turn()
    assert published_ids(rabbitmq_url) == ids(T0 + 10_000)
    assert client.hget(schedule_key(SCHEDULE), "cursor") == str(T0 + 10_000).encode()
    assert any(
        "was claimed by a, which no longer leads, and not recorded as sent: sending it" in r.getMessage()
        for r in caplog.records
    )


def test_ticks_older_than_the_catch_up_window_are_counted_missed_and_not_sent(
    beat_process: StartProcess, rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a beat with a 30 s catch-up window that took the schedule up at T0
    wall = FakeClock(T0 / 1000)
    beat = beat_process("a", wall, BEAT_CATCHUP_SECONDS=30)
    beat.turn()

    # When its next turn comes 100 s later (paused, or every beat down)
    wall.advance(100)
    with caplog.at_level(logging.INFO, logger="greenroom.beat"):
        beat.turn()

    # Then the ticks older than 30 s (10 s .. 60 s) are missed, the four since sent, in order
    assert published_ids(rabbitmq_url) == ids(*(T0 + n * 10_000 for n in (7, 8, 9, 10)))
    assert (beat.ticks("missed"), beat.ticks("sent")) == (6.0, 4.0)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        "6 ticks of schedule tests.ledger missed (2026-12-02T00:00:10Z to 2026-12-02T00:01:00Z): "
        "older than BEAT_CATCHUP_SECONDS=30"
    )
    assert (warning.missed, warning.first_missed, warning.last_missed) == (  # type: ignore[attr-defined]
        6, "2026-12-02T00:00:10Z", "2026-12-02T00:01:00Z"
    )  # fmt: skip


def test_missed_ticks_are_counted_by_one_process_only(
    client: redis.Redis[bytes], beat_process: StartProcess, rabbitmq_url: str
) -> None:
    # Given "a" took the schedule up (its cursor T0 in memory), and after 100 s "b" leads first
    wall = FakeClock(T0 / 1000)
    a, b = beat_process("a", wall, BEAT_CATCHUP_SECONDS=30), beat_process("b", wall, BEAT_CATCHUP_SECONDS=30)
    a.turn()
    wall.advance(100)
    client.delete(LEASE_KEY)
    b.turn()
    assert len(published_ids(rabbitmq_url)) == 4

    # When the lease is a's again before a noticed it had gone (its cursor still T0)
    client.set(LEASE_KEY, "a", px=5_000)
    a.turn()

    # Then the six missed ticks were counted once, by the one that moved the cursor, and sent none twice
    assert (a.ticks("missed"), b.ticks("missed")) == (0.0, 6.0)
    assert (a.ticks("sent"), b.ticks("sent")) == (0.0, 4.0)
    assert published_ids(rabbitmq_url) == []
    assert a.beat._cursors == {SCHEDULE: T0 + 100_000}


def test_a_tick_whose_publish_fails_is_counted_failed_and_sent_on_a_later_turn(
    beat_process: StartProcess, producer: Producer, redis_url: str, rabbitmq_url: str
) -> None:
    # Given a leader whose RabbitMQ cannot be reached (nothing listens on port 1)
    wall = FakeClock(T0 / 1000 + 1)
    beat = beat_process("a", wall)
    beat.turn()
    away = Producer(
        load_settings(
            _env_file=None,
            RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/%2F",
            REDIS_URL=redis_url,
            SEND_RETRY_TIMEOUT_SECONDS=0.2,
        ),
        tracer_provider=NoOpTracerProvider(),
    )
    try:
        beat.beat.producer = away
        wall.advance(25)  # two ticks due

        # When it turns: the first tick fails, and the schedule backs off for a second
        beat.turn()
        assert beat.ticks("failed") == 1.0
        beat.turn()
        assert beat.ticks("failed") == 1.0, "no attempt before the backoff is over"
        wall.advance(1.0)
        beat.turn()
    finally:
        beat.beat.producer = producer
        away.close()

    # Then the first tick failed on each attempt and the second waited behind it
    assert (beat.ticks("failed"), beat.ticks("sent")) == (2.0, 0.0)
    assert published_ids(rabbitmq_url) == []

    # When RabbitMQ can be reached again, after the doubled wait: both are sent, in order
    beat.turn()
    assert published_ids(rabbitmq_url) == []
    wall.advance(2.0)
    beat.turn()
    assert published_ids(rabbitmq_url) == ids(T0 + 10_000, T0 + 20_000)
    assert beat.ticks("sent") == 2.0


def test_the_heartbeat_gauge_follows_the_latest_heartbeat_a_worker_completed(
    beat_process: StartProcess, producer: Producer, settings: Settings, rabbitmq_url: str
) -> None:
    # Given a leader sending the heartbeat every 10 s
    heartbeat = heartbeat_schedule(settings.model_copy(update={"BEAT_HEARTBEAT_SECONDS": 10}))
    assert heartbeat is not None
    wall = FakeClock(T0 / 1000 + 1)
    beat = beat_process("a", wall, [heartbeat])

    def completed() -> float | None:
        return beat.metrics.registry.get_sample_value("greenroom_beat_heartbeat_completed_timestamp_seconds")

    beat.turn()
    assert completed() == T0 / 1000 + 1, "before any: when it began to lead"
    wall.advance(20)
    beat.turn()
    [first, second] = [json.loads(body) for body in take_all(rabbitmq_url, "default")]
    assert [first["kwargs"]["payload"], second["kwargs"]["payload"]] == [
        "2026-12-02T00:00:10Z",
        "2026-12-02T00:00:20Z",
    ]

    # When a worker stores the first one's result, and the next heartbeat is sent
    backend = producer.backend
    backend.store_result(dramatiq.Message(**first), first["kwargs"]["payload"], 60_000)
    wall.advance(10)
    beat.turn()

    # Then the gauge is the first one's scheduled time (the second is still awaited)
    assert completed() == (T0 + 10_000) / 1000
    backend.store_result(dramatiq.Message(**second), second["kwargs"]["payload"], 60_000)
    wall.advance(10)
    beat.turn()
    assert completed() == (T0 + 20_000) / 1000


@pytest.mark.parametrize("value", ["garbage", "0x10", "-inf", "-1e300", "1e400", "12.5", "-1", ""])
def test_a_damaged_cursor_is_reset_with_a_warning_and_never_crashes_the_loop(
    beat_process: StartProcess,
    client: redis.Redis[bytes],
    rabbitmq_url: str,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    # Given a schedule whose cursor in Redis is not whole milliseconds
    client.hset(schedule_key(SCHEDULE), mapping={"cursor": value, "sent_at": str(T0)})
    wall = FakeClock(T0 / 1000 + 1)
    beat = beat_process("a", wall)

    # When a beat takes it up and time passes
    with caplog.at_level(logging.WARNING, logger="greenroom.beat"):
        beat.turn()
        wall.advance(10)
        beat.turn()

    # Then the state was reset to the start, with one warning, and the next tick went out
    assert [r.getMessage() for r in caplog.records] == [
        f"The state of schedule {SCHEDULE} in Redis was damaged; it starts again from now"
    ]
    assert published_ids(rabbitmq_url) == ids(T0 + 10_000)


def test_a_schedule_whose_state_breaks_while_leading_holds_up_no_other(
    beat_process: StartProcess,
    client: redis.Redis[bytes],
    rabbitmq_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a leader of two schedules
    other = Schedule(name="tests.other", task="echo", kwargs={"payload": "o"}, every=10, declared=False)
    wall = FakeClock(T0 / 1000 + 1)
    beat = beat_process("a", wall, [every_ten(), other])
    beat.turn()

    # When the first schedule's state is damaged, and its next tick's claim is a key of another type
    client.hset(schedule_key(SCHEDULE), "cursor", "-1e300")
    client.hset(claim_key(SCHEDULE, T0 + 10_000), "x", "y")
    wall.advance(10)
    with caplog.at_level(logging.WARNING, logger="greenroom.beat"):
        beat.turn()
        beat.turn()
        wall.advance(10)
        beat.turn()

    # Then the other schedule's ticks went out at once, the first was read again (reset from
    # now: its damaged state lost the tick it was at), and it said so once
    published = published_ids(rabbitmq_url)
    assert [i for i in published if "tests.other" in i] == [
        tick_message_id("tests.other", T0 + 10_000),
        tick_message_id("tests.other", T0 + 20_000),
    ]
    assert [i for i in published if SCHEDULE + ":" in i] == ids(T0 + 20_000)
    assert [r.getMessage() for r in caplog.records] == [
        f"The state of schedule {SCHEDULE} in Redis was damaged; it starts again from now"
    ]


def test_a_loop_that_makes_no_progress_for_a_lease_lets_the_lease_lapse(
    beat_process: StartProcess, client: redis.Redis[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a leader, with a lease of 1 s (Redis expires it in real time)
    wall = FakeClock(T0 / 1000 + 1)
    a, b = beat_process("a", wall, BEAT_LEASE_SECONDS=1.0), beat_process("b", wall, BEAT_LEASE_SECONDS=1.0)
    a.turn()
    assert a.leader() == 1.0

    # When its loop makes no progress for longer than a lease (a publish stuck), while the lease
    # thread goes on
    with caplog.at_level(logging.ERROR, logger="greenroom.beat"):
        for _ in range(6):
            a.monotonic.advance(0.25)
            a.beat._refresh_lease()

    # Then it stopped renewing (one ERROR line), and the other process takes the lease over
    assert a.leader() == 0.0
    [stalled] = [r.getMessage() for r in caplog.records]
    assert stalled.startswith("The beat loop has made no progress for 1s")
    wait_for(lambda: b.turn() or b.leader() == 1.0, 5, "the other process to take the lease over")


def test_a_follower_whose_schedules_differ_from_the_leaders_says_so_once(
    beat_process: StartProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a leader of one schedule, and a follower with another one too
    other = Schedule(name="tests.other", task="echo", kwargs={"token": "s3cret"}, every=10, declared=False)
    wall = FakeClock(T0 / 1000 + 1)
    a, b = beat_process("a", wall), beat_process("b", wall, [every_ten(), other])
    a.turn()

    # When the follower turns, again and again
    with caplog.at_level(logging.WARNING, logger="greenroom.beat"):
        for _ in range(3):
            b.monotonic.advance(20)
            b.turn()

    # Then it warned once, naming both sets, never an argument's value
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("The leading beat process sends other schedules than this one would")
    assert "tests.other=echo every 10s args:" in warning
    assert "s3cret" not in warning


@pytest.mark.parametrize("key", ["greenroom-beat:leader", "greenroom-beat:heartbeat-completed"])
def test_a_beat_key_of_another_type_is_replaced_and_the_beat_leads(
    beat_process: StartProcess, client: redis.Redis[bytes], rabbitmq_url: str, key: str
) -> None:
    # Given a key of the beat's that is a list, not the string it should be
    client.rpush(key, "damage")
    wall = FakeClock(T0 / 1000 + 1)
    beat = beat_process("a", wall)

    # When a beat starts and time passes
    beat.turn()
    wall.advance(10)
    beat.turn()

    # Then it leads and sends
    assert beat.leader() == 1.0
    assert published_ids(rabbitmq_url) == ids(T0 + 10_000)


@pytest.mark.parametrize("damage", ["a cursor of letters", "a list for the hash", "a hash for the claim"])
def test_a_sent_tick_is_recorded_over_state_damaged_meanwhile(
    client: redis.Redis[bytes], leases: tuple[Lease, Lease], damage: str
) -> None:
    # Given a tick claimed (and, say, published) by "a", which holds the lease
    assert leases[0].held()
    ledger = ledger_of(client, "a")
    ledger.start(SCHEDULE, T0)
    tick = T0 + 10_000
    assert ledger.claim(SCHEDULE, tick) == ("claimed", None)

    # When its state is damaged before "a" records the tick
    if damage == "a cursor of letters":
        client.hset(schedule_key(SCHEDULE), "cursor", "abc")
    elif damage == "a list for the hash":
        client.delete(schedule_key(SCHEDULE))
        client.rpush(schedule_key(SCHEDULE), "x")
    else:
        client.delete(claim_key(SCHEDULE, tick))
        client.hset(claim_key(SCHEDULE, tick), "x", "y")

    # Then recording it still works, and leaves the cursor at the tick
    assert ledger.settle_sent(SCHEDULE, tick, tick + 5) == "sent"
    assert client.hget(schedule_key(SCHEDULE), "cursor") == str(tick).encode()
    assert ledger.claim(SCHEDULE, tick) == ("settled", None)


def test_a_leader_with_nothing_due_waits_well_within_its_lease(beat_process: StartProcess) -> None:
    # Given a leader with a 1 s lease and only a daily schedule (nothing to do for hours)
    daily = Schedule(name="tests.daily", task="echo", kwargs={"payload": 1}, cron="0 3 * * *", declared=False)
    beat = beat_process("a", FakeClock(T0 / 1000 + 1), [daily], BEAT_LEASE_SECONDS=1.0)
    beat.beat._refresh_lease()

    # When it turns, Then it sleeps a quarter of the lease at most: the watchdog, which lets the
    # lease go after a lease without a turn, never takes an idle leader for a stuck one
    assert beat.beat._turn(threading.Event()) == 0.25
    assert beat.leader() == 1.0
