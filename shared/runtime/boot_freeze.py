"""Keep the garbage collector's full passes short in worker processes.

A booted worker process holds many objects that live as long as it does
(Dramatiq, pika, the OpenTelemetry SDK, pydantic, prometheus_client ...).
Python's full (generation 2) collection walks every one of them while holding
the GIL, and no thread of the process runs meanwhile. Under load, traced tasks
leave objects that live until their span is exported and so reach the oldest
generation, which triggers such passes; each one stalls every task the process
has in hand.

Just before the worker starts its threads, :class:`FreezeBootObjects`
collects once and moves everything alive to the collector's permanent
generation (``gc.freeze()``, made for objects that live until exit). Later
full passes walk only what was made after boot. Frozen objects are still
freed by reference counting; only a reference cycle among them that becomes
garbage later is never collected. (docs/benchmarks.md has the figures.)
"""

from __future__ import annotations

import gc

import dramatiq
from dramatiq.middleware import Middleware


class FreezeBootObjects(Middleware):
    """``gc.collect()`` then ``gc.freeze()`` in each worker process before its worker's
    threads start (last in the middleware list), so no task waits for that one collection."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        gc.collect()
        gc.freeze()
