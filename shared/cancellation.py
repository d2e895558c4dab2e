"""Cancellation of sent tasks: what both sides share (Redis keys, the report, the interrupt).

SKELETON (helper C fills in): the producer records every message it sends
(:func:`register_sent`), so that a cancel knows the task, and can tell a finished or
unknown message; :func:`cancel` marks messages cancelled in Redis and tells every
worker at once; a worker (:mod:`shared.runtime.cancellation`) skips a cancelled
message when it gets it, and interrupts a running one whose contract is
``cancellable`` by raising :class:`CancelledWhileRunning` in its thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dramatiq.middleware import Interrupt

from observability.task_logging import CANCELLED_OPTION

__all__ = ["CANCELLED_OPTION", "CancelReport", "CancelledWhileRunning"]


class CancelledWhileRunning(Interrupt):
    """Raised in a worker thread whose task was cancelled while running (its contract is
    ``cancellable``): the task stops, is not retried, and its result is the cancelled mark."""


CancelStatus = Literal["cancelled", "already cancelled", "finished", "unknown"]


@dataclass(frozen=True, slots=True)
class CancelReport:
    """What a cancel did for one message: ``status`` and one line saying it."""

    message_id: str
    task: str | None
    status: CancelStatus
    line: str

    @property
    def cancelled(self) -> bool:
        """Whether the message is now (or already was) marked cancelled."""
        return self.status in ("cancelled", "already cancelled")
