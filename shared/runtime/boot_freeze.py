"""Keep the garbage collector's full passes short in worker processes.

A booted worker process holds a few hundred thousand objects that live as
long as it does (Dramatiq, pika, the OpenTelemetry SDK, pydantic,
prometheus_client ...). Python's full (generation 2) collection walks every
one of them while holding the GIL: 28-35 ms on the development machine,
during which no thread of the process runs. Under load, traced tasks leave
objects that live until their span is exported and so reach the oldest
generation, which triggers such a pass every few seconds; each one stalls
every task the process has in hand.

Just before the worker starts its threads, :class:`FreezeBootObjects`
collects once and moves everything alive to the collector's permanent
generation (``gc.freeze()``, made for objects that live until exit). Later
full passes walk only what was made after boot: none took over 2 ms under
the same load. Measured at 3,300 echo tasks/s on two worker processes (three
rounds, about 30,000 messages), a message's time from delivery to ack:
99.9th percentile 27.6 -> 13.4 ms, longest 40.0 -> 21.0 ms (median 2.5 ms
both). Frozen objects are still freed by reference counting; only a
reference cycle among them that becomes garbage later is never collected.

>>> broker.add_middleware(FreezeBootObjects())   # last in the list
"""

from __future__ import annotations

import gc

import dramatiq
from dramatiq.middleware import Middleware


class FreezeBootObjects(Middleware):
    """``gc.collect()`` then ``gc.freeze()`` in each worker process before its worker's
    threads start, so no task waits for that one collection (about 20 ms)."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        gc.collect()
        gc.freeze()
