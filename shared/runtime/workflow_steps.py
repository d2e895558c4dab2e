"""SKELETON (helper W fills in): a worker's part of workflows (:mod:`shared.workflows`).

After a step succeeds, the next step of its pipeline is published with the result
piped into it; a group's last member publishes the completion step with every
member's result (Dramatiq's GroupCallbacks with its Redis backend); a step that fails
or is cancelled stores a mark for every later step (:mod:`shared.result_marks`).
"""

from __future__ import annotations

from dramatiq.middleware import Middleware

from shared.settings import Settings


def workflow_middleware(settings: Settings) -> list[Middleware]:
    """The worker middleware of workflows, in the order :func:`shared.broker.middleware_stack` lists them."""
    return []
