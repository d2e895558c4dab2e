"""A producer service for demos: a steady mix of tasks, so dashboards show life at once.

Example (not run here: it needs RabbitMQ)::

    run_demo(producer, rate=5.0, duration=60.0)   # about 300 tasks, then returns
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from shared.errors import GreenroomError
from shared.producer import Producer

logger = logging.getLogger("greenroom.demo")

#: (weight, task, arguments factory): mostly echo, some reports, a few failures.
MIX: list[tuple[int, str, Callable[[random.Random], dict[str, Any]]]] = [
    (
        70,
        "echo",
        lambda rng: {"payload": {"n": rng.randrange(1000)}, "delay_ms": rng.choice((0, 5, 20, 100))},
    ),
    (
        15,
        "reports.build",
        lambda rng: {"report_id": f"demo-{rng.randrange(100)}", "rows": rng.choice((5_000, 50_000))},
    ),
    (
        10,
        "reports.sync_inventory",
        lambda rng: {"source": "demo-upstream", "fail_first": rng.choice((0, 0, 1, 2))},
    ),
    (5, "fail", lambda rng: {"reason": "demo failure"}),
]


def run_demo(producer: Producer, *, rate: float, duration: float | None, seed: int | None = None) -> int:
    """Send about ``rate`` tasks per second until ``duration`` seconds pass or SIGTERM; return the count."""
    rng = random.Random(seed)  # noqa: S311 - demo traffic, not security
    stop = threading.Event()
    _stop_on(signal.SIGTERM, stop)
    _stop_on(signal.SIGINT, stop)
    deadline = None if duration is None else time.monotonic() + duration
    sent = 0
    weights = [weight for weight, _, _ in MIX]
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        _, task, make_arguments = rng.choices(MIX, weights=weights)[0]
        try:
            producer.send(task, **make_arguments(rng))
            sent += 1
        except GreenroomError as error:
            logger.warning("demo send failed: %s", error)
        stop.wait(1 / rate)
    logger.info("demo producer stopped", extra={"sent": sent})
    return sent


def _stop_on(signum: int, stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signum, handler)
