"""Logs as a stream: one JSON object per line on stdout, for every logger.

:func:`configure_logging` routes every logger to one
:class:`~shared.log_handler.CurrentStreamHandler` with a formatter from
:func:`build_formatter`. A worker process started by ``greenroom worker`` logs
lines like this one::

    {"level": "INFO", "logger": "greenroom.task", "message": "task succeeded", "event": "succeeded",
     "message_id": "6b8e...", "actor": "echo", "queue": "default", "retries": 0, "trace_id": "4bf9...",
     "span_id": "00f0...", "timestamp": "2026-11-23T19:40:00.123456+00:00"}

Every line carries ``timestamp`` (UTC, ISO 8601), ``level``, ``logger`` and
``message``; inside a task also ``message_id``, ``actor``, ``queue`` and
``retries`` (added by :class:`observability.task_logging.TaskContextFilter`);
inside a traced task or send also ``trace_id`` and ``span_id``.
An exception is the ``exc_info`` field of the same object, never loose lines.
Secrets are masked in every line (:mod:`shared.secret_masking`). No line is
longer than :data:`shared.log_lines.MAX_LINE_BYTES`: longer fields are cut,
with a marker saying how long they were. Errors of logging itself, uncaught
exceptions (in any thread) and exceptions Python can only ignore are JSON lines too.

>>> formatter = build_formatter("json")
>>> record = logging.makeLogRecord({"name": "greenroom", "levelname": "INFO", "msg": "ready",
...                                 "queue": "default", "created": 1795000000.25})
>>> formatter.format(record)
'{"level": "INFO", "logger": "greenroom", "message": "ready", "queue": "default", "timestamp": "2026-11-18...'
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from observability.task_logging import DramatiqSkipLineFilter, TaskContextFilter
from observability.tracing import TraceContextFilter
from shared.log_handler import CurrentStreamHandler
from shared.log_lines import IMMUTABLE_SCALARS, LINE_ENCODER, bounded_line, iso_utc
from shared.secret_masking import mask_configured_secrets, mask_secrets
from shared.stdlib_compat import scalar_dict_encoder, skip_caller_lookup

__all__ = [
    "CONSOLE_FORMAT",
    "build_formatter",
    "configure_logging",
    "mask_configured_secrets",
    "mask_secrets",
]

CONSOLE_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"


class _SecretMaskingJsonFormatter(JsonFormatter):
    """python-json-logger's JsonFormatter, passwords masked, with a fast path for plain lines.

    A line without an exception, stack or dict message (every per-task line)
    is built in one pass: the same fields in the same order as the library
    writes them (tests compare the two).
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
        self.encode_scalars: Callable[[dict[str, Any]], str] = LINE_ENCODER.encode

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
                scalars = scalars and type(value) in IMMUTABLE_SCALARS
        line["timestamp"] = iso_utc(record.created)
        return mask_secrets(self.encode_scalars(line) if scalars else LINE_ENCODER.encode(line))


class _SecretMaskingConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def build_formatter(fmt: Literal["json", "console"]) -> logging.Formatter:
    """The formatter for LOG_FORMAT (``json`` or ``console``)."""
    if fmt == "console":
        return _SecretMaskingConsoleFormatter(CONSOLE_FORMAT)
    return _SecretMaskingJsonFormatter()


def _serialize(data: dict[str, Any], **_: Any) -> str:
    """python-json-logger's serializer hook, with python-json-logger's own encoder."""
    return LINE_ENCODER.encode(data)


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
    handler.addFilter(DramatiqSkipLineFilter())
    handler.addFilter(TaskContextFilter())
    handler.addFilter(TraceContextFilter())

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Built now that a fallback's ERROR line has a handler to go to.
    if isinstance(handler.formatter, _SecretMaskingJsonFormatter):
        handler.formatter.encode_scalars = scalar_dict_encoder(LINE_ENCODER)
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
