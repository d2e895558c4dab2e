"""Encode finished spans as an OTLP ``ExportTraceServiceRequest``, fast.

The exporter libraries build one protobuf object per span, attribute, link and
value before serialising them; on a busy worker that costs more CPU than the
task itself (about 75 us per consumer span on a 2-core machine). This module
writes the same protobuf wire format directly, with the parts that never
change (resource, scope, attribute keys, span names) encoded once and reused:
about 12 us per consumer span with a fresh message id (batches of 128, measured
alone on the development machine, 2026-11-24).

The output decodes to exactly the message that
``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`` builds
(tests compare the two on spans of every shape the SDK produces).

>>> payload = encode_spans(finished_spans)
>>> ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans[0].name
'process default'
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

logger = logging.getLogger("greenroom.tracing")

#: Span.flags bits (opentelemetry/proto/trace/v1/trace.proto, SpanFlags).
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}

#: Span field 6 (kind), whole.
_KIND_FIELD = {kind: b"\x30" + bytes((number,)) for kind, number in _KIND.items()}

#: Cached encodings are dropped past this many entries (keys and names are few in practice).
_CACHE_LIMIT = 4096

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack
#: Span fields 7 and 8 (start and end time) together: tag, fixed64, tag, fixed64.
_pack_times = struct.Struct("<BQBQ").pack


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised ExportTraceServiceRequest carrying ``spans``, grouped by resource and scope."""
    resources: dict[int, Resource] = {}
    scopes: dict[int, InstrumentationScope | None] = {}
    grouped: dict[int, dict[int, list[bytes]]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        resources[id(resource)], scopes[id(scope)] = resource, scope
        grouped.setdefault(id(resource), {}).setdefault(id(scope), []).append(_field(2, _span(span)))
    request = []
    for resource_id, by_scope in grouped.items():
        scope_spans = b"".join(
            _field(2, _scope_header(scopes[scope_id]) + b"".join(encoded))
            for scope_id, encoded in by_scope.items()
        )
        request.append(_field(1, _resource_header(resources[resource_id]) + scope_spans))
    return b"".join(request)


# Messages -------------------------------------------------------------------------------


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    parent = span.parent
    start, end = span.start_time or 0, span.end_time or 0
    parts = [_ids(context)]
    if context.trace_state:
        parts.append(_string(3, _trace_state(context)))
    if parent is not None:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    parts += (_cached_string(_names, 5, span.name), _KIND_FIELD[span.kind])
    if start and end:
        parts.append(_pack_times(0x39, start, 0x41, end))
    else:
        if start:
            parts += (b"\x39", _pack_fixed64(start))
        if end:
            parts += (b"\x41", _pack_fixed64(end))
    attributes = span.attributes  # each of these properties builds a new view or tuple: read once
    if attributes:
        parts.append(_attributes(9, attributes))
    if dropped := span.dropped_attributes:
        parts += (b"\x50", _varint(dropped))
    for event in span.events:
        parts.append(_field(11, _event(event)))
    if dropped := span.dropped_events:
        parts += (b"\x60", _varint(dropped))
    for link in span.links:
        parts.append(_field(13, _link(link)))
    if dropped := span.dropped_links:
        parts += (b"\x70", _varint(dropped))
    remote = parent is not None and parent.is_remote
    parts += (_status(span.status), _FLAGS_REMOTE if remote else _FLAGS_LOCAL)
    return b"".join(parts)


def _event(event: Event) -> bytes:
    parts: list[bytes] = []
    if event.timestamp:
        parts += (b"\x09", _pack_fixed64(event.timestamp))
    if event.name:
        parts.append(_string(2, event.name))
    if event.attributes:
        parts.append(_attributes(3, event.attributes))
    if event.dropped_attributes:
        parts += (b"\x20", _varint(event.dropped_attributes))
    return b"".join(parts)


def _link(link: Link) -> bytes:
    context = link.context
    parts = [_ids(context)]
    attributes = link.attributes
    if attributes:
        parts.append(_attributes(4, attributes))
    if attributes is not None and (dropped := link.dropped_attributes):  # None: nothing to drop
        parts += (b"\x28", _varint(dropped))
    parts += (b"\x35", _pack_fixed32(_flags(context)))
    return b"".join(parts)


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
        body += _string(2, status.description)
    if status.status_code is not StatusCode.UNSET:
        body += b"\x18" + _varint(status.status_code.value)
    return _field(15, body)


_UNSET_STATUS = b"\x7a\x00"  # field 15, empty: the status of most spans
#: Span field 16 (flags, fixed32) for a span whose parent is remote, and for any other.
_FLAGS_REMOTE = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)
_FLAGS_LOCAL = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE)


