"""Diagnostic tasks on queue ``default``: used by checks and tests."""

from __future__ import annotations

import time

from pydantic import JsonValue

from shared.contracts.diagnostics import ECHO, FAIL, EchoArguments, FailArguments
from workers.actor import implements


class DiagnosticFailure(Exception):
    """Raised on purpose by the ``fail`` task."""


@implements(ECHO)
def echo(arguments: EchoArguments) -> JsonValue:
    """Return the payload after ``delay_ms`` of simulated work."""
    if arguments.delay_ms:
        time.sleep(arguments.delay_ms / 1000)
    return arguments.payload


@implements(FAIL)
def fail(arguments: FailArguments) -> None:
    """Always raise, so dead-lettering and failure alerts can be exercised."""
    raise DiagnosticFailure(arguments.reason)
