"""Logs as a stream: one JSON object per line on stdout, for every logger.

>>> configure_logging(level="INFO", fmt="json")
>>> logging.getLogger("greenroom").info("ready", extra={"queue": "default"})
{"timestamp": "2026-11-23T19:40:00.123456+00:00", "level": "INFO", "logger": "greenroom", ...}

Every line carries ``timestamp`` (UTC, ISO 8601), ``level``, ``logger`` and
``message``; inside a task also ``message_id``, ``actor``, ``queue`` and
``retries`` (added by :class:`observability.task_logging.TaskContextFilter`);
inside a traced task or send also ``trace_id`` and ``span_id``.
An exception is the ``exc_info`` field of the same object, never loose lines.
Passwords inside URLs are masked in every line. No line is longer than
``MAX_LINE_BYTES``: longer fields are cut, with a marker saying how long they were.
Errors of logging itself, uncaught exceptions (in any thread) and exceptions
Python can only ignore are JSON lines too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, TextIO

import dramatiq
from dramatiq.middleware import Middleware
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonEncoder, JsonFormatter

from observability.periodic import Periodic
from observability.task_logging import TaskContextFilter
from observability.tracing import TraceContextFilter
from shared.stdlib_compat import scalar_dict_encoder, skip_caller_lookup

#: Matches the password of a URL's userinfo (scheme://user:PASSWORD@host): everything up
#: to the last ``@`` before the next whitespace, so a password holding ``@``, ``/``, ``?``,
#: ``#`` or ``:`` is masked whole (a URL with a raw ``@`` further on is masked up to it).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?:[^\s@]*@)+")


CONSOLE_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"

#: No JSON line (UTF-8, without its newline) is longer than this.
MAX_LINE_BYTES = 16 * 1024 - 1
#: Characters of a field kept when a line is too long: the message, a traceback, anything else.
MESSAGE_CHARS, EXC_INFO_CHARS, FIELD_CHARS = 4096, 8192, 1024
#: Fields every line keeps whole.
_CORE_FIELDS = ("timestamp", "level", "logger")


#: Configured secrets shorter than this are not masked outside URLs (it would garble lines).
MIN_MASKED_SECRET_CHARS = 6
#: The exact configured secrets (see mask_configured_secrets), longest first.
_configured_secrets: tuple[str, ...] = ()


def mask_secrets(text: str) -> str:
    """Mask passwords inside URLs, whatever characters they hold, and the configured
    secrets (:func:`mask_configured_secrets`) wherever they appear.

    >>> mask_secrets("connect amqp://app:pw@rabbit:5672 failed")
    'connect amqp://app:***@rabbit:5672 failed'
    >>> mask_secrets("connect amqp://app:p@ss/w?o#rd@rabbit:5672 failed")
    'connect amqp://app:***@rabbit:5672 failed'
    """
    for secret in _configured_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    if "://" not in text:  # most lines: skip the regular expression
        return text
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def mask_configured_secrets(secrets: Iterable[str]) -> None:
    """Mask these exact strings (the configured passwords) in every line from now on, also
    as JSON and ``repr()`` write them; each shorter than MIN_MASKED_SECRET_CHARS only inside URLs.

    >>> mask_configured_secrets(["pa ss word"])
    >>> mask_secrets("login with 'pa ss word' refused")
    "login with '***' refused"
    """
    global _configured_secrets
    written = {form for secret in secrets for form in (secret, repr(secret)[1:-1])}
    forms = written | {json.dumps(form, ensure_ascii=False)[1:-1] for form in written}
    _configured_secrets = tuple(
        sorted((form for form in forms if len(form) >= MIN_MASKED_SECRET_CHARS), key=len, reverse=True)
    )


class _SecretMaskingJsonFormatter(JsonFormatter):
    """python-json-logger's JsonFormatter, passwords masked, with a fast path for plain lines.

    A line without an exception, stack or dict message (every per-task line)
    is built in one pass: the same fields in the same order as the library
    writes them (tests compare the two), in about two thirds of the time.
    """

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
            json_serializer=_serialize,
        )
        self._not_extra = frozenset(RESERVED_ATTRS)
        #: Encodes a line of scalars; configure_logging installs the C encoder once logging works.
        self.encode_scalars: Callable[[dict[str, Any]], str] = _ENCODER.encode

    def format(self, record: logging.LogRecord) -> str:
        return bounded_line(self._format_masked(record))

    def _format_masked(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict) or record.exc_info or record.exc_text or record.stack_info:
            return mask_secrets(super().format(record))
        record.message = record.getMessage()
        line: dict[str, Any] = {"level": record.levelname, "logger": record.name, "message": record.message}
        not_extra = self._not_extra
        scalars = True
        for key, value in record.__dict__.items():
            if key not in not_extra and not key.startswith("_"):
                line[key] = value
                scalars = scalars and type(value) in _IMMUTABLE_SCALARS
        line["timestamp"] = _iso_utc(record.created)
        return mask_secrets(self.encode_scalars(line) if scalars else _ENCODER.encode(line))


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
        shortened = _ENCODER.encode({key: _shortened(key, value, share) for key, value in fields.items()})
        if len(shortened.encode()) <= MAX_LINE_BYTES:
            return shortened
    core = {key: fields[key] for key in _CORE_FIELDS if key in fields}
    return _ENCODER.encode({**core, "message": _cut(str(fields.get("message", "")), 256)})


def _shortened(key: str, value: Any, share: int) -> Any:
    if key in _CORE_FIELDS:
        return value
    if key == "exc_info" and isinstance(value, str):
        return _cut_middle(value, EXC_INFO_CHARS // share)
    limit = (MESSAGE_CHARS if key == "message" else FIELD_CHARS) // share
    if isinstance(value, str):
        return _cut(value, limit)
    if isinstance(value, (dict, list)):
        text = _ENCODER.encode(value)
        return value if len(text) <= limit else _cut(text, limit)
    return value


def _cut(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, and a marker if that is not all of it."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [cut: {len(text)} characters in all]"


def _cut_middle(text: str, limit: int) -> str:
    """A traceback's first quarter and last three quarters of ``limit`` (the exception is at its end)."""
    if len(text) <= limit:
        return text
    head, tail = limit // 4, limit - limit // 4
    return f"{text[:head]}\n... [cut: {len(text)} characters in all] ...\n{text[-tail:]}"


