"""A webhook receiver on loopback: http.server in a thread, verifying each signature.

Paths choose the behaviour: /ok answers 204; /fail-N answers 500 to the first N POSTs
of each event id, then 200; /redirect answers 302 to /ok (which must never be
followed); /slow answers 200 after a second; /hang never answers (until stopped);
/hang-once holds the first POST of each id open without answering, then answers 200.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mailserver.webhooks.signing import verify


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    #: The signature checked out with the secret registered for the path.
    verified: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def attempt(self) -> int:
        return int(self.headers["webhook-attempt"])


class Receiver:
    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
                 name: str = "127.0.0.1") -> None:
        #: https with `tls` (the URLs then name `name`, which the test DNS resolves).
        self.scheme, self.name = ("https" if tls else "http"), name
        self.got: list[Received] = []
        #: Path -> the secret its hook was given.
        self.secrets: dict[str, str] = {}
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.took(self, self.path, headers, body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.name}:{self.port}{path}"

    def took(self, handler: BaseHTTPRequestHandler, path: str, headers: dict[str, str],
             body: bytes) -> None:
        secret = self.secrets.get(path, "")
        ok = bool(secret) and verify(secret, headers.get("webhook-id", ""),
                                     int(headers.get("webhook-timestamp", "0")), body,
                                     headers.get("webhook-signature", ""))
        with self.lock:
            self.got.append(Received(path, headers, body, ok))
            seen = sum(1 for r in self.got if r.id == headers.get("webhook-id")
                       and r.path == path)
        kind = path.split("?", 1)[0]  # "/redirect?crash": a redirect, its own hook
        if kind.startswith("/fail-") and seen <= int(kind.rsplit("-", 1)[1]):
            self._answer(handler, 500)
        elif kind == "/redirect":
            handler.send_response(302)
            handler.send_header("Location", self.url("/ok"))
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif kind == "/hang" or (kind == "/hang-once" and seen == 1):
            self.stopping.wait(60)
        else:
            if kind == "/slow":
                time.sleep(1)
            self._answer(handler, 204 if kind == "/ok" else 200)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def posts(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.got if r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 60,
                 kind: str | None = None) -> list[Received]:
        """The POSTs to `path` (of event type `kind`) once there are `count`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.posts(path) if kind is None or r.json["type"] == kind]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{path}: {count} {kind or ''} POSTs expected, got "
                             f"{[(r.json['type'], r.attempt) for r in self.posts(path)]}")

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
