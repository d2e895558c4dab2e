"""Diagnostic tasks on queue ``default``: used by checks and tests."""

from __future__ import annotations

import asyncio
import time

from pydantic import JsonValue

from shared.contracts.diagnostics import ECHO, ECHO_ASYNC, FAIL, EchoArguments, FailArguments
from workers.actor import implements


class DiagnosticFailure(Exception):
    """Raised on purpose by the ``fail`` task."""


@implements(ECHO)
def echo(arguments: EchoArguments) -> JsonValue:
    """Return the payload after ``delay_ms`` of simulated work."""
    if arguments.delay_ms:
        time.sleep(arguments.delay_ms / 1000)
    return arguments.payload


@implements(ECHO_ASYNC)
async def echo_async(arguments: EchoArguments) -> JsonValue:
    """Return the payload after awaiting ``delay_ms`` on the worker process's event loop (an async actor)."""
    if arguments.delay_ms:
        await asyncio.sleep(arguments.delay_ms / 1000)
    return arguments.payload


@implements(FAIL)
def fail(arguments: FailArguments) -> None:
    """Always raise, so dead-lettering and failure alerts can be exercised."""
    raise DiagnosticFailure(arguments.reason)
