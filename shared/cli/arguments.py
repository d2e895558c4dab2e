"""Argument types and the sub-command factory every ``greenroom`` command uses.

>>> positive_float("2.5")
2.5
>>> queue_names(["default,reports", "bench  other"])
['default', 'reports', 'bench', 'other']
>>> json_object('{"payload": 1}')
{'payload': 1}
"""

from __future__ import annotations

import argparse
import json
import math
import re
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
