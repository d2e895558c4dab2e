"""One JSON log line: its encoder, its timestamp, and the bound on its length.

No line (UTF-8, without its newline) is longer than :data:`MAX_LINE_BYTES`:
:func:`bounded_line` cuts the longest fields of one that is, with a marker
saying how long they were. :func:`logging_error_line` is the line written when
a record itself cannot be formatted or written.

>>> iso_utc(1795000000.25)
'2026-11-18T11:06:40.250000+00:00'
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonEncoder

from shared.secret_masking import mask_secrets

#: No JSON line (UTF-8, without its newline) is longer than this.
MAX_LINE_BYTES = 16 * 1024 - 1
#: Characters of a field kept when a line is too long: the message, a traceback, anything else.
MESSAGE_CHARS, EXC_INFO_CHARS, FIELD_CHARS = 4096, 8192, 1024
#: Fields every line keeps whole.
_CORE_FIELDS = ("timestamp", "level", "logger")

#: Types whose values cannot change after a record is made.
IMMUTABLE_SCALARS = frozenset({str, int, float, bool, type(None)})

#: One encoder for every line: json.dumps(cls=...) would build a new one per line.
LINE_ENCODER = JsonEncoder(ensure_ascii=False)


def bounded_line(line: str) -> str:
    """``line`` (one JSON object) as is if it fits MAX_LINE_BYTES, else with its long fields cut.

    >>> len(bounded_line(json.dumps({"level": "INFO", "message": "x" * 100_000})))
    4163
    """
    if (
        len(line) * 4 <= MAX_LINE_BYTES or len(line.encode()) <= MAX_LINE_BYTES
    ):  # UTF-8: 4 bytes a character at most
        return line
    try:
        fields = json.loads(line)
    except ValueError:
        fields = {"message": line}
    if not isinstance(fields, dict):
        fields = {"message": fields}
    for share in (1, 4, 16, 64):
        shortened = LINE_ENCODER.encode({key: _shortened(key, value, share) for key, value in fields.items()})
        if len(shortened.encode()) <= MAX_LINE_BYTES:
            return shortened
    core = {key: fields[key] for key in _CORE_FIELDS if key in fields}
    return LINE_ENCODER.encode({**core, "message": cut(str(fields.get("message", "")), 256)})


def _shortened(key: str, value: Any, share: int) -> Any:
    if key in _CORE_FIELDS:
        return value
    if key == "exc_info" and isinstance(value, str):
        return _cut_middle(value, EXC_INFO_CHARS // share)
    limit = (MESSAGE_CHARS if key == "message" else FIELD_CHARS) // share
    if isinstance(value, str):
        return cut(value, limit)
    if isinstance(value, (dict, list)):
        text = LINE_ENCODER.encode(value)
        return value if len(text) <= limit else cut(text, limit)
    return value


def cut(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, and a marker if that is not all of it.

    >>> cut("abcdef", 3)
    'abc... [cut: 6 characters in all]'
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [cut: {len(text)} characters in all]"


def _cut_middle(text: str, limit: int) -> str:
    """A traceback's first quarter and last three quarters of ``limit`` (the exception is at its end)."""
    if len(text) <= limit:
        return text
    head, tail = limit // 4, limit - limit // 4
    return f"{text[:head]}\n... [cut: {len(text)} characters in all] ...\n{text[-tail:]}"


def logging_error_line(record: logging.LogRecord, error: BaseException | None) -> str:
    """The JSON line saying that ``record`` could not be formatted or written, and why."""
    what = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    line = {
        "level": "ERROR",
        "logger": "greenroom.logging",
        "message": cut(mask_secrets(f"Could not write a log line of {record.name}: {what}"), 1024),
        "record_message": cut(mask_secrets(str(record.msg)), 1024),  # masked first: a cut may split a URL
        "timestamp": iso_utc(record.created),
    }
    return bounded_line(LINE_ENCODER.encode(line))


#: (whole second, its ISO 8601 date and time) of the latest line: lines of one second share it.
_current_second: tuple[int, str] = (-1, "")


def iso_utc(created: float) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat()``, the date and time of day
    worked out once per second (lines of the same second share it)."""
    global _current_second
    if not created >= 0:  # before 1970, or NaN: as datetime does it
        return datetime.fromtimestamp(created, tz=UTC).isoformat()
    second = int(created)
    # As datetime: the fraction rounded half to even to microseconds, carrying into the second.
    micro = round((created - second) * 1e6)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    cached = _current_second
    if cached[0] != second:
        cached = _current_second = (second, datetime.fromtimestamp(second, tz=UTC).isoformat()[:-6])
    return f"{cached[1]}.{micro:06d}+00:00" if micro else f"{cached[1]}+00:00"
