"""TaskFigures: noted figures reach the metrics at flush; exemplars keep the latest traced per bucket."""

from __future__ import annotations

import uuid
from pathlib import Path

from opentelemetry.trace import SpanContext, TraceFlags

from observability.exemplars import ExemplarStore, load_exemplars
from observability.metric_families import DURATION, DURATION_NAME, QUEUE_WAIT, TASKS
from observability.task_figures import Finished, Started, TaskFigures, Waited


def _samples(family_metric: object, **labels: str) -> dict[tuple[str, str], float]:
    [family] = family_metric.collect()  # type: ignore[attr-defined]
    return {
        (sample.name.removeprefix(family.name), sample.labels.get("le", "")): sample.value
        for sample in family.samples
        if all(sample.labels.get(k) == v for k, v in labels.items()) and not sample.name.endswith("_created")
    }


def _context(trace_id: int, sampled: bool = True) -> SpanContext:
    return SpanContext(trace_id, 1, False, TraceFlags(1 if sampled else 0))


def test_noted_figures_are_applied_at_flush_and_not_before(tmp_path: Path) -> None:
    # Given: a (queue, actor) of its own, so other tests' figures do not count
    actor = f"test-{uuid.uuid4().hex[:8]}"
    figures = TaskFigures(exemplars=None)
    series = figures.series_of("default", actor)
    assert figures.series_of("default", actor) is series  # looked up once

    # When
    figures.note(Waited(series, 0.002, None))
    figures.note(Finished(series, "success", 0.012, None))
    figures.note(Finished(series, "success", 0.3, None))
    figures.note(Finished(series, "skipped", None, None))  # skipped before it started: no duration
    assert _samples(TASKS, actor=actor, outcome="success")[("_total", "")] == 0
    figures.flush()

    # Then
    assert _samples(TASKS, actor=actor, outcome="success")[("_total", "")] == 2
    assert _samples(TASKS, actor=actor, outcome="skipped")[("_total", "")] == 1
    durations = _samples(DURATION, actor=actor)
    assert durations[("_count", "")] == 2
    assert abs(durations[("_sum", "")] - 0.312) < 1e-12
    assert durations[("_bucket", "0.025")] == 1 and durations[("_bucket", "0.5")] == 2
    assert _samples(QUEUE_WAIT, actor=actor)[("_bucket", "0.005")] == 1


def test_in_progress_shows_the_started_tasks_and_returns_to_zero(tmp_path: Path) -> None:
    actor = f"test-{uuid.uuid4().hex[:8]}"
    figures = TaskFigures(exemplars=None)
    series = figures.series_of("default", actor)
    figures.started[1] = Started(0.0, series, None, "m1")
    figures.started[2] = Started(0.0, series, None, "m2")
    figures.flush()
    assert series.in_progress.collect()[0].samples[0].value == 2  # type: ignore[attr-defined]
    figures.started.clear()
    figures.flush()
    assert series.in_progress.collect()[0].samples[0].value == 0  # type: ignore[attr-defined]


def test_the_latest_sampled_observation_of_each_bucket_becomes_its_exemplar(tmp_path: Path) -> None:
    # Given
    store = ExemplarStore(tmp_path, pid=1, clock=lambda: 100.0)
    figures = TaskFigures(exemplars=store)
    series = figures.series_of("default", f"test-{uuid.uuid4().hex[:8]}")

    # When: two traced durations in the 0.025 bucket, one untraced, one not sampled, one on the 5.0 bound
    figures.note(Finished(series, "success", 0.02, _context(11)))
    figures.note(Finished(series, "success", 0.03, None))
    figures.note(Finished(series, "success", 0.021, _context(22)))
    figures.note(Finished(series, "success", 0.022, _context(33, sampled=False)))
    figures.note(Finished(series, "success", 5.0, _context(11)))
    figures.flush()
    store.flush()

    # Then
    found = {
        key[2]: (exemplar.trace_id, exemplar.value)
        for key, exemplar in load_exemplars(tmp_path).items()
        if key[0] == DURATION_NAME
    }
    assert found == {"0.025": (format(22, "032x"), 0.021), "5.0": (format(11, "032x"), 5.0)}
