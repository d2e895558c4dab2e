"""The one retry-with-backoff loop: waits grow, stay bounded, and end at the deadline."""

from __future__ import annotations

import logging

import dramatiq
import pytest
import redis

from shared.backoff import Backoff, retry_with_backoff
from shared.producer import SEND_BACKOFF
from shared.results import STORE_BACKOFF, RedisResultBackend
from tests.support import free_port


class FakeClock:
    """A monotonic clock that moves only when the loop sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def always_failing() -> None:
    raise ConnectionError("down")


def test_waits_double_up_to_the_longest_and_stop_at_the_deadline() -> None:
    # Given
    clock = FakeClock()

    # When
    with pytest.raises(ConnectionError, match="down"):
        retry_with_backoff(
            always_failing,
            retry_on=(ConnectionError,),
            timeout_seconds=5.0,
            policy=Backoff(first_delay=0.25, max_delay=1.0),
            clock=clock,
            sleep=clock.sleep,
        )

    # Then: the waits add up to 4.75 s; one more second would end past the 5 s deadline
    assert clock.waits == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert sum(clock.waits) <= 5.0


def test_a_success_returns_its_value_and_each_retry_is_reported() -> None:
    clock = FakeClock()
    outcomes: list[object] = [ConnectionError("1"), ConnectionError("2"), "stored"]
    retried: list[tuple[str, float]] = []

    def attempt() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    result = retry_with_backoff(
        attempt,
        retry_on=(ConnectionError,),
        timeout_seconds=10,
        policy=Backoff(first_delay=0.1, max_delay=1.0),
        on_retry=lambda error, delay: retried.append((str(error), delay)),
        clock=clock,
        sleep=clock.sleep,
    )

    assert result == "stored"
    assert retried == [("1", 0.1), ("2", 0.2)]


def test_on_failure_may_end_the_loop_with_its_own_error() -> None:
    clock = FakeClock()

    def refuse(error: BaseException) -> None:
        raise PermissionError(f"refused: {error}")

    with pytest.raises(PermissionError, match="refused: down"):
        retry_with_backoff(
            always_failing,
            retry_on=(ConnectionError,),
            timeout_seconds=10,
            policy=Backoff(first_delay=0.1, max_delay=1.0),
            on_failure=refuse,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.waits == []


def test_other_errors_are_not_retried() -> None:
    clock = FakeClock()

    def broken() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        retry_with_backoff(
            broken,
            retry_on=(ConnectionError,),
            timeout_seconds=10,
            policy=Backoff(first_delay=0.1, max_delay=1.0),
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.waits == []


def test_a_zero_timeout_tries_once() -> None:
    clock = FakeClock()
    with pytest.raises(ConnectionError):
        retry_with_backoff(
            always_failing,
            retry_on=(ConnectionError,),
            timeout_seconds=0,
            policy=Backoff(first_delay=0.1, max_delay=1.0),
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.waits == []


@pytest.mark.parametrize(("first", "longest"), [(0, 1), (-1, 1), (2, 1)])
def test_a_backoff_must_start_above_zero_and_not_above_its_longest_wait(first: float, longest: float) -> None:
    with pytest.raises(ValueError, match="first_delay"):
        Backoff(first_delay=first, max_delay=longest)


def test_send_and_result_storage_use_bounded_policies() -> None:
    assert (SEND_BACKOFF.first_delay, SEND_BACKOFF.max_delay) == (0.1, 1.0)
    assert (STORE_BACKOFF.first_delay, STORE_BACKOFF.max_delay) == (0.2, 2.0)


def test_a_result_store_retries_while_redis_is_unreachable_then_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a backend whose Redis does not answer (nothing listens on the port)
    backend = RedisResultBackend(url=f"redis://127.0.0.1:{free_port()}/0", store_retry_seconds=0.5)
    message: dramatiq.Message[object] = dramatiq.Message(
        queue_name="default", actor_name="echo", args=(), kwargs={}, options={}, message_id="m-1"
    )

    # When it stores a result
    with caplog.at_level(logging.WARNING, "greenroom.results"), pytest.raises(redis.ConnectionError):
        backend.store_result(message, {"x": 1}, 60_000)

    # Then it retried with the store policy's waits (0.2 s, then past the deadline), and said so
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert retries == [
        f"Redis unavailable, retrying to store result {backend.build_message_key(message)} in 0.2s"
    ]
    [failure] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert failure.startswith(
        f"Result {backend.build_message_key(message)} not stored: Redis unavailable for 0s"
    )
    backend.close()