class _SecretMaskingConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class CurrentStreamHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is when a record is emitted.

    Dramatiq's worker children replace ``sys.stdout`` with a pipe to the master
    process, which writes each record whole; a handler holding the original
    stream would bypass that pipe and interleave lines.

    Once :meth:`start_batching` is called (worker processes do, see
    :class:`BatchedWorkerLogs`), lines below WARNING are gathered and written
    together: when ``BATCH_BYTES`` are waiting, when a WARNING or worse
    arrives (it is written at once, after the lines before it), and at least
    every ``flush_interval`` seconds. One write per batch instead of one per
    line is what makes a JSON line per task cheap; the price is that a process
    killed with SIGKILL loses its last ``flush_interval`` seconds of INFO lines.

    While batching, a record that would format the same later (see
    :func:`formats_the_same_later`: every per-task line) waits as a record and
    is formatted with its batch, in whichever thread writes the batch:
    formatting a hundred lines in a row runs with the formatter's code and
    data in the CPU caches, about 11 us per task less than formatting each
    line between the task's other work.
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


def logging_error_line(record: logging.LogRecord, error: BaseException | None) -> str:
    """The JSON line saying that ``record`` could not be formatted or written, and why."""
    what = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    line = {
        "level": "ERROR",
        "logger": "greenroom.logging",
        "message": _cut(mask_secrets(f"Could not write a log line of {record.name}: {what}"), 1024),
        "record_message": _cut(mask_secrets(str(record.msg)), 1024),  # masked first: a cut may split a URL
        "timestamp": _iso_utc(record.created),
    }
    return bounded_line(_ENCODER.encode(line))


