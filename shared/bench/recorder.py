"""What the benchmark's echo task records, identically for bare Dramatiq and greenroom.

Each finished task appends one fixed-size line, its queue wait in seconds, to
BENCH_RECORD_PATH (O_APPEND writes of one small line are atomic across
threads and processes). The bench counts lines by file size and reads the
waits at the end: no extra service is involved in what is measured.

>>> record_completion(sent_at=time.time() - 0.004)   # inside the bench task
"""

from __future__ import annotations

import os
import time

from shared.settings import get_settings

#: The queue both benchmark workers consume (never a production queue).
BENCH_QUEUE = "greenroom-bench"
#: Bytes per record: "%015.6f\n".
RECORD_BYTES = 16


def record_completion(sent_at: float) -> None:
    """Append this task's queue wait (0 when it was not stamped) to BENCH_RECORD_PATH."""
    path = get_settings().BENCH_RECORD_PATH
    if path is None:
        return
    wait = time.time() - sent_at if sent_at else 0.0
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, b"%015.6f\n" % wait)
    finally:
        os.close(descriptor)


def completed(path: str | os.PathLike[str]) -> int:
    """How many tasks have recorded themselves."""
    try:
        return os.stat(path).st_size // RECORD_BYTES
    except FileNotFoundError:
        return 0


def waits(path: str | os.PathLike[str]) -> list[float]:
    """Every recorded queue wait, in seconds (unstamped tasks excluded)."""
    with open(path, "rb") as records:
        return [value for value in (float(line) for line in records) if value > 0]
