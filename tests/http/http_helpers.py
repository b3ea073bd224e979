"""Requests against the real http and https listeners, with exact bytes where it matters."""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Any

from server_harness import RunningServer
from wire import REPLY_TIMEOUT

#: Every client-facing listener, so the documents have something to describe.
ALL_LISTENERS = {name: "tcp:0:interface=127.0.0.1" for name in (
    "smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps", "http", "https")}


def insecure() -> ssl.SSLContext:
    """The server's certificate is self-signed in tests."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def request(server: RunningServer, method: str, path: str, *, host: str | None = None,
            body: bytes | None = None, headers: dict[str, str] | None = None,
            secure: bool = False, source: str | None = None,
            ) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one request; the path is sent as given."""
    port = server.ports["https" if secure else "http"]
    kwargs: dict[str, Any] = {"timeout": REPLY_TIMEOUT}
    if source is not None:
        kwargs["source_address"] = (source, 0)
    conn: http.client.HTTPConnection
    if secure:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=insecure(), **kwargs)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, **kwargs)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or "mail.example.org")
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        conn.close()


def raw(server: RunningServer, data: bytes, timeout: float = REPLY_TIMEOUT) -> bytes:
    """Send `data` on the http port and read until the server closes."""
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk
