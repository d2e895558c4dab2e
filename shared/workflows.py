"""SKELETON (helper W fills in): pipelines and groups of tasks, each step checked against its contract."""

from __future__ import annotations

from typing import Any


def step(task: str, /, *, pipe_as: str | None = None, **kwargs: Any) -> Any:
    """One step of a workflow: ``task`` with ``kwargs`` (and the previous result as ``pipe_as``)."""
    raise NotImplementedError


def pipeline(*steps: Any) -> Any:
    """Steps run one after the other."""
    raise NotImplementedError


def group(steps: Any) -> Any:
    """Steps run side by side."""
    raise NotImplementedError
