"""Reading the trace context that a message carries (its W3C headers), and quoting it safely.

A carrier is the dict of propagation headers (``traceparent``, ``tracestate``,
``baggage``) that :class:`observability.tracing.Tracing` writes into a message's
options. Every message of a ``send_many`` batch carries the same one, so
:class:`ProducerContexts` keeps what it read for the next message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link

#: The propagators' loggers, whose warnings quote headers taken from messages.
PROPAGATOR_LOGGERS = ("opentelemetry.baggage.propagation", "opentelemetry.trace.propagation.tracecontext")
#: How much of a quoted header such a warning keeps.
QUOTED_HEADER_CHARS = 200

NO_CONTEXT = otel_context.Context()


@dataclass(frozen=True, slots=True)
class Producer:
    """What a consumer span needs from a message's carrier."""

    context: otel_context.Context
    #: The link to the producer span (none when the carrier holds no valid span).
    links: tuple[Link, ...]


NO_PRODUCER = Producer(NO_CONTEXT, ())


class ProducerContexts:
    """Carriers read by the global propagator, the last ``limit`` of them kept.

    Parsing headers costs more than the lookup, and a Context (and a Link) is never
    changed in place, so one result can serve every task that carries the same headers.

    >>> contexts = ProducerContexts()
    >>> carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    >>> producer = contexts.read(carrier)
    >>> format(producer.links[0].context.span_id, "016x")
    'b7ad6b7169203331'
    >>> contexts.read(dict(carrier)) is producer
    True
    """

    def __init__(self, *, limit: int = 256) -> None:
        self.limit = limit
        self._read: dict[tuple[object, tuple[tuple[str, str], ...]], Producer] = {}

    def read(self, carrier: Mapping[str, str] | None) -> Producer:
        """The context (span and baggage) in ``carrier``, with the link to its span."""
        if not carrier:
            return NO_PRODUCER
        try:
            key = (propagate.get_global_textmap(), tuple(carrier.items()))
            producer = self._read.get(key)
        except TypeError:  # a value that cannot be a key: a malformed carrier, read it as it is
            return _read_producer(carrier)
        if producer is None:
            if len(self._read) >= self.limit:
                self._read.clear()
            producer = self._read[key] = _read_producer(carrier)
        return producer


def _read_producer(carrier: Mapping[str, str]) -> Producer:
    context = propagate.extract(carrier, context=otel_context.Context())
    span_context = trace.get_current_span(context).get_span_context()
    return Producer(context, (Link(span_context),) if span_context.is_valid else ())


class QuotedHeaderExcerpts(logging.Filter):
    """Cuts the headers that the propagators' warnings quote (message content) to an excerpt.

    >>> record = logging.LogRecord("x", logging.WARNING, "", 0, "bad `%s`", ("k=" + "v" * 900,), None)
    >>> QuotedHeaderExcerpts().filter(record) and len(record.getMessage())
    221
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_excerpt(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True

    @classmethod
    def install(cls) -> None:
        """Add the filter to the propagators' loggers (once)."""
        for name in PROPAGATOR_LOGGERS:
            propagator_logger = logging.getLogger(name)
            if not any(isinstance(f, cls) for f in propagator_logger.filters):
                propagator_logger.addFilter(cls())


def _excerpt(text: str) -> str:
    if len(text) <= QUOTED_HEADER_CHARS:
        return text
    return f"{text[:QUOTED_HEADER_CHARS]}... ({len(text)} chars)"