def _flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


def _trace_state(context: SpanContext) -> str:
    return ",".join(f"{key}={value}" for key, value in context.trace_state.items())


_resources: dict[int, tuple[Resource, bytes]] = {}
_scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}


def _resource_header(resource: Resource) -> bytes:
    """ResourceSpans fields 1 (resource) and 3 (schema_url), encoded once per resource."""
    cached = _resources.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1]
    header = _field(1, _attributes(1, resource.attributes) if resource.attributes else b"")
    if resource.schema_url:
        header += _string(3, resource.schema_url)
    _remember(_resources, id(resource), (resource, header))
    return header


def _scope_header(scope: InstrumentationScope | None) -> bytes:
    """ScopeSpans fields 1 (scope) and 3 (schema_url), encoded once per scope."""
    cached = _scopes.get(id(scope))
    if cached is not None and cached[0] is scope:
        return cached[1]
    body = b""
    if scope is not None:
        if scope.name:
            body += _string(1, scope.name)
        if scope.version:
            body += _string(2, scope.version)
        if scope.attributes:
            body += _attributes(3, scope.attributes)
    header = _field(1, body)
    if scope is not None and scope.schema_url:
        header += _string(3, scope.schema_url)
    _remember(_scopes, id(scope), (scope, header))
    return header


# Attributes and values ------------------------------------------------------------------

_SCALARS = frozenset((str, bool, int, float))
_keys: dict[str, bytes] = {}
_names: dict[str, bytes] = {}
#: Whole KeyValue encodings (with their length prefix) of scalar attributes, by (key, type, value).
_pairs: dict[tuple[str, type, Any], bytes] = {}
#: How many values of each key _pairs holds. A key seen with more than
#: VALUES_PER_KEY values (a message id) is encoded afresh each time instead:
#: caching it would only fill the cache with values never seen again.
_values_of: dict[str, int] = {}
VALUES_PER_KEY = 64


def _attributes(field_number: int, attributes: Mapping[str, Any]) -> bytes:
    """Each attribute as a KeyValue in repeated field ``field_number``."""
    tag = _TAGS[field_number]
    parts = []
    for key, value in attributes.items():
        scalar = type(value) in _SCALARS
        encoded = _pairs.get((key, type(value), value)) if scalar else None
        if encoded is None:
            try:
                encoded_value = _any_value(value)
            except (TypeError, OverflowError) as error:  # as the upstream encoder: drop it, say why
                logger.error("Span attribute %r not exported: %s", key, error)
                continue
            key_value = _cached_string(_keys, 1, key) + _field(2, encoded_value)
            encoded = _varint(len(key_value)) + key_value
            if scalar:
                _remember_pair(key, value, encoded)
        parts.append(encoded)
    return tag + tag.join(parts) if parts else b""


def _remember_pair(key: str, value: Any, encoded: bytes) -> None:
    cached = _values_of.get(key, 0)
    if cached >= VALUES_PER_KEY:
        return
    if len(_pairs) >= _CACHE_LIMIT:
        _pairs.clear()
        _values_of.clear()
        cached = 0
    _pairs[(key, type(value), value)] = encoded
    _values_of[key] = cached + 1


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return _string(1, value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise OverflowError(f"{value} does not fit in an int64")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # two's complement, as protobuf writes it
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if value is None:
        return b""
    if isinstance(value, Mapping):
        items = b"".join(
            _field(1, _string(1, str(key)) + _field(2, _any_value(item))) for key, item in value.items()
        )
        return _field(6, items)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    raise TypeError(f"cannot encode a {type(value).__name__} as an OTLP attribute value")


# Wire format ----------------------------------------------------------------------------


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: The tag of length-delimited field N (wire type 2), for the field numbers used here.
_TAGS = {number: _varint(number << 3 | 2) for number in range(1, 16)}


def _field(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field (a message, bytes or a string already encoded)."""
    size = len(payload)
    return _TAGS[field_number] + (_ONE_BYTE[size] if size < 0x80 else _varint(size)) + payload


def _string(field_number: int, text: str) -> bytes:
    return _field(field_number, text.encode("utf-8"))


def _cached_string(cache: dict[str, bytes], field_number: int, text: str) -> bytes:
    encoded = cache.get(text)
    if encoded is None:
        encoded = _string(field_number, text)
        _remember(cache, text, encoded)
    return encoded


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
