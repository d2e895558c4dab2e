"""greenroom's OTLP/HTTP exporter against real HTTP peers on loopback: the OTLP
receiver, and a scripted server for headers, retries, errors and TLS."""

from __future__ import annotations

import gzip
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from observability.otlp_http_exporter import OtlpHttpSpanExporter
from observability.span_exporters import build_exporter
from shared.bench.otlp_receiver import OtlpReceiver

ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def finished_spans(count: int) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for number in range(count):
        tracer.start_span(f"process q{number}", kind=SpanKind.CONSUMER, attributes={"n": number}).end()
    return list(memory.get_finished_spans())


def export_once(spans: list[ReadableSpan]) -> SpanExportResult:
    """Export with a new exporter configured from the environment, then shut it down."""
    exporter = OtlpHttpSpanExporter()
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


@dataclass
class Scripted:
    """An HTTP/1.1 server answering POSTs with the statuses it is given, in turn (then 200)."""

    statuses: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    clients: set[tuple[str, int]] = field(default_factory=set)
    port: int = 0


def _spans_in(body: bytes) -> Any:
    return ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    yield from _serve(Scripted())


def _serve(state: Scripted, tls: ssl.SSLContext | None = None) -> Iterator[Scripted]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            state.clients.add(self.client_address)
            status, headers = state.statuses.pop(0) if state.statuses else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_spans_reach_a_live_otlp_receiver_plain_and_gzipped(monkeypatch: pytest.MonkeyPatch) -> None:
    spans = finished_spans(3)
    with OtlpReceiver.start("http/protobuf") as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        assert export_once(spans[:1]) is SpanExportResult.SUCCESS
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
        assert export_once(spans[1:]) is SpanExportResult.SUCCESS
        received = receiver.spans()
    assert [span.name for span in received] == ["process q0", "process q1", "process q2"]
    assert [span.span_id for span in received] == [format(s.context.span_id, "016x") for s in spans]


def test_headers_path_and_one_kept_alive_connection(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{scripted.port}/custom/traces"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20s3cret,x-tenant=blue")
    exporter = OtlpHttpSpanExporter()
    for span in finished_spans(3):
        assert exporter.export([span]) is SpanExportResult.SUCCESS
    exporter.shutdown()

    assert len(scripted.requests) == 3
    assert len(scripted.clients) == 1, "each export opened a new connection"
    path, headers, body = scripted.requests[0]
    assert path == "/custom/traces"
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["x-tenant"] == "blue"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    assert _spans_in(body)[0].name == "process q0"


def test_retries_a_503_after_its_retry_after_then_succeeds(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted.statuses += [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{scripted.port}")
    assert export_once(finished_spans(1)) is SpanExportResult.SUCCESS
    assert len(scripted.requests) == 3
    assert scripted.requests[0][2] == scripted.requests[2][2]  # the same payload each time


def test_a_rejected_request_fails_at_once_and_says_why(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scripted.statuses.append((400, {}))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{scripted.port}")
    assert export_once(finished_spans(1)) is SpanExportResult.FAILURE
    assert len(scripted.requests) == 1
    assert "code: 400" in caplog.text


def test_an_unreachable_endpoint_fails_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed: nothing listens there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1.5")
    started = time.monotonic()
    assert export_once(finished_spans(1)) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 5


def test_gzip_is_announced_and_decodes(scripted: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{scripted.port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    assert export_once(finished_spans(2)) is SpanExportResult.SUCCESS
    _, headers, body = scripted.requests[0]
    assert headers["content-encoding"] == "gzip"
    assert len(_spans_in(gzip.decompress(body))) == 2


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_trusts_the_configured_ca_only(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    for state in _serve(Scripted(), tls=context):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://127.0.0.1:{state.port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
        assert export_once(finished_spans(1)) is SpanExportResult.FAILURE  # system CAs
        assert state.requests == []
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(cert))
        assert export_once(finished_spans(1)) is SpanExportResult.SUCCESS
        assert len(state.requests) == 1


def test_build_exporter_uses_the_library_exporter_only_where_it_must(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert type(build_exporter("http/protobuf")) is OtlpHttpSpanExporter
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert type(build_exporter("http/protobuf")) is OTLPSpanExporter
    monkeypatch.setenv("NO_PROXY", "collector")
    assert type(build_exporter("http/protobuf")) is OtlpHttpSpanExporter
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("ALL_PROXY", "socks5://proxy:1080")
    assert type(build_exporter("http/protobuf")) is OTLPSpanExporter
    monkeypatch.delenv("ALL_PROXY")
    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER", "vault")
    with pytest.raises(RuntimeError, match="vault"):  # the library's exporter looks it up
        build_exporter("http/protobuf")


def test_a_worker_process_loads_neither_requests_nor_protobuf() -> None:
    """The point of the light exporter: about 7 MiB less per worker process."""
    probe = (
        "import sys, workers\n"
        "from observability.span_exporters import build_exporter\n"
        "build_exporter('http/protobuf')\n"
        "print(sorted(m for m in ('requests', 'urllib3', 'google.protobuf') if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"
