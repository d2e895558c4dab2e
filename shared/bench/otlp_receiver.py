"""A minimal OTLP trace receiver on loopback, over gRPC or HTTP/protobuf.

It speaks the real protocol (opentelemetry-proto messages, the collector's
gRPC service), so exporters under test talk to it exactly as they would to an
OpenTelemetry Collector. It keeps every span it receives in memory. Used by
the end-to-end tests and by ``greenroom bench`` as a live export target.

>>> from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
>>> with OtlpReceiver.start("http/protobuf") as receiver:
...     exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
...     provider = TracerProvider()
...     provider.add_span_processor(SimpleSpanProcessor(exporter))
...     provider.get_tracer("example").start_span("send default").end()
...     provider.shutdown()
...     [(span.name, span.kind) for span in receiver.spans()]
[('send default', 'INTERNAL')]
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Collection
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

Protocol = Literal["grpc", "http/protobuf"]

_KINDS = {
    SpanProto.SPAN_KIND_INTERNAL: "INTERNAL",
    SpanProto.SPAN_KIND_SERVER: "SERVER",
    SpanProto.SPAN_KIND_CLIENT: "CLIENT",
    SpanProto.SPAN_KIND_PRODUCER: "PRODUCER",
    SpanProto.SPAN_KIND_CONSUMER: "CONSUMER",
}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived, ids in lowercase hex."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[tuple[str, str]] = field(default_factory=list)
    status_code: int = 0


def _value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    received = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=_KINDS.get(span.kind, "UNSPECIFIED"),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        status_code=span.status.code,
                    )
                )
    return received


class OtlpReceiver:
    """Receives OTLP trace exports on 127.0.0.1 (an ephemeral port unless given)."""

    def __init__(self, protocol: Protocol, *, keep_spans: bool = True) -> None:
        self.protocol = protocol
        self.keep_spans = keep_spans
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.span_count = 0
        self.consumer_span_count = 0
        self._grpc_server: grpc.Server | None = None
        self._http_server: ThreadingHTTPServer | None = None
        self.port = 0

    @classmethod
    def start(cls, protocol: Protocol, port: int = 0, *, keep_spans: bool = True) -> OtlpReceiver:
        """Listen on 127.0.0.1:``port``; ``keep_spans=False`` only counts spans (cheap, for benchmarks)."""
        receiver = cls(protocol, keep_spans=keep_spans)
        if protocol == "grpc":
            receiver._start_grpc(port)
        else:
            receiver._start_http(port)
        return receiver

    @property
    def endpoint(self) -> str:
        """The value for OTEL_EXPORTER_OTLP_ENDPOINT (and the matching protocol variable)."""
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def consumer_spans(self, message_ids: Collection[str]) -> dict[str, list[ReceivedSpan]]:
        """The CONSUMER spans kept of each of ``message_ids`` (one per processing attempt, in
        the order they arrived), by message id; a message with none is left out."""
        found: dict[str, list[ReceivedSpan]] = {}
        for span in self.spans():
            message_id = span.attributes.get("messaging.message.id")
            if span.kind == "CONSUMER" and isinstance(message_id, str) and message_id in message_ids:
                found.setdefault(message_id, []).append(span)
        return found

    def record(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        """Count the request's spans (CONSUMER spans apart) and keep them if ``keep_spans``."""
        scopes = [scope for resource in request.resource_spans for scope in resource.scope_spans]
        count = sum(len(scope.spans) for scope in scopes)
        consumers = sum(span.kind == SpanProto.SPAN_KIND_CONSUMER for scope in scopes for span in scope.spans)
        spans = _spans_of(request) if self.keep_spans else []
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1
            self.span_count += count
            self.consumer_span_count += consumers

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None)
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _start_grpc(self, port: int) -> None:
        receiver = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method name
                receiver.record(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        self._grpc_server = server

    def _start_http(self, port: int) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps connections open between exports, as collectors do

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.record(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the receiver is not the thing under test."""

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="otlp-http-receiver", daemon=True).start()
        self._http_server = server
