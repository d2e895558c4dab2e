"""Periodic: flushes on its interval, once more at stop, logs a failing flush once, stops in bounded time."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from observability.periodic import Periodic


def _threads_named(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def test_flushes_every_interval_on_one_named_thread_and_once_more_at_stop() -> None:
    # Given
    calls: list[str] = []
    three_done = threading.Event()

    def flush() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            three_done.set()

    periodic = Periodic(flush, interval=0.01, name="greenroom-test-periodic")

    # When
    periodic.start()
    periodic.start()  # a second start while running changes nothing
    assert three_done.wait(timeout=10)
    assert len(_threads_named("greenroom-test-periodic")) == 1
    periodic.stop()

    # Then: the thread's flushes, then the final one in the stopping thread, and the thread is gone
    assert set(calls[:3]) == {"greenroom-test-periodic"}
    assert calls[-1] == threading.current_thread().name
    assert not periodic.running
    assert _threads_named("greenroom-test-periodic") == []


def test_stop_without_start_still_flushes_once() -> None:
    calls: list[int] = []
    periodic = Periodic(lambda: calls.append(1), interval=3600.0, name="greenroom-test-idle")
    periodic.stop()
    assert calls == [1]


def test_a_failing_flush_is_logged_once_until_a_flush_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    # Given: a flush that fails twice, succeeds, then fails again
    outcomes = iter([OSError("disk full"), OSError("disk full"), None, OSError("disk full again")])

    def flush() -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    periodic = Periodic(flush, interval=3600.0, name="greenroom-test-failing")

    # When: four flushes (as the thread runs them)
    with caplog.at_level(logging.ERROR, "greenroom.periodic"):
        for _ in range(4):
            periodic._flush_once()

    # Then: one line per failing streak, each naming the thread and the error
    assert len(caplog.records) == 2
    assert all("greenroom-test-failing: flushing failed" in m for m in caplog.messages)
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["disk full", "disk full again"]


def test_stop_is_bounded_when_a_flush_hangs(caplog: pytest.LogCaptureFixture) -> None:
    # Given: the thread's flush hangs until released
    release, entered = threading.Event(), threading.Event()

    def flush() -> None:
        entered.set()
        release.wait(timeout=30)

    periodic = Periodic(flush, interval=0.001, name="greenroom-test-hung", join_timeout=0.2)
    periodic.start()
    assert entered.wait(timeout=10)

    # When
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, "greenroom.periodic"):
        periodic.stop()
    took = time.monotonic() - began
    release.set()

    # Then: stop returned after the join timeout and the lock wait, saying there was no final flush
    assert took < 2.0
    assert "greenroom-test-hung: a flush still runs after 0.2s; no final flush." in caplog.messages
