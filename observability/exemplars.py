"""Exemplars (trace ids on histogram buckets) across Dramatiq's worker processes.

prometheus_client does not keep exemplars in multiprocess mode. Each worker
process therefore remembers the latest exemplar per histogram bucket in
memory and a background thread (:class:`observability.periodic.Periodic`) writes
them to ``exemplars_<pid>.json`` in the metrics directory every
``FLUSH_INTERVAL_SECONDS`` (and once more at shutdown). The exposition side
merges the files, newest exemplar per bucket winning.

For example::

    store = ExemplarStore(directory, pid=os.getpid())
    store.observe("greenroom_task_duration_seconds", {"queue": "default", "actor": "echo"},
                  value=0.012, buckets=(0.005, 0.01, 0.025), trace_id="4bf92f35...")
"""

from __future__ import annotations

import bisect
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client.utils import floatToGoString

from observability.periodic import Periodic

#: Seconds between writes of a process's exemplars to disk.
FLUSH_INTERVAL_SECONDS = 2.0

ExemplarKey = tuple[str, tuple[tuple[str, str], ...], str]


class RecordedExemplar(NamedTuple):
    trace_id: str
    value: float
    timestamp: float


def bucket_bound(value: float, buckets: tuple[float, ...]) -> str:
    """The ``le`` label of the bucket ``value`` falls in, as prometheus_client formats it."""
    bounds = _bounds.get(buckets)
    if bounds is None:
        bounds = _bounds[buckets] = [str(floatToGoString(bound)) for bound in (*buckets, math.inf)]
    return bounds[bisect.bisect_left(buckets, value)]


_bounds: dict[tuple[float, ...], list[str]] = {}

LabelPairs = tuple[tuple[str, str], ...]


def key_of(metric: str, labels: Mapping[str, str] | LabelPairs, le: str) -> ExemplarKey:
    """The key of a bucket; ``labels`` as a mapping or as pairs already sorted by name."""
    return metric, labels if isinstance(labels, tuple) else tuple(sorted(labels.items())), le


class ExemplarStore:
    """The latest exemplar per (histogram, labels, bucket) of one process."""

    def __init__(
        self,
        directory: Path,
        *,
        pid: int,
        clock: Callable[[], float] = time.time,
        flush_interval: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self.path = directory / f"exemplars_{pid}.json"
        self.clock = clock
        self._latest: dict[ExemplarKey, RecordedExemplar] = {}
        self._dirty = False
        self._periodic = Periodic(self.flush, interval=flush_interval, name="greenroom-exemplars")

    def observe(
        self,
        metric: str,
        labels: Mapping[str, str] | LabelPairs,
        *,
        value: float,
        buckets: tuple[float, ...],
        trace_id: str,
    ) -> None:
        le = bucket_bound(value, buckets)
        self._latest[key_of(metric, labels, le)] = RecordedExemplar(trace_id, value, self.clock())
        self._dirty = True

    def flush(self) -> None:
        """Write this process's exemplars atomically (rename), if anything changed."""
        if not self._dirty:
            return
        self._dirty = False
        rows = [
            {"metric": metric, "labels": dict(labels), "le": le, **vars_of(exemplar)}
            for (metric, labels, le), exemplar in list(self._latest.items())
        ]
        temporary = self.path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(rows))
            os.replace(temporary, self.path)
        except BaseException:
            self._dirty = True  # written next time
            raise

    def start(self) -> None:
        """Flush every ``flush_interval`` seconds on a daemon thread."""
        self._periodic.start()

    def stop(self) -> None:
        """End the thread and write what changed since its last flush."""
        self._periodic.stop()


def vars_of(exemplar: RecordedExemplar) -> dict[str, float | str]:
    return {"trace_id": exemplar.trace_id, "value": exemplar.value, "timestamp": exemplar.timestamp}


def load_exemplars(directory: Path) -> dict[ExemplarKey, RecordedExemplar]:
    """Merge every process's exemplar file; the newest exemplar per bucket wins."""
    merged: dict[ExemplarKey, RecordedExemplar] = {}
    for path in sorted(directory.glob("exemplars_*.json")):
        for row in _read_rows(path):
            key = key_of(row["metric"], row["labels"], row["le"])
            exemplar = RecordedExemplar(row["trace_id"], float(row["value"]), float(row["timestamp"]))
            if key not in merged or merged[key].timestamp < exemplar.timestamp:
                merged[key] = exemplar
    return merged


def _read_rows(path: Path) -> Iterable[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # being replaced right now, or gone with its process: next scrape
    return rows if isinstance(rows, list) else []
