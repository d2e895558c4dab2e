"""CoalesceTermSignals: a burst of SIGTERMs is one stop request."""

from __future__ import annotations

import signal

from shared.runtime.term_signals import CoalesceTermSignals


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_repeats_inside_the_window_are_dropped_and_later_ones_pass() -> None:
    clock = FakeClock()
    received: list[int] = []
    handler = CoalesceTermSignals(window_seconds=2.0, clock=clock).coalesce(lambda s, f: received.append(s))

    handler(signal.SIGTERM, None)  # from the process group
    clock.now += 0.01
    handler(signal.SIGTERM, None)  # forwarded by Dramatiq's master
    assert received == [signal.SIGTERM]

    clock.now += 5
    handler(signal.SIGTERM, None)  # a deliberate second request: stop now
    assert received == [signal.SIGTERM, signal.SIGTERM]
