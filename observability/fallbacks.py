"""Say, loudly, that a process runs on a library's public path because a fast path could not be built.

A ``*_compat.py`` adapter that finds its library changed calls :func:`report_fallback`
once, at start-up: one ERROR line on the ``greenroom.degraded`` logger and the gauge
``greenroom_degraded{component}`` set to 1, which the ``GreenroomDegraded`` alert reads.
The process keeps working, more slowly; nothing is switched off.

A fallback reported before prometheus_client is imported sets its gauge when the
process calls :func:`export_reported` (a worker process does at boot).

For example (not run as a doctest: it would mark the test process degraded)::

    report_fallback("span encoding", "opentelemetry-sdk 9.0 has no ReadableSpan._events")
    reported()   # {'span encoding': 'opentelemetry-sdk 9.0 has no ReadableSpan._events'}
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

logger = logging.getLogger("greenroom.degraded")

_lock = threading.Lock()
_reported: dict[str, str] = {}
_gauge: Any = None


def report_fallback(component: str, reason: str) -> None:
    """Log one ERROR line for ``component`` (once per process) and set its degraded gauge."""
    with _lock:
        if component in _reported:
            return
        _reported[component] = reason
    logger.error(
        "%s: fast path unavailable, using the library's public path: %s",
        component,
        reason,
        extra={"component": component},
    )
    if "prometheus_client" in sys.modules:  # never the first to import it: see _degraded_gauge
        _degraded_gauge().labels(component=component).set(1)


def export_reported() -> None:
    """Set the degraded gauge of every component reported so far in this process.

    A worker process calls this once it writes metric files, for the fallbacks
    reported before that (while ``greenroom worker`` configured logging, say,
    before prometheus_client could be imported).
    """
    gauge = _degraded_gauge()
    for component in reported():
        gauge.labels(component=component).set(1)


def reported() -> dict[str, str]:
    """The components this process fell back on, with the reason given for each."""
    with _lock:
        return dict(_reported)


def _degraded_gauge() -> Any:
    # Created on first use: prometheus_client chooses its multiprocess mode when its
    # values module is first imported, which must happen after PROMETHEUS_MULTIPROC_DIR is set.
    global _gauge
    with _lock:
        if _gauge is None:
            from prometheus_client import Gauge

            _gauge = Gauge(
                "greenroom_degraded",
                "1 for each component running on a library's public path instead of its fast path.",
                ["component"],
                multiprocess_mode="max",
            )
        return _gauge
