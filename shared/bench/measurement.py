"""What the bench measures on one side, and how figures over rounds are combined.

A side's figures are a :class:`SideResult`; :func:`median_result` takes each
figure's median over the rounds. The process figures come from the kernel: CPU
from ``getrusage`` of the bench's reaped children, peak RSS from the ``VmHWM``
of the worker master's children in ``/proc``.

>>> runs = [SideResult(drain_tasks_per_second=rate) for rate in (900.0, 1000.0, 400.0)]
>>> median_result(runs).drain_tasks_per_second
900.0
>>> queue_wait_percentiles([0.001 * n for n in range(1, 101)])
{'p50': 50.5, 'p95': 95.05, 'p99': 99.01}
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: The queue-wait percentiles reported, by name and quantile cut (of 99).
PERCENTILES = {"p50": 49, "p95": 94, "p99": 98}


@dataclass
class SideResult:
    """Figures for one side (bare or greenroom)."""

    startup_seconds: float = 0.0
    drain_tasks_per_second: float = 0.0
    worker_cpu_ms_per_task: float = 0.0
    #: The same drain and CPU figures for the async actor (``bench.echo_async``).
    async_drain_tasks_per_second: float = 0.0
    async_worker_cpu_ms_per_task: float = 0.0
    queue_wait_ms: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    send_per_second: dict[str, float] = field(default_factory=dict)


def median_result(runs: list[SideResult]) -> SideResult:
    """Each figure's median over the rounds (send rates are measured once, not per round)."""

    def median(values: Iterable[float]) -> float:
        return statistics.median(values)

    return SideResult(
        startup_seconds=median(run.startup_seconds for run in runs),
        drain_tasks_per_second=median(run.drain_tasks_per_second for run in runs),
        worker_cpu_ms_per_task=median(run.worker_cpu_ms_per_task for run in runs),
        async_drain_tasks_per_second=median(run.async_drain_tasks_per_second for run in runs),
        async_worker_cpu_ms_per_task=median(run.async_worker_cpu_ms_per_task for run in runs),
        queue_wait_ms={
            name: median(run.queue_wait_ms.get(name, 0.0) for run in runs) for name in PERCENTILES
        },
        peak_rss_mib=median(run.peak_rss_mib for run in runs),
    )


def queue_wait_percentiles(waits_seconds: Iterable[float]) -> dict[str, float]:
    """p50, p95 and p99 of the waits, in milliseconds (all 0 for fewer than two waits)."""
    measured = sorted(wait * 1000 for wait in waits_seconds)
    if len(measured) < 2:
        return dict.fromkeys(PERCENTILES, 0.0)
    cuts = statistics.quantiles(measured, n=100, method="inclusive")
    return {name: round(cuts[cut], 2) for name, cut in PERCENTILES.items()}


def cpu_ms_per_task(cpu_seconds: dict[int, float]) -> float:
    """Worker CPU per task from two drains of different sizes (task count -> CPU seconds):
    their difference over the difference in tasks, which cancels the start-up cost."""
    fewer, more = sorted(cpu_seconds)
    return round(max(0.0, (cpu_seconds[more] - cpu_seconds[fewer]) / (more - fewer) * 1000), 3)


def send_rate(count: int, send: Callable[[], object]) -> float:
    """Messages per second of ``send()``, which sends ``count`` messages."""
    started = time.perf_counter()
    send()
    return round(count / (time.perf_counter() - started), 1)


def children_cpu_seconds() -> float:
    """User and system CPU of every child process this process has reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(master: int) -> float:
    """The largest peak resident set (VmHWM) among the worker master's child processes."""
    peaks = [0.0]
    for child in Path(f"/proc/{master}/task/{master}/children").read_text().split():
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return round(max(peaks), 1)
