"""Logs as a stream: one JSON object per line on stdout, for every logger.

>>> configure_logging(level="INFO", fmt="json")
>>> logging.getLogger("greenroom").info("ready", extra={"queue": "default"})
{"timestamp": "2026-11-23T19:40:00.123456+00:00", "level": "INFO", "logger": "greenroom", ...}

Every line carries ``timestamp`` (UTC, ISO 8601), ``level``, ``logger`` and
``message``; inside a task also ``message_id``, ``actor``, ``queue`` and
``retries`` (added by :class:`observability.task_logging.TaskContextFilter`);
inside a traced task or send also ``trace_id`` and ``span_id``.
An exception is the ``exc_info`` field of the same object, never loose lines.
Passwords inside URLs are masked in every line.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from types import TracebackType
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

from observability.task_logging import TaskContextFilter
from observability.tracing import TraceContextFilter

#: Matches the password of a URL's userinfo (scheme://user:PASSWORD@host).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")


CONSOLE_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"


def mask_secrets(text: str) -> str:
    """Mask passwords inside URLs.

    >>> mask_secrets("connect amqp://app:pw@rabbit:5672 failed")
    'connect amqp://app:***@rabbit:5672 failed'
    """
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


class _SecretMaskingJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class _SecretMaskingConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class CurrentStreamHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is when a record is emitted.

    Dramatiq's worker children replace ``sys.stdout`` with a pipe to the master
    process, which writes each record whole; a handler holding the original
    stream would bypass that pipe and interleave lines.
    """

    def __init__(self, stream_name: Literal["stdout", "stderr"] = "stdout") -> None:
        self.stream_name = stream_name
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stdout if self.stream_name == "stdout" else sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignored: the stream is always the current sys.stdout or sys.stderr."""


def build_formatter(fmt: Literal["json", "console"]) -> logging.Formatter:
    """The formatter for LOG_FORMAT (``json`` or ``console``)."""
    if fmt == "console":
        return _SecretMaskingConsoleFormatter(CONSOLE_FORMAT)
    return _SecretMaskingJsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
        json_ensure_ascii=False,
    )


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
    # pika narrates every connection step at INFO; its warnings still show.
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


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
