"""Values made fit for strict JSON output (RFC 8259 has no NaN or Infinity)."""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with each NaN or infinity (anywhere in lists and dicts) replaced by
    None, as JavaScript's JSON.stringify writes them: for output that must be strict
    JSON, such as a result stored before arguments were checked to be.

    >>> json_safe({"x": [1.5, float("nan")]})
    {'x': [1.5, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
