"""How a message check says no: :class:`MessageRejected`, naming the field and why.

Reasons quote what a sender chose only as an :func:`excerpt`.

>>> excerpt("x" * 500)[-20:]
'xxxxx... (502 chars)'
>>> check_whole_number("retries", 2.5, 0, 10, where="options.")
Traceback (most recent call last):
  ...
shared.runtime.rejections.MessageRejected: options.retries: must be a whole number, not 2.5
"""

from __future__ import annotations

import math
from typing import Any

#: How much of anything a message contains a log line may quote.
EXCERPT_CHARS = 200


class MessageRejected(Exception):
    """A body that must not be processed: ``field`` names what is wrong, ``reason`` says why.

    ``field`` is one of a fixed set of names (``body``, a message field, ``options.<name>``
    of :data:`OPTION_CHECKS`, ``options.pipe_target.<field>``); what a sender chose only
    appears, as an excerpt, in ``reason``.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def excerpt(value: object) -> str:
    """``repr(value)`` cut to :data:`EXCERPT_CHARS`, for quoting message content in logs."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else repr(value)
    if len(text) <= EXCERPT_CHARS:
        return text
    return f"{text[:EXCERPT_CHARS]}... ({len(text)} chars)"


def check_whole_number(name: str, value: Any, low: int, high: int, *, where: str = "") -> None:
    """Refuse ``value`` unless it is a whole number (an int, or a float without fraction) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageRejected(where + name, f"must be a whole number, not {kind(value)}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise MessageRejected(where + name, f"must be a whole number, not {excerpt(value)}")
    if not low <= value <= high:
        raise MessageRejected(where + name, f"{excerpt(value)} is outside {low}..{high}")


def kind(value: object) -> str:
    """What JSON type ``value`` is, for a reason ("an object", "a list", "null" ...)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )
