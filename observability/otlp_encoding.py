"""Encode finished spans as a serialised OTLP ``ExportTraceServiceRequest``.

:class:`OtlpSpanEncoder` writes the protobuf wire format directly
(:mod:`observability.protobuf_wire`) instead of building one protobuf object per
span, attribute, link and value. The parts that repeat from span to span (resource,
scope, attribute keys, span names, attributes whose values repeat) are encoded once
and kept by the encoder.

The output decodes to exactly the message that
``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`` builds
(tests compare the two on spans of every shape the SDK produces).

    encoder = OtlpSpanEncoder()
    payload = encoder.encode(finished_spans)
    ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans[0].name
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from observability.protobuf_wire import (
    INT64_MAX,
    INT64_MIN,
    TAGS,
    field,
    pack_double,
    pack_fixed32,
    pack_fixed64,
    pack_two_fixed64,
    string,
    varint,
)

logger = logging.getLogger("greenroom.tracing")

#: Span.flags bits (opentelemetry/proto/trace/v1/trace.proto, SpanFlags).
HAS_IS_REMOTE = 0x100
IS_REMOTE = 0x200

_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
#: Span field 6 (kind), whole.
_KIND_FIELD = {kind: b"\x30" + bytes((number,)) for kind, number in _KIND.items()}
_UNSET_STATUS = b"\x7a\x00"  # field 15, empty: the status of most spans
#: Span field 16 (flags, fixed32) for a span whose parent is remote, and for any other.
_FLAGS_REMOTE = b"\x85\x01" + pack_fixed32(HAS_IS_REMOTE | IS_REMOTE)
_FLAGS_LOCAL = b"\x85\x01" + pack_fixed32(HAS_IS_REMOTE)
_SCALARS = frozenset((str, bool, int, float))

#: A cache is emptied past this many entries (keys and names are few in practice).
CACHE_LIMIT = 4096
#: Whole attributes of one key are kept for at most this many values; a key seen with
#: more (a message id) is encoded afresh each time, as its values do not come back.
VALUES_PER_KEY = 64


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """``spans`` encoded by a new :class:`OtlpSpanEncoder` (which keeps nothing for next time)."""
    return OtlpSpanEncoder().encode(spans)


class OtlpSpanEncoder:
    """Serialises spans as an ExportTraceServiceRequest, keeping the encodings of repeated parts."""

    def __init__(self) -> None:
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}
        self._keys: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}
        #: Whole KeyValue encodings (with their length prefix) of scalar attributes.
        self._pairs: dict[tuple[str, type, Any], bytes] = {}
        #: How many values of each key _pairs holds.
        self._values_of: dict[str, int] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The serialised request carrying ``spans``, grouped by resource and scope."""
        resources: dict[int, Resource] = {}
        scopes: dict[int, InstrumentationScope | None] = {}
        grouped: dict[int, dict[int, list[bytes]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope or None
            resources[id(resource)], scopes[id(scope)] = resource, scope
            grouped.setdefault(id(resource), {}).setdefault(id(scope), []).append(field(2, self._span(span)))
        request = []
        for resource_id, by_scope in grouped.items():
            scope_spans = b"".join(
                field(2, self._scope_header(scopes[scope_id]) + b"".join(encoded))
                for scope_id, encoded in by_scope.items()
            )
            request.append(field(1, self._resource_header(resources[resource_id]) + scope_spans))
        return b"".join(request)

    # Messages ---------------------------------------------------------------------------

    def _span(self, span: ReadableSpan) -> bytes:
        context = span.get_span_context()
        assert context is not None  # an SDK span always has one
        parent = span.parent
        start, end = span.start_time or 0, span.end_time or 0
        parts = [_ids(context)]
        if context.trace_state:
            parts.append(string(3, _trace_state(context)))
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        parts += (self._cached_string(self._names, 5, span.name), _KIND_FIELD[span.kind])
        if start and end:
            parts.append(pack_two_fixed64(0x39, start, 0x41, end))
        else:
            if start:
                parts += (b"\x39", pack_fixed64(start))
            if end:
                parts += (b"\x41", pack_fixed64(end))
        attributes = span.attributes  # each of these properties builds a new view or tuple: read once
        if attributes:
            parts.append(self._attributes(9, attributes))
        if dropped := span.dropped_attributes:
            parts += (b"\x50", varint(dropped))
        for event in span.events:
            parts.append(field(11, self._event(event)))
        if dropped := span.dropped_events:
            parts += (b"\x60", varint(dropped))
        for link in span.links:
            parts.append(field(13, self._link(link)))
        if dropped := span.dropped_links:
            parts += (b"\x70", varint(dropped))
        remote = parent is not None and parent.is_remote
        parts += (_status(span.status), _FLAGS_REMOTE if remote else _FLAGS_LOCAL)
        return b"".join(parts)

    def _event(self, event: Event) -> bytes:
        parts: list[bytes] = []
        if event.timestamp:
            parts += (b"\x09", pack_fixed64(event.timestamp))
        if event.name:
            parts.append(string(2, event.name))
        if event.attributes:
            parts.append(self._attributes(3, event.attributes))
        if event.dropped_attributes:
            parts += (b"\x20", varint(event.dropped_attributes))
        return b"".join(parts)

    def _link(self, link: Link) -> bytes:
        context = link.context
        parts = [_ids(context)]
        attributes = link.attributes
        if attributes:
            parts.append(self._attributes(4, attributes))
        if attributes is not None and (dropped := link.dropped_attributes):  # None: nothing to drop
            parts += (b"\x28", varint(dropped))
        parts += (b"\x35", pack_fixed32(_flags(context)))
        return b"".join(parts)

    def _resource_header(self, resource: Resource) -> bytes:
        """ResourceSpans fields 1 (resource) and 3 (schema_url), encoded once per resource."""
        cached = self._resources.get(id(resource))
        if cached is not None and cached[0] is resource:
            return cached[1]
        header = field(1, self._attributes(1, resource.attributes) if resource.attributes else b"")
        if resource.schema_url:
            header += string(3, resource.schema_url)
        _remember(self._resources, id(resource), (resource, header))
        return header

    def _scope_header(self, scope: InstrumentationScope | None) -> bytes:
        """ScopeSpans fields 1 (scope) and 3 (schema_url), encoded once per scope."""
        cached = self._scopes.get(id(scope))
        if cached is not None and cached[0] is scope:
            return cached[1]
        body = b""
        if scope is not None:
            if scope.name:
                body += string(1, scope.name)
            if scope.version:
                body += string(2, scope.version)
            if scope.attributes:
                body += self._attributes(3, scope.attributes)
        header = field(1, body)
        if scope is not None and scope.schema_url:
            header += string(3, scope.schema_url)
        _remember(self._scopes, id(scope), (scope, header))
        return header

    # Attributes -------------------------------------------------------------------------

    def _attributes(self, field_number: int, attributes: Mapping[str, Any]) -> bytes:
        """Each attribute as a KeyValue in repeated field ``field_number``."""
        tag = TAGS[field_number]
        pairs = self._pairs
        parts = []
        for key, value in attributes.items():
            scalar = type(value) in _SCALARS
            encoded = pairs.get((key, type(value), value)) if scalar else None
            if encoded is None:
                try:
                    encoded_value = _any_value(value)
                except (TypeError, OverflowError) as error:  # as the upstream encoder: drop it, say why
                    logger.error("Span attribute %r not exported: %s", key, error)
                    continue
                key_value = self._cached_string(self._keys, 1, key) + field(2, encoded_value)
                encoded = varint(len(key_value)) + key_value
                if scalar:
                    self._remember_pair(key, value, encoded)
            parts.append(encoded)
        return tag + tag.join(parts) if parts else b""

    def _remember_pair(self, key: str, value: Any, encoded: bytes) -> None:
        cached = self._values_of.get(key, 0)
        if cached >= VALUES_PER_KEY:
            return
        if len(self._pairs) >= CACHE_LIMIT:
            self._pairs.clear()
            self._values_of.clear()
            cached = 0
        self._pairs[(key, type(value), value)] = encoded
        self._values_of[key] = cached + 1

    @staticmethod
    def _cached_string(cache: dict[str, bytes], field_number: int, text: str) -> bytes:
        encoded = cache.get(text)
        if encoded is None:
            encoded = string(field_number, text)
            _remember(cache, text, encoded)
        return encoded


def _ids(context: SpanContext) -> bytes:
    """Fields 1 (trace_id) and 2 (span_id), the same in a Span and a Link."""
    return (
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big") + b"\x12\x08" + context.span_id.to_bytes(8, "big")
    )


def _status(status: Status) -> bytes:
    if status.status_code is StatusCode.UNSET and not status.description:
        return _UNSET_STATUS
    body = b""
    if status.description:
        body += string(2, status.description)
    if status.status_code is not StatusCode.UNSET:
        body += b"\x18" + varint(status.status_code.value)
    return field(15, body)


def _flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return HAS_IS_REMOTE | IS_REMOTE
    return HAS_IS_REMOTE


def _trace_state(context: SpanContext) -> str:
    return ",".join(f"{key}={value}" for key, value in context.trace_state.items())


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return string(1, value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise OverflowError(f"{value} does not fit in an int64")
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)  # two's complement, as protobuf writes it
    if isinstance(value, float):
        return b"\x21" + pack_double(value)
    if isinstance(value, bytes):
        return field(7, value)
    if value is None:
        return b""
    if isinstance(value, Mapping):
        items = b"".join(
            field(1, string(1, str(key)) + field(2, _any_value(item))) for key, item in value.items()
        )
        return field(6, items)
    if isinstance(value, Sequence):
        return field(5, b"".join(field(1, _any_value(item)) for item in value))
    raise TypeError(f"cannot encode a {type(value).__name__} as an OTLP attribute value")


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value
