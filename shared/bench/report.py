"""The bench's report: its figures as a dict (written as JSON) and as a plain-text table.

The table has one row per figure, bare | greenroom | greenroom/bare ratio (the async
actor's drain and CPU rows, ", async", under the sync task's); its header row names
the OTLP protocol greenroom's side exported its spans with.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dramatiq

from shared.bench.measurement import SideResult

#: Decimal places of a row's figures where one is too few.
_DIGITS = {
    "worker CPU per task (ms)": 3,
    "worker CPU per task, async (ms)": 3,
    "start-up to first task (s)": 2,
}


def build_report(
    options: dict[str, Any],
    results: dict[str, SideResult],
    rounds: dict[str, list[SideResult]],
    spans: dict[str, int],
) -> dict[str, Any]:
    """The bench's figures: the options, the machine, each side's medians, the ratios, the spans
    the receiver got (``spans_received``, ``consumer_spans_received``), every round."""
    bare, green = results["bare"], results["greenroom"]
    return {
        "options": options,
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "dramatiq": dramatiq.__version__,
        },
        "bare": asdict(bare),
        "greenroom": asdict(green),
        "ratios": {
            "drain_throughput": _ratio(green.drain_tasks_per_second, bare.drain_tasks_per_second),
            "worker_cpu_per_task": _ratio(green.worker_cpu_ms_per_task, bare.worker_cpu_ms_per_task),
            "async_drain_throughput": _ratio(
                green.async_drain_tasks_per_second, bare.async_drain_tasks_per_second
            ),
            "async_worker_cpu_per_task": _ratio(
                green.async_worker_cpu_ms_per_task, bare.async_worker_cpu_ms_per_task
            ),
            "queue_wait_p99": _ratio(green.queue_wait_ms["p99"], bare.queue_wait_ms["p99"]),
            "startup": _ratio(green.startup_seconds, bare.startup_seconds),
            "peak_rss": _ratio(green.peak_rss_mib, bare.peak_rss_mib),
            "send_many_vs_dramatiq_confirmed": _ratio(
                green.send_per_second["send_many_confirmed"], bare.send_per_second["send_confirmed"]
            ),
            "send_many_vs_dramatiq_unconfirmed": _ratio(
                green.send_per_second["send_many_confirmed"], bare.send_per_second["send_unconfirmed"]
            ),
        },
        **spans,
        "rounds": {side: [asdict(run) for run in runs] for side, runs in rounds.items()},
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: bare | greenroom | ratio."""
    b, g, r = report["bare"], report["greenroom"], report["ratios"]
    bs, gs = b["send_per_second"], g["send_per_second"]
    bw, gw = b["queue_wait_ms"], g["queue_wait_ms"]
    drain, cpu = "drain_tasks_per_second", "worker_cpu_ms_per_task"
    async_drain, async_cpu = "async_drain_tasks_per_second", "async_worker_cpu_ms_per_task"
    rows = [
        ("drain throughput (tasks/s)", b[drain], g[drain], r["drain_throughput"]),
        ("drain throughput, async (tasks/s)", b[async_drain], g[async_drain], r["async_drain_throughput"]),
        ("worker CPU per task (ms)", b[cpu], g[cpu], r["worker_cpu_per_task"]),
        ("worker CPU per task, async (ms)", b[async_cpu], g[async_cpu], r["async_worker_cpu_per_task"]),
        ("queue wait p50 at half load (ms)", bw["p50"], gw["p50"], None),
        ("queue wait p95 at half load (ms)", bw["p95"], gw["p95"], None),
        ("queue wait p99 at half load (ms)", bw["p99"], gw["p99"], r["queue_wait_p99"]),
        ("start-up to first task (s)", b["startup_seconds"], g["startup_seconds"], r["startup"]),
        ("peak RSS per worker process (MiB)", b["peak_rss_mib"], g["peak_rss_mib"], r["peak_rss"]),
        ("send, confirmed (msg/s)", bs["send_confirmed"], gs["send_confirmed"], None),
        ("send, unconfirmed (msg/s)", bs["send_unconfirmed"], None, None),
        ("send_many, confirmed (msg/s)", None, gs["send_many_confirmed"], None),
    ]  # fmt: skip
    header = f"greenroom traces: OTLP {report['options']['otlp_protocol']}"
    lines = [f"{header:36} {'bare':>12} {'greenroom':>12} {'ratio':>8}"]
    for name, bare, green, ratio in rows:
        digits = _DIGITS.get(name, 1)
        lines.append(f"{name:36} {_cell(bare, digits):>12} {_cell(green, digits):>12} {_cell(ratio, 2):>8}")
    lines.append(
        f"send_many vs Dramatiq send: {r['send_many_vs_dramatiq_confirmed']:.2f}x confirmed, "
        f"{r['send_many_vs_dramatiq_unconfirmed']:.2f}x unconfirmed"
    )
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    """Write the report to ``path`` as indented JSON."""
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def _ratio(mine: float, theirs: float) -> float:
    return round(mine / theirs, 3) if theirs else 0.0


def _cell(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"
