"""greenroom's span export batch size yields to the SDK's own variables."""

from __future__ import annotations

import pytest

from observability.tracer_provider import EXPORT_BATCH_SIZE, _export_batch_size


@pytest.fixture(autouse=True)
def no_bsp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", raising=False)
    monkeypatch.delenv("OTEL_BSP_MAX_QUEUE_SIZE", raising=False)


def test_greenroom_default_when_nothing_is_set() -> None:
    assert _export_batch_size() == EXPORT_BATCH_SIZE == 128


@pytest.mark.parametrize("variable", ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_MAX_QUEUE_SIZE"])
def test_the_sdk_decides_when_a_variable_is_set(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """A queue of 64 with a batch of 128 would make the SDK refuse to start."""
    monkeypatch.setenv(variable, "64")
    assert _export_batch_size() is None
