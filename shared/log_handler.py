"""The handler every log line goes through: the current stdout, written in batches on workers.

>>> handler = CurrentStreamHandler("stdout")
>>> handler.stream is sys.stdout
True
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS

from observability.periodic import Periodic
from shared.log_lines import IMMUTABLE_SCALARS, logging_error_line


class CurrentStreamHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is when a record is emitted.

    Dramatiq's worker children replace ``sys.stdout`` with a pipe to the master
    process, which writes each record whole; a handler holding the original
    stream would bypass that pipe and interleave lines.

    Once :meth:`start_batching` is called (worker processes do, see
    :class:`shared.runtime.batched_logs.BatchedWorkerLogs`), lines below WARNING
    are gathered and written together: when ``BATCH_BYTES`` are waiting, when a
    WARNING or worse arrives (it is written at once, after the lines before it),
    and at least every ``flush_interval`` seconds. A process killed with SIGKILL
    loses its last ``flush_interval`` seconds of INFO lines.

    While batching, a record that would format the same later (see
    :func:`formats_the_same_later`: every per-task line) waits as a record and
    is formatted with its batch, in whichever thread writes the batch.
    """

    #: Write the waiting lines once they reach this size.
    BATCH_BYTES = 16 * 1024
    #: A waiting, not yet formatted record counts as its message plus this many bytes.
    RECORD_OVERHEAD_BYTES = 128

    def __init__(self, stream_name: Literal["stdout", "stderr"] = "stdout") -> None:
        self.stream_name = stream_name
        super().__init__()
        self._waiting: list[str | logging.LogRecord] = []
        self._waiting_bytes = 0
        self._batching = False
        self._flusher: Periodic | None = None

    @property
    def stream(self) -> TextIO:
        return sys.stdout if self.stream_name == "stdout" else sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignored: the stream is always the current sys.stdout or sys.stderr."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        """One JSON line on the stream instead of logging's multi-line ``--- Logging error ---`` block."""
        if not logging.raiseExceptions:
            return
        error = sys.exc_info()[1]
        line = logging_error_line(record, error)
        with contextlib.suppress(Exception):  # the stream itself is broken: nowhere left to say so
            self.stream.write(line + self.terminator)
            self.stream.flush()

    def handle(self, record: logging.LogRecord) -> bool:
        """As Handler.handle, but while batching a line is formatted outside the lock
        (threads logging at once then wait only for each other's list append), or
        later with its batch."""
        if not self._batching:
            return super().handle(record)
        if not self.filter(record):
            return False
        waiting: str | logging.LogRecord
        if record.levelno < logging.WARNING and formats_the_same_later(record):
            waiting, size = record, len(record.msg) + self.RECORD_OVERHEAD_BYTES
        else:
            try:
                waiting = self.format(record) + self.terminator
            except Exception:
                self.handleError(record)
                return True
            size = len(waiting)
        self.acquire()
        try:
            self._waiting.append(waiting)
            self._waiting_bytes += size
            if (
                not self._batching  # stopped meanwhile: write it as usual
                or record.levelno >= logging.WARNING
                or self._waiting_bytes >= self.BATCH_BYTES
            ):
                self._write_waiting()
        finally:
            self.release()
        return True

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_waiting()
        finally:
            self.release()
        super().flush()

    def start_batching(self, flush_interval: float = 0.1) -> None:
        """Write lines below WARNING in batches from now on, in this process."""
        self.acquire()
        try:
            if self._batching:
                return
            self._batching = True
        finally:
            self.release()
        self._flusher = Periodic(self.flush, interval=flush_interval, name="greenroom-log-flusher")
        self._flusher.start()

    def stop_batching(self) -> None:
        """Write what is waiting; every line is written at once from now on."""
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
        self.acquire()
        try:
            self._batching = False
            self._write_waiting()
        finally:
            self.release()

    def _write_waiting(self) -> None:
        if not self._waiting:
            return
        chunk = "".join(self._lines(self._waiting))
        self._waiting.clear()
        self._waiting_bytes = 0
        stream = self.stream
        try:
            stream.write(chunk)
            stream.flush()
        except Exception as error:  # as Handler.handleError would, without a record to name
            if logging.raiseExceptions and sys.__stderr__ is not None:
                record = logging.makeLogRecord(
                    {"msg": f"{chunk.count(chr(10))} log lines", "name": "greenroom"}
                )
                sys.__stderr__.write(logging_error_line(record, error) + "\n")

    def _lines(self, waiting: list[str | logging.LogRecord]) -> Iterator[str]:
        for line in waiting:
            if isinstance(line, str):
                yield line
                continue
            try:
                yield self.format(line) + self.terminator
            except Exception:
                self.handleError(line)


#: LogRecord attributes that are not extras (the formatter reads them itself).
_RECORD_ATTRIBUTES = frozenset(RESERVED_ATTRS) | {"message", "asctime"}


def formats_the_same_later(record: logging.LogRecord) -> bool:
    """Whether ``record`` can be formatted later, in another thread, into the same line:
    a plain string message whose arguments and extra fields are immutable scalars, and
    no exception or stack (their formatting reads live frames).

    >>> formats_the_same_later(logging.makeLogRecord({"msg": "task %s", "args": ("succeeded",)}))
    True
    >>> formats_the_same_later(logging.makeLogRecord({"msg": "rows", "rows": [1, 2]}))
    False
    """
    if type(record.msg) is not str or record.exc_info or record.exc_text or record.stack_info:
        return False
    args = record.args
    if args and (type(args) is not tuple or any(type(arg) not in IMMUTABLE_SCALARS for arg in args)):
        return False
    return all(
        type(value) in IMMUTABLE_SCALARS
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES
    )
