"""SKELETON (helper C fills in): a worker's part of cancellation (:mod:`shared.cancellation`).

Every worker process keeps the pending cancellations in memory (loaded at boot,
kept current from Redis), so the check on each message costs a set lookup; a
cancelled message is skipped when a worker gets it, and a running one whose contract
is ``cancellable`` is interrupted.
"""

from __future__ import annotations

from dramatiq.middleware import Middleware

from shared.settings import Settings


class Cancellation(Middleware):
    """Skips cancelled messages and interrupts cancellable running ones (see the module)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def is_cancelled(self, message_id: str) -> bool:
        """Whether ``message_id`` is known (to this process) to be cancelled."""
        return False
