"""An HTTP transport for OpenTelemetry's OTLP/HTTP client, on the standard library.

``opentelemetry-exporter-otlp`` sends through a pluggable transport
(``BaseHTTPTransport``); its default is built on ``requests``, which this one
does without. It keeps one ``http.client`` connection per endpoint and speaks
TLS with the same options (a CA file or the system's, a client certificate and key).

It does not read HTTP(S)_PROXY: :func:`observability.tracer_provider.build_exporter`
uses the library's own exporter when a proxy applies to the endpoint.

    transport = StdlibHttpTransport(verify="/etc/ssl/collector-ca.pem")
    transport.request("POST", "https://collector:4318/v1/traces", data=payload, timeout=10).status_code
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from urllib.parse import urlsplit

from observability.opentelemetry_compat import BaseHTTPResult, BaseHTTPTransport

_Origin = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class StdlibHttpResult(BaseHTTPResult):
    """A response (status, reason, body, headers) or the error that stopped the request."""

    body: bytes = b""
    response_headers: Mapping[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        return self.response_headers


class _Headers(Mapping[str, str]):
    """Response headers as the transport interface wants them: case-insensitive keys,
    repeated headers joined with commas."""

    def __init__(self, message: Message) -> None:
        self._message = message

    def __getitem__(self, name: str) -> str:
        values = self._message.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name.lower() for name in self._message))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class StdlibHttpTransport(BaseHTTPTransport):
    """``BaseHTTPTransport`` over ``http.client``: one kept-alive connection per origin.

    Parameters, as for the library's transports:
      verify: True for the system's CA certificates, a path to a CA file, or
        False to skip verification.
      cert: a client certificate file, or (certificate, key) files, for mTLS.
    """

    def __init__(self, *, verify: bool | str = True, cert: str | tuple[str, str] | None = None) -> None:
        self._verify = verify
        self._cert = cert
        self._tls: ssl.SSLContext | None = None
        self._connections: dict[_Origin, http.client.HTTPConnection] = {}
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return StdlibHttpResult(error=ValueError(f"not an http(s) URL: {url!r}"))
        origin = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            try:
                connection = self._connection(origin)
                connection.timeout = timeout
                if connection.sock is not None:
                    connection.sock.settimeout(timeout)
                connection.request(method, target, body=data, headers=headers or {})
                response = connection.getresponse()
                body = response.read()
            except Exception as error:  # the request failed before a whole response: start afresh
                self._drop(origin)
                return StdlibHttpResult(error=error)
            if response.will_close:
                self._drop(origin)
        return StdlibHttpResult(
            status_code=response.status,
            reason=response.reason,
            body=body,
            response_headers=_Headers(response.headers),
        )

    def is_connection_error(self, exception: Exception | None) -> bool:
        """Refused, reset, timed out, TLS failures and broken responses (retried by the client)."""
        return isinstance(exception, (OSError, http.client.HTTPException))

    def close(self) -> None:
        with self._lock:
            for origin in list(self._connections):
                self._drop(origin)

    def _connection(self, origin: _Origin) -> http.client.HTTPConnection:
        connection = self._connections.get(origin)
        if connection is None:
            scheme, host, port = origin
            if scheme == "https":
                connection = http.client.HTTPSConnection(host, port, context=self._tls_context())
            else:
                connection = http.client.HTTPConnection(host, port)
            self._connections[origin] = connection
        return connection

    def _drop(self, origin: _Origin) -> None:
        connection = self._connections.pop(origin, None)
        if connection is not None:
            connection.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            ca_file = self._verify if isinstance(self._verify, str) else None
            context = ssl.create_default_context(cafile=ca_file)
            if self._verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if isinstance(self._cert, tuple):
                context.load_cert_chain(*self._cert)
            elif self._cert:
                context.load_cert_chain(self._cert)
            self._tls = context
        return self._tls