#: Types whose values cannot change after a record is made.
_IMMUTABLE_SCALARS = frozenset({str, int, float, bool, type(None)})
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
    if args and (type(args) is not tuple or any(type(arg) not in _IMMUTABLE_SCALARS for arg in args)):
        return False
    return all(
        type(value) in _IMMUTABLE_SCALARS
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES
    )


class BatchedWorkerLogs(Middleware):
    """Batch log writes in each worker process (see :class:`CurrentStreamHandler`).

    Starts when Dramatiq has booted the process and ends, with everything
    written, when its worker has shut down (before Dramatiq closes the pipe to
    the master process).

    >>> broker.add_middleware(BatchedWorkerLogs())
    """

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        for handler in _stream_handlers():
            handler.start_batching()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        for handler in _stream_handlers():
            handler.stop_batching()


def _stream_handlers() -> list[CurrentStreamHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, CurrentStreamHandler)]


def build_formatter(fmt: Literal["json", "console"]) -> logging.Formatter:
    """The formatter for LOG_FORMAT (``json`` or ``console``)."""
    if fmt == "console":
        return _SecretMaskingConsoleFormatter(CONSOLE_FORMAT)
    return _SecretMaskingJsonFormatter()


#: One encoder for every line: json.dumps(cls=...) would build a new one per line.
_ENCODER = JsonEncoder(ensure_ascii=False)

#: (whole second, its ISO 8601 date and time) of the latest line: lines of one second share it.
_current_second: tuple[int, str] = (-1, "")


def _iso_utc(created: float) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat()``, the date and time of day
    worked out once per second (0.4 us instead of 1.0).

    >>> _iso_utc(1795000000.25)
    '2026-11-18T11:06:40.250000+00:00'
    """
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


def _serialize(data: dict[str, Any], **_: Any) -> str:
    """python-json-logger's serializer hook, with python-json-logger's own encoder."""
    return _ENCODER.encode(data)


def configure_logging(
    *,
    level: str = "INFO",
    fmt: Literal["json", "console"] = "json",
    stream: Literal["stdout", "stderr"] = "stdout",
) -> None:
    """Route every logger (greenroom, Dramatiq, pika, warnings) to stdout as JSON lines.

    Commands whose stdout is their answer (``greenroom send``) log to stderr
    instead. Idempotent: calling it again replaces the previous configuration.
    """
    handler = CurrentStreamHandler(stream)
    handler.setFormatter(build_formatter(fmt))
    handler.addFilter(TaskContextFilter())
    handler.addFilter(TraceContextFilter())

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Built now that a fallback's ERROR line has a handler to go to.
    if isinstance(handler.formatter, _SecretMaskingJsonFormatter):
        handler.formatter.encode_scalars = scalar_dict_encoder(_ENCODER)
    # No line shows the caller's file and line, thread or process, so logging need
    # not look them up (the logging HOWTO's "Optimization" section).
    skip_caller_lookup()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # pika narrates every connection step at INFO; its warnings still show.
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    sys.unraisablehook = _log_unraisable


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("greenroom").critical("Uncaught exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("greenroom").critical(
        "Uncaught exception in thread %s",
        getattr(args.thread, "name", "?"),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_unraisable(unraisable: Any) -> None:
    """An exception Python could only ignore (in ``__del__``, a finalizer ...): one line, not stderr."""
    error = unraisable.exc_value
    logging.getLogger("greenroom").error(
        "%s: %r",
        unraisable.err_msg or "Exception ignored in",
        unraisable.object,
        exc_info=(type(error), error, unraisable.exc_traceback) if error is not None else None,
    )
