"""Argument types and the sub-command factory every ``greenroom`` command uses.

>>> positive_float("2.5")
2.5
>>> queue_names(["default,reports", "bench  other"])
['default', 'reports', 'bench', 'other']
>>> json_object('{"payload": 1}')
{'payload': 1}
>>> duration_seconds("5m"), duration_seconds("1.5")
(300.0, 1.5)
>>> aware_datetime("2026-12-24T18:00:00Z").isoformat()
'2026-12-24T18:00:00+00:00'
"""

from __future__ import annotations

import argparse
import json
import math
import re
from datetime import datetime
from typing import Any


def add_command(subparsers: Any, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` shows ``summary`` and one ``example`` line."""
    return subparsers.add_parser(  # type: ignore[no-any-return]
        name,
        allow_abbrev=False,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r:.40}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text!r:.40}")
    return value


#: Seconds per unit of a duration flag (``--delay 30s``, ``5m``, ``2h``, ``7d``).
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<unit>[smhd]?)")


def duration_seconds(text: str) -> float:
    """A duration in seconds: a number of seconds (``30``, ``1.5``) or one with a unit (``30s``,
    ``5m``, ``2h``, ``7d``)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"must be seconds or a number with s, m, h or d (e.g. 30s, 5m), got {text!r:.40}"
        )
    return float(found["number"]) * DURATION_UNITS[found["unit"]]


def aware_datetime(text: str) -> datetime:
    """An ISO 8601 date and time with ``Z`` or an offset (``2026-12-24T18:00:00Z``,
    ``2026-12-24T19:00:00+01:00``); one without is refused, as is anything else."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 date and time, e.g. 2026-12-24T18:00:00Z, got {text!r:.40}"
        ) from None
    if value.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"needs a time zone, Z or an offset (e.g. 2026-12-24T18:00:00Z), got {text!r:.40}"
        )
    return value


def priority_number(text: str) -> int:
    """A message priority, a whole number from 0 to 255 (its queue's maximum is checked at send)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 3) or int(text) > 255:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 255, got {text!r:.40}")
    return int(text)


def queue_names(values: list[str]) -> list[str]:
    """Queue names from flag values, each holding one or more separated by commas or spaces."""
    return [name for value in values for name in re.split(r"[,\s]+", value) if name]


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def json_object(text: str) -> dict[str, Any]:
    """A strict JSON object (no NaN or Infinity)."""
    try:
        value = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    except (ValueError, RecursionError) as error:  # NaN, an integer too long, nesting too deep
        raise argparse.ArgumentTypeError(
            f"not valid JSON: {str(error).split(';')[0] or 'nested too deeply'}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"payload\": 1}'")
    return value
