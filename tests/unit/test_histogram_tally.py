"""HistogramTally writes the same figures as Histogram.observe, once per bucket."""

from __future__ import annotations

import math
import random

from opentelemetry.trace import SpanContext, TraceFlags
from prometheus_client import CollectorRegistry, Histogram

from observability.histogram_tally import HistogramTally

BUCKETS = (0.005, 0.01, 0.025, 0.1, 1.0, 10.0)


def _histogram(name: str) -> Histogram:
    return Histogram(name, "test", ["queue"], buckets=BUCKETS, registry=CollectorRegistry())


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    [family] = histogram.collect()
    return {
        (sample.name.removeprefix(family.name), sample.labels.get("le", "")): sample.value
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_applied_tally_equals_observing_each_value() -> None:
    # Given: values on, between, below and beyond the bucket bounds
    rng = random.Random(7)
    values = [*BUCKETS, 0.0, 0.0049, 10.5, 3600.0] + [rng.expovariate(20) for _ in range(500)]
    observed, tallied = _histogram("observed"), _histogram("tallied")
    tally = HistogramTally(tallied.labels("default"))

    # When
    for value in values:
        observed.labels("default").observe(value)
        tally.add(value)
    tally.apply()

    # Then: every bucket, the count and the sum as observe makes them
    expected, got = _samples(observed), _samples(tallied)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-12), key
    assert got[("_count", "")] == len(values)


def test_nan_goes_to_the_sum_only_as_with_observe() -> None:
    observed, tallied = _histogram("observed"), _histogram("tallied")
    tally = HistogramTally(tallied.labels("default"))
    for value in (0.5, math.nan):
        observed.labels("default").observe(value)
        tally.add(value)
    tally.apply()
    assert _samples(tallied)[("_count", "")] == _samples(observed)[("_count", "")] == 1
    assert math.isnan(_samples(tallied)[("_sum", "")])


def test_an_empty_tally_writes_nothing_and_exemplars_keep_the_latest_per_bucket() -> None:
    tallied = _histogram("tallied")
    child = tallied.labels("default")
    HistogramTally(child).apply()
    assert _samples(tallied)[("_count", "")] == 0

    first, second = (SpanContext(trace, 1, False, TraceFlags(1)) for trace in (11, 22))
    tally = HistogramTally(child)
    tally.add(0.02, first)
    tally.add(0.03, None)  # untraced: not an exemplar
    tally.add(0.021, second)
    tally.add(5.0, first)
    assert tally.exemplars == {2: (0.021, second), 5: (5.0, first)}
