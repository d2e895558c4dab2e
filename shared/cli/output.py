"""Exit codes of the ``greenroom`` command, and how a command prints an error or a JSON value.

Exit codes: 0 success, 1 the operation failed (a service is down, a task
failed, a result timed out, an id matched no dead letter, a purge was not
confirmed), 2 bad usage or bad settings, RabbitMQ or Redis refusing them
included (one line on stderr). Whatever a command prints as JSON is strict JSON.

>>> print_json({"ratio": float("nan")})   # a NaN becomes null (with a warning on stderr)
{"ratio": null}
"""

from __future__ import annotations

import json
import sys
from typing import Any

from shared.errors import (
    GreenroomError,
    InvalidParameter,
    InvalidSettings,
    InvalidTaskArguments,
    ServiceRefused,
    UnknownTask,
)
from shared.strict_json import json_safe

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Errors that mean "fix the input or the settings" (exit 2) rather than "try again" (exit 1).
USAGE_ERRORS = (UnknownTask, InvalidTaskArguments, InvalidParameter, InvalidSettings, ServiceRefused)


def usage_error(line: str) -> int:
    """Print ``line`` as greenroom's one error line on stderr; exit code 2."""
    print(f"greenroom: error: {line}", file=sys.stderr)
    return EXIT_USAGE


def failed(error: GreenroomError) -> int:
    """Print ``error`` as greenroom's one line; its exit code (2: fix the input or settings)."""
    if isinstance(error, USAGE_ERRORS):
        return usage_error(str(error))
    print(f"greenroom: {error}", file=sys.stderr)
    return EXIT_FAILED


def print_json(value: Any) -> None:
    """Print ``value`` as strict JSON; a NaN or infinity in it (a result stored before
    arguments were checked) is printed as null, with one warning line on stderr."""
    safe = json_safe(value)
    if safe != value and json.dumps(safe) != json.dumps(value):
        print("greenroom: warning: NaN or Infinity in the value is printed as null", file=sys.stderr)
    print(json.dumps(safe, allow_nan=False))
