"""Queue wait counts from the due time of a delayed message (pure middleware logic, no broker)."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from observability.metrics import DUE_AT_OPTION, READY_AT_OPTION, Metrics
from shared import delays

NOW_MS = 1_764_590_400_000


def _enqueued(**options: Any) -> dict[str, Any]:
    message = dramatiq.Message(
        queue_name="default", actor_name="echo", args=(), kwargs={}, options=dict(options)
    )
    Metrics(clock=lambda: NOW_MS / 1000).before_enqueue(StubBroker(), message, None)
    return message.options


def test_the_due_time_is_the_one_the_ladder_uses() -> None:
    assert DUE_AT_OPTION == delays.DUE_AT_OPTION


@pytest.mark.parametrize(
    ("options", "ready_at"),
    [
        ({}, NOW_MS),
        ({delays.DUE_AT_OPTION: NOW_MS + 60_000}, NOW_MS + 60_000),  # delayed: ready when due
        ({delays.DUE_AT_OPTION: NOW_MS - 60_000}, NOW_MS),  # due long ago (a replay): ready now
        ({"eta": NOW_MS + 5_000}, NOW_MS + 5_000),  # Dramatiq's own delay
    ],
)
def test_a_message_is_ready_when_enqueued_or_when_due(options: dict[str, Any], ready_at: int) -> None:
    assert _enqueued(**options)[READY_AT_OPTION] == ready_at
